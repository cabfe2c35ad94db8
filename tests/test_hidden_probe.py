"""The hidden-state probe: the state it reads off the decoding pass, the probe fitted to it,
saved and reloaded, and the commands that train (finetune) and apply (generate) it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import TINY, assert_one_line_error, run_cli
from halluc_cli.config import DecodingConfig, LSTMConfig, SampleDecodingConfig, TokenizerConfig, TransformerConfig
from halluc_cli.data.tokenizer import prompt_ids, train_tokenizer
from halluc_cli.decoding import Decoder
from halluc_cli.errors import UserError
from halluc_cli.hidden_probe import HiddenStateProbe, fit_probe, probe_labels, untrainable
from halluc_cli.models import build_model

LINES = [f"the capital of country{i} is city{i} ." for i in range(40)]
PROMPTS = ["the capital of country3 is", "country7", "the capital of", "is city9 . the capital of country1 is"]
MODELS = [
    LSTMConfig(hidden_dim=16, num_layers=2, dropout=0.0),
    TransformerConfig(hidden_dim=16, num_layers=2, num_heads=2, max_positions=64),
    TransformerConfig(architecture="llama", hidden_dim=16, num_layers=2, num_heads=2, max_positions=64),
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(LINES, TokenizerConfig(kind="word"))


def _reference_hidden(model, ids: list[int]) -> torch.Tensor:
    """The first layer's state after the prompt alone, by each family's own means (no hook)."""
    with torch.no_grad():
        if model.family == "lstm":
            _, state = model(torch.tensor([ids]))
            return state[0][0][-1, 0]  # layer 0's h: (1, B, H)
        hidden_states = model.hf(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        return hidden_states[1][0, -1]  # [0] is the embeddings; [1] what block 0 leaves


@pytest.mark.parametrize("cfg", MODELS, ids=["lstm", "gpt2", "llama"])
def test_the_decoding_pass_keeps_the_state_at_the_end_of_each_prompt(cfg, tokenizer) -> None:
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer).eval()
    # Left-padded in one batch, each prompt with a greedy row and 3 sampled ones.
    decoding = SampleDecodingConfig(max_new_tokens=3, num_samples=3, stop_at_newline=False)
    rows = Decoder(model, tokenizer, decoding, hidden_layer=0).continuations(PROMPTS, greedy_first=True)
    for prompt, outputs in zip(PROMPTS, rows):
        expected = _reference_hidden(model, prompt_ids(tokenizer, prompt))
        for output in outputs:  # every row of a prompt carries its prompt's state
            assert torch.allclose(output.hidden, expected, atol=1e-5)
    unhooked = Decoder(model, tokenizer, DecodingConfig(max_new_tokens=3)).continuations(PROMPTS)
    assert all(outputs[0].hidden is None for outputs in unhooked)
    # ours is gone after the pass (transformers installs hooks of its own)
    assert not [hook for hook in model.blocks()[0]._forward_hooks.values() if "capture_last_hidden" in hook.__qualname__]


def test_a_layer_the_model_lacks_is_refused(tokenizer) -> None:
    model = build_model(MODELS[1], tokenizer)
    with pytest.raises(UserError, match=r"detector.layer=2, but the model has 2 layers; choose one in \[-2, 1\]"):
        Decoder(model, tokenizer, DecodingConfig(), hidden_layer=2).continuations(PROMPTS)


def _separable(n: int = 80, dim: int = 12, seed: int = 0) -> tuple[np.ndarray, list[bool]]:
    """Features whose first coordinate carries the label, the rest noise."""
    rng = np.random.default_rng(seed)
    labels = [bool(i % 2) for i in range(n)]
    features = rng.normal(size=(n, dim))
    features[:, 0] += 3.0 * np.array(labels)
    return features, labels


def test_a_fitted_probe_separates_and_scores_alike_after_reloading(tmp_path: Path) -> None:
    features, labels = _separable()
    probe, held_out = fit_probe(features, labels, layer=-2, label="wrong", folds=5, seed=0, trained_on="valid")
    assert probe.trained_on["n"] == 80 and probe.trained_on["positives"] == 40
    assert probe.trained_on["cv_roc_auc"] > 0.9  # out of fold, on a signal a probe must find
    assert held_out.shape == (80,) and ((held_out > 0) & (held_out < 1)).all()
    scores = probe.score(features)
    assert np.mean(scores[np.array(labels)]) > 0.8 > 0.2 > np.mean(scores[~np.array(labels)])
    probe.save(tmp_path / "probe.json")
    reloaded = HiddenStateProbe.load(tmp_path / "probe.json")
    assert reloaded == probe and reloaded.estimator == "hidden_probe"
    assert np.array_equal(reloaded.score(features), scores)  # bit for bit: JSON keeps every float


def test_the_fewest_answers_a_probe_learns_from() -> None:
    features, labels = _separable(n=6)  # 3 of each: 3 folds, each with 2 folds inside
    probe, held_out = fit_probe(features, labels, layer=0, label="wrong", folds=5, seed=0, trained_on="valid")
    assert held_out.shape == (6,) and probe.trained_on["n"] == 6


def test_a_probe_of_another_width_is_refused() -> None:
    features, labels = _separable()
    probe, _ = fit_probe(features, labels, layer=0, label="wrong", folds=5, seed=0, trained_on="valid")
    with pytest.raises(UserError, match="the probe reads 12 hidden features and layer 0 of this model gives 5"):
        probe.score(np.zeros((2, 5)))


def test_out_of_fold_scores_are_not_the_in_sample_ones() -> None:
    # Pure noise: fitted to every row, a probe scores its own rows better than chance would.
    rng = np.random.default_rng(1)
    features, labels = rng.normal(size=(40, 30)), [bool(i % 2) for i in range(40)]
    probe, held_out = fit_probe(features, labels, layer=0, label="unknown", folds=4, seed=0, trained_on="valid")
    assert not np.allclose(held_out, probe.score(features))
    assert probe.estimator == "unknown_probe"


def test_labels_and_what_a_probe_cannot_learn_from() -> None:
    records = [
        {"prediction": "Paris", "answer": "Paris", "abstained": False, "known": True},
        {"prediction": "Rome", "answer": "Lima", "abstained": False, "known": False},
        {"prediction": "I don't know", "answer": "Quito", "abstained": True, "known": False},
    ]
    assert probe_labels(records, "wrong") == ([0, 1], [False, True])  # an abstention claims nothing
    assert probe_labels(records, "unknown") == ([0, 1, 2], [False, True, True])
    assert "2 wrong and 5 right answers; the probe needs at least 3 of each" in untrainable([True] * 2 + [False] * 5, "wrong")
    assert "detector.label=wrong" in untrainable([True, True, True], "unknown")
    assert untrainable([False, True] * 3, "wrong") is None


@pytest.mark.parametrize(
    "text",
    ["not json", json.dumps({"layer": 0}), json.dumps(
        {"layer": 0, "label": "wrong", "mean": [0.0], "scale": [0.0], "weights": [1.0], "bias": 0.0, "trained_on": {}}
    )],
    ids=["text", "fields missing", "zero scale"],
)
def test_a_damaged_probe_file_is_a_one_line_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "hidden_probe.json"
    path.write_text(text)
    with pytest.raises(UserError, match="hidden_probe.json"):
        HiddenStateProbe.load(path)


# --- the commands ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probed_run(transformer_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fine-tuning run with a probe of unknown facts (the tiny model answers every
    question wrong, so a probe of wrong answers has nothing to learn from)."""
    run_dir = tmp_path_factory.mktemp("runs") / "probed"
    result = run_cli(
        "finetune", *TINY, f"ckpt={transformer_run}", f"hydra.run.dir={run_dir}", "data.valid_size=24",
        "detector=hidden_probe", "detector.label=unknown",
    )
    assert result.exit_code == 0, result.stderr + result.stdout
    return run_dir


