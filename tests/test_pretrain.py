"""`halluc pretrain` end to end through the CLI: run dirs, sweeps, resume, and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halluc_cli.config import CONF_DIR
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


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("fixture", ["lstm_run", "transformer_run"])
def test_run_dir_holds_the_contract(fixture: str, request: pytest.FixtureRequest) -> None:
    run_dir: Path = request.getfixturevalue(fixture)
    assert (run_dir / "config.yaml").is_file()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "halluc_model.json"):
        assert (run_dir / "checkpoint" / name).is_file(), name
    metrics = _metrics(run_dir)
    assert [m["step"] for m in metrics] == [20, 40]
    assert set(metrics[0]) >= {"step", "train_loss", "val_loss", "val_ppl", "tokens_per_s", "lr"}
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]  # it learned something
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["test_ppl"] > 1


def test_config_yaml_is_resolved(lstm_run: Path) -> None:
    text = (lstm_run / "config.yaml").read_text()
    assert "${" not in text and "name: kbqa_tiny" in text


def test_text_corpus_from_bundled_fables(tmp_path: Path) -> None:
    pretrain(tmp_path, "data=fables", "train.max_steps=4", "train.eval_every=2")
    assert "fables.txt" in (tmp_path / "config.yaml").read_text()
    assert not (tmp_path / "kb_split.json").exists()


def test_kbqa_run_records_its_known_subjects(lstm_run: Path) -> None:
    split = json.loads((lstm_run / "kb_split.json").read_text())
    assert len(split["known"]) == len(split["unknown"]) == 30


def test_same_seed_same_numbers(lstm_run: Path, tmp_path: Path) -> None:
    pretrain(tmp_path / "again", "model=lstm")
    first, second = _metrics(lstm_run), _metrics(tmp_path / "again")
    assert [m["val_loss"] for m in first] == [m["val_loss"] for m in second]


def test_pretrained_transformer_from_a_local_path(transformer_run: Path, tmp_path: Path) -> None:
    pretrain(tmp_path / "continued", "model=transformer", f"model.pretrained={transformer_run / 'checkpoint'}")
    start = json.loads((transformer_run / "summary.json").read_text())["val_loss"]
    # Continuing from trained weights starts where they left off, not from scratch.
    assert _metrics(tmp_path / "continued")[0]["val_loss"] < start + 0.5


def test_multirun_sweeps_both_models(tmp_path: Path) -> None:
    result = run_cli(
        "pretrain", "-m", *TINY, "model=lstm,transformer", "train.max_steps=4", "train.eval_every=2",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.exit_code == 0, result.stderr
    families = {json.loads((d / "checkpoint" / "halluc_model.json").read_text())["family"] for d in tmp_path.iterdir() if d.is_dir()}
    assert families == {"lstm", "transformer"}


def test_cfg_job_prints_the_config() -> None:
    result = run_cli("pretrain", "--cfg", "job", "model=transformer")
    assert result.exit_code == 0
    assert "architecture: gpt2" in result.stdout


def test_help_lists_config_groups() -> None:
    result = run_cli("pretrain", "--help")
    assert result.exit_code == 0
    assert "model: lstm, transformer" in result.stdout and "schema/" not in result.stdout
    experiments = sorted(path.stem for path in (CONF_DIR / "pretrain" / "experiment").glob("*.yaml"))
    assert f"pretrain/experiment: {', '.join(experiments)}" in result.stdout


def test_append_override_reaches_the_config(tmp_path: Path) -> None:
    result = run_cli("pretrain", "--cfg", "job", "+notes=baseline")
    assert result.exit_code == 0 and "notes: baseline" in result.stdout


@pytest.mark.parametrize("family", ["lstm", "transformer"])
def test_killed_run_resumes_to_the_same_weights(family: str, tmp_path: Path) -> None:
    settings = [f"model={family}", "train.max_steps=16", "train.save_every=5", "train.eval_every=4"]
    pretrain(tmp_path / "whole", *settings)

    run_killed_at_step(12, "pretrain", *TINY, f"hydra.run.dir={tmp_path / 'killed'}", *settings)
    result = pretrain(tmp_path / "killed", *settings)  # resume=auto finds the step-10 checkpoint
    assert "resuming from" in result.stdout
    assert_same_weights(tmp_path / "whole", tmp_path / "killed")
    drop_speed = lambda rows: [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in rows]
    assert drop_speed(_metrics(tmp_path / "killed")) == drop_speed(_metrics(tmp_path / "whole"))


def test_resume_true_needs_a_checkpoint(tmp_path: Path) -> None:
    result = run_cli("pretrain", *TINY, f"hydra.run.dir={tmp_path}", "resume=true")
    assert result.exit_code == 2 and "holds no checkpoint" in result.stderr


def test_resume_false_starts_over(lstm_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    pretrain(run_dir, "model=lstm", "train.max_steps=4", "train.eval_every=2")
    result = pretrain(run_dir, "model=lstm", "train.max_steps=4", "train.eval_every=2", "resume=false")
    assert "resuming" not in result.stdout
    assert [m["step"] for m in _metrics(run_dir)] == [2, 4]


def _one_line_error(result, *phrases: str) -> None:
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr.replace("\n", " "), result.stderr


def test_missing_corpus_file(tmp_path: Path) -> None:
    result = run_cli("pretrain", *TINY, "data=text", "data.train=[/no/such/corpus.txt]", f"hydra.run.dir={tmp_path}")
    _one_line_error(result, "corpus file not found: /no/such/corpus.txt")


def test_empty_corpus(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    result = run_cli("pretrain", *TINY, "data=text", f"data.train=[{empty}]", f"hydra.run.dir={tmp_path / 'run'}")
    _one_line_error(result, "is empty")


def test_corpus_too_small_for_a_batch(tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_text("just a few words here\n" * 10)
    result = run_cli("pretrain", *TINY, "data=text", f"data.train=[{small}]", f"hydra.run.dir={tmp_path / 'run'}")
    _one_line_error(result, "too few for one batch")


def test_unknown_model_name() -> None:
    _one_line_error(run_cli("pretrain", "model=gru"), "Could not find 'model/gru'", "lstm", "transformer")


def test_bad_override() -> None:
    _one_line_error(run_cli("pretrain", "train.max_stepz=3"), "Key 'max_stepz' not in 'TrainConfig'")


def test_unwritable_output_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_cli("pretrain", *TINY, f"hydra.run.dir={blocker / 'run'}")
    assert result.exit_code == 2 and "Not a directory" in result.stderr


def test_checkpoint_of_another_model_type(lstm_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    pretrain(run_dir, "model=lstm", "train.max_steps=2", "train.eval_every=2")
    result = run_cli("pretrain", *TINY, "model=transformer", f"hydra.run.dir={run_dir}")
    _one_line_error(result, "trained with model.name=lstm, not transformer")


def test_resuming_from_truncated_weights(lstm_run: Path, tmp_path: Path) -> None:
    run = truncated_copy(lstm_run, tmp_path / "run")
    result = run_cli("pretrain", *TINY, "model=lstm", f"hydra.run.dir={run}")
    assert_one_line_error(result, f"{run}/{TRUNCATED}", "resume=false starts it over")


def test_a_full_disk_at_the_second_save_keeps_the_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from halluc_cli.models import load_model
    from halluc_cli.training.checkpoint import load_training_state

    real_save, saves = torch.save, []

    def fills_the_disk(state, handle) -> None:  # the training state's write, once per checkpoint
        saves.append(state["step"])
        if len(saves) == 2:
            raise OSError(28, "No space left on device")
        real_save(state, handle)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    run = tmp_path / "run"
    result = run_cli("pretrain", *TINY, "model=lstm", f"hydra.run.dir={run}")
    assert_one_line_error(result, f"could not write {run / 'checkpoint'}: No space left on device",
                          "the previous checkpoint there, if any, is intact")
    assert saves == [20, 40]
    assert load_training_state(run / "checkpoint")["step"] == 20
    load_model(run / "checkpoint")


def test_hub_dataset_offline_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("pretrain", *TINY, "data=wikitext2", f"hydra.run.dir={tmp_path}")
    _one_line_error(result, "could not load the dataset 'wikitext'", "point data.train at local text files")
