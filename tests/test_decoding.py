"""Batched decoding: a batch of mixed-length prompts decodes exactly as each prompt alone."""

from __future__ import annotations

import pytest
import torch

from halluc_cli.config import DecodingConfig, LSTMConfig, TokenizerConfig, TransformerConfig
from halluc_cli.data.tokenizer import train_tokenizer
from halluc_cli.decoding import Decoder, _top_p_filter
from halluc_cli.errors import UserError
from halluc_cli.models import build_model

LINES = [f"the capital of country{i} is city{i} ." for i in range(40)]
PROMPTS = ["the capital of country3 is", "country7", "the capital of", "is city9 . the capital of country1 is"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(LINES, TokenizerConfig(kind="word"))


MODELS = [
    LSTMConfig(hidden_dim=16, num_layers=2, dropout=0.0),
    TransformerConfig(hidden_dim=16, num_layers=2, num_heads=2, max_positions=64),
    TransformerConfig(architecture="llama", hidden_dim=16, num_layers=2, num_heads=2, max_positions=64),
]


@pytest.mark.parametrize("cfg", MODELS, ids=["lstm", "gpt2", "llama"])
def test_batch_equals_one_by_one(cfg, tokenizer) -> None:
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer)
    decoding = DecodingConfig(max_new_tokens=6, stop_at_newline=False)
    batched = Decoder(model, tokenizer, decoding).generate(PROMPTS)
    alone = [Decoder(model, tokenizer, decoding).generate([p])[0] for p in PROMPTS]
    assert batched == alone
    assert any(outputs[0] for outputs in batched)  # an untrained model still says something


@pytest.mark.parametrize("cfg", MODELS[:2], ids=["lstm", "gpt2"])
def test_decoding_with_the_cache_equals_recomputing_the_whole_sequence(cfg, tokenizer) -> None:
    torch.manual_seed(1)
    model = build_model(cfg, tokenizer).eval()
    decoding = DecodingConfig(max_new_tokens=5, stop_at_newline=False)
    cached = Decoder(model, tokenizer, decoding).generate([PROMPTS[0]])[0][0]
    ids = tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    for _ in range(5):  # the naive way: the whole sequence again at every step
        logits, _ = model(torch.tensor([ids]))
        next_id = int(logits[0, -1].argmax())
        if next_id == tokenizer.eos_token_id:
            break
        ids.append(next_id)
    prompt_length = len(tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"])
    assert cached == tokenizer.decode(ids[prompt_length:]).strip()


def test_sampling_is_seeded_and_gives_num_samples(tokenizer) -> None:
    model = build_model(MODELS[1], tokenizer)
    decoding = DecodingConfig(name="sample", num_samples=3, temperature=1.5, max_new_tokens=4)
    first = Decoder(model, tokenizer, decoding, seed=5).generate(PROMPTS[:2])
    assert [len(samples) for samples in first] == [3, 3]
    assert first == Decoder(model, tokenizer, decoding, seed=5).generate(PROMPTS[:2])


def test_stops_at_end_of_sequence(tokenizer) -> None:
    model = build_model(MODELS[1], tokenizer)
    with torch.no_grad():  # make <eos> the likeliest next token everywhere
        model.hf.lm_head.weight.zero_()
        model.hf.lm_head.weight[tokenizer.eos_token_id] = 1.0
        model.hf.transformer.ln_f.bias.fill_(1.0)
    assert Decoder(model, tokenizer, DecodingConfig()).generate(PROMPTS) == [[""]] * len(PROMPTS)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_top_p_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(_top_p_filter(logits, 0.1)).tolist() == [[True, False, False, False]]


def test_greedy_with_several_samples_is_refused(tokenizer) -> None:
    with pytest.raises(UserError, match="decoding=sample"):
        Decoder(build_model(MODELS[0], tokenizer), tokenizer, DecodingConfig(num_samples=2))