def _probe_scores(path: Path) -> dict[str, float]:
    return {
        record["id"]: record["uncertainty"]["unknown_probe"]
        for record in map(json.loads, path.read_text().splitlines())
    }


def test_finetune_fits_a_probe_per_eval_point_and_scores_every_answer(probed_run: Path) -> None:
    for point in ("early_stop", "final"):
        probe = HiddenStateProbe.load(probed_run / "eval" / point / "hidden_probe.json")
        assert probe.layer == -2 and probe.trained_on["n"] == 24 and probe.trained_on["positives"] == 12
        for name in ("predictions.jsonl", "valid_predictions.jsonl"):
            scores = _probe_scores(probed_run / "eval" / point / name)
            assert all(0 < score < 1 for score in scores.values())
    scores = json.loads((probed_run / "eval" / "final" / "scores.json").read_text())
    assert "unknown_probe" in scores["detection"]["estimators"]


def test_generate_scores_new_answers_with_the_runs_saved_probe(probed_run: Path, tmp_path: Path) -> None:
    result = run_cli("generate", f"ckpt={probed_run}", "detector=hidden_probe", f"hydra.run.dir={tmp_path / 'gen'}")
    assert result.exit_code == 0, result.stderr
    generated = _probe_scores(tmp_path / "gen" / "predictions.jsonl")
    at_finetune = _probe_scores(probed_run / "eval" / "final" / "predictions.jsonl")
    assert generated.keys() == at_finetune.keys()
    # The same weights and probe; the batches differ (finetune answered the validation set too).
    assert all(generated[key] == pytest.approx(at_finetune[key], abs=1e-6) for key in generated)


def test_a_probe_with_one_kind_of_answer_is_skipped_with_a_warning(transformer_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("finetune", *TINY, f"ckpt={transformer_run}", f"hydra.run.dir={run_dir}", "detector=hidden_probe")
    assert result.exit_code == 0, result.stderr
    warned = result.stdout + result.stderr
    assert "no hidden-state probe" in warned and "right answers" in warned
    assert not (run_dir / "eval" / "final" / "hidden_probe.json").exists()


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("detector.layer=5", "detector.layer=5, but the model has 2 layers"),
        ("detector.path=probe.json", "detector.path names a probe for halluc generate"),
        ("detector.folds=1", "detector.folds=1 is out of range"),
        ("eval_after=false", "fitted to the validation answers of eval_after"),
    ],
)
def test_bad_probe_settings_fail_before_the_run_dir(
    override: str, phrase: str, transformer_run: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "finetune", *TINY, f"ckpt={transformer_run}", f"hydra.run.dir={tmp_path / 'run'}", "detector=hidden_probe", override
    )
    assert_one_line_error(result, phrase)
    assert not (tmp_path / "run").exists()


def test_generate_without_a_probe_to_read(transformer_run: Path, probed_run: Path, tmp_path: Path) -> None:
    missing = run_cli("generate", f"ckpt={probed_run}", "detector=hidden_probe", "detector.path=nope.json")
    assert_one_line_error(missing, "nope.json: no such probe file")
    test_set = probed_run / "qa" / "test_known.jsonl"
    pretrained = run_cli("generate", f"ckpt={transformer_run}", f"questions=[{test_set}]", "detector=hidden_probe")
    assert_one_line_error(pretrained, "eval/final/hidden_probe.json: no such probe file", "detector=hidden_probe")
    assert not (tmp_path / "gen").exists()
