"""Classification as generation end to end: pretrain -> finetune data=labelled -> generate ->
score task=classification, and its mistakes as one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import TINY, run_cli

SHORT = ["train.max_steps=6", "train.eval_every=3", "train.save_every=3"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    """A small CSV of texts labelled 0/1, quoted commas included."""
    rows = [f'"a fine, happy tale {i}",1\n"a dull, sad tale {i}",0\n' for i in range(10)]
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + "".join(rows), encoding="utf-8")
    return path


def test_finetune_generate_score_on_labelled_text(transformer_run: Path, reviews: Path, tmp_path: Path) -> None:
    run = tmp_path / "finetune"
    result = run_cli(
        "finetune", *TINY, *SHORT, f"ckpt={transformer_run}", "data=labelled", f"data.train={reviews}",
        "data.label_words={0: negative, 1: positive}", f"hydra.run.dir={run}",
    )
    assert result.exit_code == 0, result.stderr + result.stdout
    sets = {name: _jsonl(run / "qa" / f"{name}.jsonl") for name in ("finetune", "valid", "test")}
    assert [len(examples) for examples in sets.values()] == [16, 2, 2]
    assert {e["answer"] for e in sets["finetune"]} == {"negative", "positive"}
    assert {"train_acc", "val_acc"} <= set(_jsonl(run / "metrics.jsonl")[-1])
    # eval_after answers the test set and scores it as classification
    scores = json.loads((run / "eval" / "final" / "scores.json").read_text())
    assert scores["n"] == 2 and 0 <= scores["error_rate"] <= 1
    summary = json.loads((run / "summary.json").read_text())
    assert {"early_stop_error_rate", "final_error_rate", "final_accuracy"} <= set(summary)

    generated = tmp_path / "generate"
    result = run_cli("generate", "experiment=tiny", f"ckpt={run}", f"hydra.run.dir={generated}")  # its test set
    assert result.exit_code == 0, result.stderr + result.stdout
    predictions = _jsonl(generated / "predictions.jsonl")
    assert [(p["id"], p["label"]) for p in predictions] == [(e["id"], e["answer"]) for e in sets["test"]]

    scored = tmp_path / "score"
    result = run_cli(
        "score", "task=classification", f"predictions={generated / 'predictions.jsonl'}",
        f"questions={run / 'qa' / 'test.jsonl'}", f"hydra.run.dir={scored}",
    )
    assert result.exit_code == 0, result.stderr + result.stdout
    mean = json.loads((scored / "scores.json").read_text())["mean"]
    assert mean["n"]["mean"] == 2 and set(mean["by_class"]) <= {"negative", "positive"}


def test_label_words_outside_a_word_vocabulary(lstm_run: Path, reviews: Path, tmp_path: Path) -> None:
    common = ["finetune", *TINY, f"ckpt={lstm_run}", "data=labelled", f"data.train={reviews}"]
    result = run_cli(*common, "data.label_words={0: negative, 1: positive}", f"hydra.run.dir={tmp_path / 'a'}")
    assert result.exit_code == 2
    assert "label word(s) 'negative', 'positive' not in the vocabulary" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # words the tiny KB corpus taught the word-level tokenizer do
    result = run_cli(*common, "data.label_words={0: Europe, 1: Asia}", "train.max_steps=2", "train.eval_every=2",
                     "eval_after=false", f"hydra.run.dir={tmp_path / 'b'}")
    assert result.exit_code == 0, result.stderr + result.stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mitigation=clean"], "mitigation=clean does not apply to data=labelled; use mitigation=none"),
        (["data.prompt_template='Review: {text}'"], "prompt_template 'Review: {text}' does not format"),
        (["data.train=MISSING.jsonl"], "MISSING.jsonl: no such file"),
    ],
)
def test_mistakes_end_in_one_line(lstm_run: Path, reviews: Path, tmp_path: Path, overrides: list[str], message: str) -> None:
    result = run_cli("finetune", *TINY, f"ckpt={lstm_run}", "data=labelled", f"data.train={reviews}", *overrides,
                     f"hydra.run.dir={tmp_path}")
    assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_malformed_jsonl_names_file_and_line(lstm_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "reviews.jsonl"
    path.write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": 0\n', encoding="utf-8")
    result = run_cli("finetune", *TINY, f"ckpt={lstm_run}", "data=labelled", f"data.train={path}",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.exit_code == 2 and f"{path} line 2: invalid JSON" in result.stderr


def test_finetune_rejects_a_pretraining_corpus(lstm_run: Path, tmp_path: Path) -> None:
    result = run_cli("finetune", *TINY, f"ckpt={lstm_run}", "data=fables", f"hydra.run.dir={tmp_path}")
    assert result.exit_code == 2 and "Could not find 'data/fables'" in result.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_texts_longer_than_the_model_positions(transformer_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    rows = [f"short text {i},{i % 2}\n" for i in range(19)] + [f"{'very ' * 300}long text,1\n"]
    path.write_text("text,label\n" + "".join(rows), encoding="utf-8")
    result = run_cli("finetune", *TINY, f"ckpt={transformer_run}", "data=labelled", f"data.train={path}",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.exit_code == 2 and "1 example(s) longer than the model's 256 positions" in result.stderr


def test_generate_on_a_run_without_test_sets(lstm_run: Path, tmp_path: Path) -> None:
    result = run_cli("generate", "experiment=tiny", f"ckpt={lstm_run}", f"hydra.run.dir={tmp_path}")
    assert result.exit_code == 2 and "has no test sets (qa/test*.jsonl" in result.stderr
