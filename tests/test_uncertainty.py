"""Uncertainty scores: read off the decoding pass, equal to what a teacher-forced pass gives."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from halluc_cli.config import DecodingConfig
from halluc_cli.data.kb import Fact, KnowledgeBase
from halluc_cli.data.tokenizer import load_tokenizer, prompt_ids
from halluc_cli.decoding import Continuation, Decoder
from halluc_cli.models import load_model
from halluc_cli.uncertainty import answer_meaning, uncertainty_scores

PROMPTS = ["Q: What is the capital of France? A:", "Q: Which continent is Peru in? A:", "the"]


@pytest.mark.parametrize("run", ["transformer_run", "lstm_run"])
def test_the_logprob_is_the_teacher_forced_logprob_of_the_answer_and_its_stop(run: str, request) -> None:
    checkpoint = request.getfixturevalue(run) / "checkpoint"
    model, tokenizer = load_model(checkpoint).eval(), load_tokenizer(checkpoint)
    decoder = Decoder(model, tokenizer, DecodingConfig(max_new_tokens=6))
    ids = [prompt_ids(tokenizer, prompt) for prompt in PROMPTS]
    for prompt, continuation in zip(ids, decoder.generate_ids(ids, scored=True)):
        answer = decoder.generate_ids([prompt])[0]
        assert math.isnan(answer.logprob) and answer.text == continuation.text  # unscored: same text
        # Teacher forcing: the prompt, then the tokens the scores cover (answer + stop, at most 6).
        greedy = decoder.generate_ids([prompt], scored=True)[0]
        full = torch.tensor([prompt])
        logprob, entropies = 0.0, []
        with torch.no_grad():
            for _ in range(greedy.tokens):
                log_p = torch.log_softmax(model(full)[0][0, -1].float(), -1)
                token = int(log_p.argmax())
                logprob += float(log_p[token])
                entropies.append(float(-(log_p.exp() * log_p).sum()))
                full = torch.cat([full, torch.tensor([[token]])], dim=1)
        assert continuation.logprob == pytest.approx(logprob, abs=1e-3)
        assert continuation.entropy == pytest.approx(sum(entropies) / len(entropies), abs=1e-3)


def test_scores_of_an_answer_and_its_samples() -> None:
    kb = KnowledgeBase([Fact("Brazil", "capital", "Brasília", ("Brasilia",))])
    answer = Continuation("Brasília", logprob=-2.0, tokens=4, entropy=0.7)
    scores = uncertainty_scores(answer, ["brasilia", "Brasília.", "Rio", "Rio"], answer_meaning(kb))
    assert scores["neg_logprob"] == 2.0 and scores["neg_mean_logprob"] == 0.5 and scores["mean_entropy"] == 0.7
    assert scores["sample_disagreement"] == 0.5  # "brasilia" is the KB's alias: the same answer
    assert scores["semantic_entropy"] == pytest.approx(math.log(2))  # two meanings, half each
    without_kb = uncertainty_scores(answer, ["brasilia", "Brasília.", "Rio", "Rio"], answer_meaning())
    assert without_kb["sample_disagreement"] == 0.5  # normalization alone folds the accent too
    assert uncertainty_scores(answer, ["Brasília"] * 3, answer_meaning())["semantic_entropy"] == 0.0
    assert set(uncertainty_scores(answer, [], answer_meaning())) == {"neg_logprob", "neg_mean_logprob", "mean_entropy"}
