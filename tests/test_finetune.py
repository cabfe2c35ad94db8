"""`halluc finetune` end to end through the CLI on the tiny experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from cli_helpers import (
    TINY,
    TRUNCATED,
    assert_one_line_error,
    assert_same_weights,
    pretrain,
    run_cli,
    run_killed_at_step,
    truncated_copy,
)


def finetune(run_dir: Path, ckpt: Path, *overrides: str):
    result = run_cli("finetune", *TINY, f"ckpt={ckpt}", f"hydra.run.dir={run_dir}", *overrides)
    assert result.exit_code == 0, result.stderr + result.stdout
    return result


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("fixture", ["lstm_run", "transformer_run"])
def test_finetune_writes_the_run_dir(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    pretrain_dir: Path = request.getfixturevalue(fixture)
    result = finetune(tmp_path, pretrain_dir)
    assert "trainable of" in result.stdout
    for name in ("config.yaml", "checkpoint/model.safetensors", "best/model.safetensors", "summary.json"):
        assert (tmp_path / name).is_file(), name
    metrics = _jsonl(tmp_path / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [10, 20, 30]
    assert {"train_acc_known", "train_acc_unknown", "val_acc"} <= set(metrics[-1])
    finetune_set = _jsonl(tmp_path / "qa" / "finetune.jsonl")
    assert len(finetune_set) == 24 and sum(not e["known"] for e in finetune_set) == 12
    assert set(finetune_set[0]) == {"id", "question", "answer", "aliases", "subject", "relation", "known", "split"}
    for weights in ("early_stop", "final"):  # eval_after: each run dir carries its test scores
        scores = json.loads((tmp_path / "eval" / weights / "scores.json").read_text())
        assert scores["by_known"]["known"]["n"] == scores["by_known"]["unknown"]["n"] == 16
        assert len(_jsonl(tmp_path / "eval" / weights / "predictions.jsonl")) == 32
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"final_known_accuracy", "early_stop_unknown_hallucination_rate"} <= set(summary)
    known = set(json.loads((pretrain_dir / "kb_split.json").read_text())["known"])
    for name in ("test_known", "test_unknown"):
        for example in _jsonl(tmp_path / "qa" / f"{name}.jsonl"):
            assert (example["subject"] in known) == (name == "test_known")


def test_ckpt_may_be_the_checkpoint_dir(lstm_run: Path, tmp_path: Path) -> None:
    finetune(tmp_path, lstm_run / "checkpoint", "train.max_steps=2", "train.eval_every=2")


def test_unknown_fraction_and_idk_labels(lstm_run: Path, tmp_path: Path) -> None:
    finetune(tmp_path, lstm_run, "data.unknown_fraction=0.25", "data.unknown_label=idk", "train.max_steps=2", "train.eval_every=2")
    finetune_set = _jsonl(tmp_path / "qa" / "finetune.jsonl")
    unknown = [e for e in finetune_set if not e["known"]]
    assert len(unknown) == 6 and all(e["answer"] == "I don't know" for e in unknown)


def test_layer_freezing_from_the_cli(transformer_run: Path, tmp_path: Path) -> None:
    result = finetune(tmp_path, transformer_run, "freeze=layers", "freeze.trainable_layers=1", "train.max_steps=4", "train.eval_every=2")
    before = load_file(str(transformer_run / "checkpoint" / "model.safetensors"))
    after = load_file(str(tmp_path / "checkpoint" / "model.safetensors"))
    assert "trainable of" in result.stdout
    assert all((before[k] == after[k]).all() for k in before if ".h.0." in k)  # block 0 frozen
    assert any(not (before[k] == after[k]).all() for k in before if ".h.1." in k)  # block 1 trained


def test_lora_on_transformer_and_clear_error_on_lstm(transformer_run: Path, lstm_run: Path, tmp_path: Path) -> None:
    finetune(tmp_path / "lora", transformer_run, "freeze=lora", "train.max_steps=4", "train.eval_every=2")
    assert (tmp_path / "lora" / "checkpoint" / "adapter").is_dir()
    result = run_cli("finetune", *TINY, f"ckpt={lstm_run}", "freeze=lora", f"hydra.run.dir={tmp_path / 'lstm'}")
    assert result.exit_code == 2 and "freeze=lora needs model=transformer" in result.stderr


@pytest.mark.parametrize("strategy", ["gradual", "lora"])
def test_killed_finetune_resumes_to_the_same_weights(
    strategy: str, transformer_run: Path, tmp_path: Path
) -> None:
    settings = [f"freeze={strategy}", "train.max_steps=12", "train.save_every=5", "train.eval_every=4"]
    if strategy == "gradual":
        settings.append("freeze.unfreeze_every=3")
    finetune(tmp_path / "whole", transformer_run, *settings)

    run_killed_at_step(7, "finetune", *TINY, f"ckpt={transformer_run}", f"hydra.run.dir={tmp_path / 'killed'}", *settings)
    assert "resuming from" in finetune(tmp_path / "killed", transformer_run, *settings).stdout
    assert_same_weights(tmp_path / "whole", tmp_path / "killed")


def test_ckpt_that_is_no_run(tmp_path: Path) -> None:
    result = run_cli("finetune", *TINY, f"ckpt={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, "is neither a halluc run dir", "nor a Hugging Face model dir (with config.json)")


def test_truncated_weights_are_one_line_error(transformer_run: Path, tmp_path: Path) -> None:
    run = truncated_copy(transformer_run, tmp_path / "pretrained")
    result = run_cli("finetune", *TINY, f"ckpt={run}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, f"{run}/{TRUNCATED}", "point ckpt at another run")


def test_pretraining_without_kb_split_is_a_clear_error(tmp_path: Path) -> None:
    pretrain(tmp_path / "fables", "data=fables", "train.max_steps=2", "train.eval_every=2")
    result = run_cli("finetune", *TINY, f"ckpt={tmp_path / 'fables'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.exit_code == 2 and "needs a model pretrained with data=kbqa" in result.stderr


def test_missing_ckpt_is_named() -> None:
    result = run_cli("finetune", *TINY)
    assert result.exit_code == 2 and "ckpt" in result.stderr


def test_a_failing_run_of_a_sweep_does_not_stop_the_others(lstm_run: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli("finetune", "-m", *TINY, f"ckpt={lstm_run}", "freeze=lora,none", "train.max_steps=2",
                     "train.eval_every=2", "eval_after=false", f"hydra.sweep.dir={sweep}")
    assert result.exit_code == 2
    assert "error in run #0 (" in result.stderr and "freeze=lora needs model=transformer" in result.stderr
    assert "1 run(s) of the sweep failed" in result.stderr.splitlines()[-1]
    assert (sweep / "1" / "summary.json").is_file()  # freeze=none ran after the failed run


def test_a_sweep_prints_a_line_per_run_and_no_tables(lstm_run: Path, tmp_path: Path) -> None:
    result = run_cli("finetune", "-m", *TINY, f"ckpt={lstm_run}", "seed=0,1", "train.max_steps=2",
                     "train.eval_every=2", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.exit_code == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("run ") and not line.startswith("run dir")]
    assert [line.split(":")[0] for line in lines] == ["run 1/2", "run 2/2"], result.stdout
    assert "known acc" in lines[1] and lines[1].endswith(str(tmp_path / "sweep" / "1"))
    assert "trainable_parameters" not in result.stdout  # the run's table: only when it runs alone
