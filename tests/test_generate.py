"""`halluc generate` through the CLI, and the full tiny flow pretrain -> finetune -> generate -> score."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest

from cli_helpers import TINY, TRUNCATED, assert_one_line_error, pretrain, run_cli, truncated_copy

PREDICTION_FIELDS = {"id", "question", "prediction", "answer", "aliases", "known", "abstained", "subject", "relation", "uncertainty"}


@pytest.fixture(scope="module")
def finetuned(lstm_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("finetuned")
    result = run_cli("finetune", *TINY, f"ckpt={lstm_run}", f"hydra.run.dir={run_dir}")
    assert result.exit_code == 0, result.stderr
    return run_dir


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_end_to_end_pretrain_finetune_generate_score(finetuned: Path, tmp_path: Path) -> None:
    result = run_cli("generate", "experiment=tiny", f"ckpt={finetuned}", f"hydra.run.dir={tmp_path / 'gen'}")
    assert result.exit_code == 0, result.stderr
    predictions = _jsonl(tmp_path / "gen" / "predictions.jsonl")
    assert len(predictions) == 32  # test_known + test_unknown of the tiny experiment
    assert set(predictions[0]) == PREDICTION_FIELDS
    assert {p["known"] for p in predictions} == {True, False}

    result = run_cli("score", f"predictions={tmp_path / 'gen' / 'predictions.jsonl'}", f"hydra.run.dir={tmp_path / 'score'}")
    assert result.exit_code == 0, result.stderr
    scores = json.loads((tmp_path / "score" / "scores.json").read_text())
    assert "known" in json.dumps(scores) and "hallucination" in json.dumps(scores)


def test_best_weights_and_one_question_set(finetuned: Path, tmp_path: Path) -> None:
    result = run_cli(
        "generate", "experiment=tiny", f"ckpt={finetuned}", "weights=best", "questions=[test_unknown]",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.exit_code == 0, result.stderr
    assert {p["known"] for p in _jsonl(tmp_path / "predictions.jsonl")} == {False}


def test_free_prompts_with_sampling(lstm_run: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France is\n\nFrance is in\n")
    result = run_cli(
        "generate", "experiment=tiny", f"ckpt={lstm_run}", f"prompts={prompts}", "decoding=sample",
        "decoding.num_samples=2", f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.exit_code == 0, result.stderr
    records = _jsonl(tmp_path / "run" / "predictions.jsonl")
    assert [r["prompt"] for r in records] == ["The capital of France is", "France is in"]
    assert all(len(r["prediction"]) == 2 for r in records)


def test_unknown_question_set_is_a_clear_error(finetuned: Path, tmp_path: Path) -> None:
    result = run_cli("generate", "experiment=tiny", f"ckpt={finetuned}", "questions=[nope]", f"hydra.run.dir={tmp_path}")
    assert result.exit_code == 2 and "questions=nope" in result.stderr


def test_ckpt_that_is_no_run(tmp_path: Path) -> None:
    result = run_cli("generate", f"ckpt={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.exit_code == 2 and "neither a halluc run dir" in result.stderr


def test_truncated_weights_are_one_line_error(lstm_run: Path, tmp_path: Path) -> None:
    run = truncated_copy(lstm_run, tmp_path / "run")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France is\n")
    result = run_cli("generate", f"ckpt={run}", f"prompts={prompts}", f"hydra.run.dir={tmp_path / 'gen'}")
    assert_one_line_error(result, f"{run}/{TRUNCATED}", "re-run the training that wrote it")


def test_transformer_training_and_decoding_raise_no_future_warning(tmp_path: Path) -> None:
    # transformers 5.24 renamed `past_key_values` to `cache` and warns on every call with the
    # old name: a training run used to print it (and decoding after it) in every run.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France is\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pretrain(tmp_path / "run", "model=transformer", "train.max_steps=2", "train.eval_every=2")
        result = run_cli(
            "generate", f"ckpt={tmp_path / 'run'}", f"prompts={prompts}", f"hydra.run.dir={tmp_path / 'gen'}"
        )
    assert result.exit_code == 0, result.stderr
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []


def test_every_answer_carries_its_uncertainty(finetuned: Path, tmp_path: Path) -> None:
    result = run_cli("generate", "experiment=tiny", f"ckpt={finetuned}", "decoding=sample", "decoding.num_samples=4",
                     f"hydra.run.dir={tmp_path / 'gen'}")
    assert result.exit_code == 0, result.stderr
    for record in _jsonl(tmp_path / "gen" / "predictions.jsonl"):
        scores = record["uncertainty"]
        assert set(scores) == {"neg_logprob", "neg_mean_logprob", "mean_entropy", "sample_disagreement",
                               "semantic_entropy"}
        assert scores["neg_logprob"] >= scores["neg_mean_logprob"] >= 0 and scores["mean_entropy"] >= 0
        assert len(record["samples"]) == 4 and 0 <= scores["sample_disagreement"] <= 1
    scored = run_cli("score", f"predictions={tmp_path / 'gen' / 'predictions.jsonl'}", f"hydra.run.dir={tmp_path / 'sc'}")
    assert scored.exit_code == 0, scored.stderr
    assert "hallucination detectors" in scored.stdout
    assert (tmp_path / "sc" / "risk_coverage.png").stat().st_size > 0
    detection = json.loads((tmp_path / "sc" / "scores.json").read_text())["mean"]["detection"]
    assert set(detection["estimators"]) == {"neg_logprob", "neg_mean_logprob", "mean_entropy",
                                            "sample_disagreement", "semantic_entropy"}


def test_selective_answering_calibrated_on_the_validation_answers(finetuned: Path, tmp_path: Path) -> None:
    final = finetuned / "eval" / "final"
    assert (final / "valid_predictions.jsonl").is_file()  # finetune answers its validation set for this
    args = ["score", f"predictions={final / 'predictions.jsonl'}", "mitigation=abstain_uncertain",
            f"mitigation.calibration={final / 'valid_predictions.jsonl'}"]
    result = run_cli(*args, "mitigation.target=coverage", "mitigation.level=0.5", f"hydra.run.dir={tmp_path / 'sc'}")
    assert result.exit_code == 0, result.stderr
    scores = json.loads((tmp_path / "sc" / "scores.json").read_text())["mean"]
    assert scores["selection"]["withheld"]["mean"] >= 1
    assert scores["after"]["overall"]["abstention_rate"]["mean"] > scores["before"]["overall"]["abstention_rate"]["mean"]
    assert (tmp_path / "sc" / "predictions_selected.jsonl").is_file()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["mitigation.estimator=vibes"], "has no uncertainty score 'vibes'"),
        (["mitigation.level=0"], "mitigation.level=0.0 is out of range"),
        (["mitigation.calibration=SCORED"], "is also scored; calibrate on held-out predictions"),
        (["mitigation.target=most"], "expected one of"),
    ],
)
def test_bad_selective_answering_settings(overrides: list[str], message: str, finetuned: Path, tmp_path: Path) -> None:
    final = finetuned / "eval" / "final"
    overrides = [o.replace("SCORED", str(final / "predictions.jsonl")) for o in overrides]
    result = run_cli("score", f"predictions={final / 'predictions.jsonl'}", "mitigation=abstain_uncertain",
                     f"mitigation.calibration={final / 'valid_predictions.jsonl'}", *overrides,
                     f"hydra.run.dir={tmp_path / 'sc'}")
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "sc").exists()


def test_selective_answering_over_a_sweep(finetuned: Path, tmp_path: Path) -> None:
    result = run_cli("score", f"runs={finetuned}", "mitigation=abstain_uncertain", f"hydra.run.dir={tmp_path / 'sc'}")
    assert result.exit_code == 0, result.stderr
    summary = (tmp_path / "sc" / "summary.csv").read_text()
    assert "none+abstain_uncertain(neg_mean_logprob,correct_kept=0.9)" in summary
    assert "selection_coverage_mean" in summary.splitlines()[0]
    without = run_cli("score", f"predictions={finetuned / 'eval' / 'final' / 'predictions.jsonl'}",
                      "mitigation=abstain_uncertain", f"hydra.run.dir={tmp_path / 'sc2'}")
    assert without.exit_code == 2 and "needs mitigation.calibration" in without.stderr


def test_selective_answering_beside_kb_verification_in_one_table(finetuned: Path, tmp_path: Path) -> None:
    result = run_cli("score", f"runs={finetuned}", "mitigation=abstain_uncertain", "mitigation.beside_kb=true",
                     f"hydra.run.dir={tmp_path / 'sc'}")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "sc" / "summary.csv").open()))
    mitigations = {row["mitigation"] for row in rows}
    assert mitigations == {
        "none", "none+kb_verify(abstain)", "none+abstain_uncertain(neg_mean_logprob,correct_kept=0.9)",
        "none+abstain_uncertain(neg_mean_logprob,correct_kept=0.9,kb_first)",
    }
    final = {row["mitigation"]: row for row in rows if row["eval"] == "final"}
    # The KB here covers every question: verifying leaves no hallucination, and so does the
    # combined rule, where the KB decides everything it covers.
    assert float(final["none+kb_verify(abstain)"]["hallucination_rate_mean"]) == 0.0
    assert float(final["none+abstain_uncertain(neg_mean_logprob,correct_kept=0.9,kb_first)"]["hallucination_rate_mean"]) == 0.0
