"""logger=: each tracker writes its own files in the run dir, read back here with the
tracker's own reader, and continues its run when a killed run resumes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cli_helpers import TINY, assert_one_line_error, pretrain, run_cli, run_killed_at_step
from halluc_cli.config import LoggersConfig, MlflowLoggerConfig, TensorBoardLoggerConfig, WandbLoggerConfig
from halluc_cli.training.loggers import build_trackers, flat_params

TRACKERS = {
    "tensorboard": LoggersConfig(tensorboard=TensorBoardLoggerConfig()),
    "wandb": LoggersConfig(wandb=WandbLoggerConfig()),
    "mlflow": LoggersConfig(mlflow=MlflowLoggerConfig()),
}
PARAMS = flat_params(OmegaConf.create({"train": {"lr": 0.001}, "data": {"relations": ["capital"]}, "ckpt": None}))


@pytest.fixture(autouse=True)
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B without network, quiet, and with its own folders out of the home dir."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))


def _log(name: str, run_dir: Path, start: int, steps: list[int]) -> None:
    """One (re)start of tracker `name`: from `start`, an evaluation at each of `steps`."""
    (tracker,) = build_trackers(OmegaConf.structured(TRACKERS[name]), run_dir)
    tracker.start(start)
    tracker.log_hparams(PARAMS)
    for step in steps:
        tracker.log_metrics(step, {"step": step, "val_loss": step / 10, "run": "text is not plotted"})
    tracker.close()


def _tensorboard(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()  # as TensorBoard reads them: events past a purge_step dropped
    return events


def _tensorboard_curve(run_dir: Path, name: str) -> list[tuple[int, float]]:
    return [(event.step, round(event.value, 5)) for event in _tensorboard(run_dir).Scalars(name)]


def _tensorboard_hparams(run_dir: Path) -> dict[str, object]:
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = _tensorboard(run_dir).PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in hparams.items()}


def _mlflow(run_dir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}")
    return client, (run_dir / "mlflow" / "run_id").read_text()


def _mlflow_curve(run_dir: Path, name: str) -> list[tuple[int, float]]:
    client, run_id = _mlflow(run_dir)
    history = sorted(client.get_metric_history(run_id, name), key=lambda metric: metric.step)
    return [(metric.step, round(metric.value, 5)) for metric in history]


def _wandb_records(run_dir: Path) -> dict[str, bytes]:
    """Each offline run dir's name -> its .wandb file (protobuf records: keys appear as written)."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    return {run.name: b"".join(path.read_bytes() for path in run.glob("*.wandb")) for run in runs}


def test_tensorboard_event_files_hold_the_curve_and_hparams(tmp_path: Path) -> None:
    _log("tensorboard", tmp_path, 0, [10, 20])
    assert _tensorboard_curve(tmp_path, "val_loss") == [(10, 1.0), (20, 2.0)]
    assert _tensorboard_hparams(tmp_path) == {"train.lr": 0.001, "data.relations": '["capital"]', "ckpt": "null"}


def test_mlflow_store_in_the_run_dir_holds_the_curve_and_params(tmp_path: Path) -> None:
    _log("mlflow", tmp_path, 0, [10, 20])
    assert _mlflow_curve(tmp_path, "val_loss") == [(10, 1.0), (20, 2.0)]
    client, run_id = _mlflow(tmp_path)
    run = client.get_run(run_id)
    assert run.data.params == {"train.lr": "0.001", "data.relations": '["capital"]', "ckpt": "null"}
    assert run.info.status == "FINISHED" and run.info.run_name == str(tmp_path)
    assert not (tmp_path / "mlruns").exists() and not Path("mlruns").exists()


def test_wandb_offline_run_in_the_run_dir_holds_metrics_and_config(tmp_path: Path) -> None:
    _log("wandb", tmp_path, 0, [10, 20])
    run_id = (tmp_path / "wandb" / "halluc_run_id").read_text()
    # W&B's own service process writes the file; on a busy machine it lands a moment after finish()
    deadline = time.monotonic() + 30
    while True:
        (name, record), = _wandb_records(tmp_path).items()
        if b"val_loss" in record or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert name.endswith(f"-{run_id}")
    assert b"val_loss" in record and b"train.lr" in record and b"data.relations" in record


def test_resumed_trackers_continue_from_the_checkpoint_step(tmp_path: Path) -> None:
    # Killed after the evaluation at step 30, with its checkpoint at step 20: the resumed run
    # logs 30 again, then 40. Each step must be in the tracker once.
    for name in TRACKERS:
        _log(name, tmp_path, 0, [10, 20, 30])
    for name in TRACKERS:
        _log(name, tmp_path, 20, [30, 40])
    whole = [(10, 1.0), (20, 2.0), (30, 3.0), (40, 4.0)]
    assert _tensorboard_curve(tmp_path, "val_loss") == whole
    assert _mlflow_curve(tmp_path, "val_loss") == whole
    run_id = (tmp_path / "wandb" / "halluc_run_id").read_text()
    assert [name.rpartition("-")[2] for name in _wandb_records(tmp_path)] == [run_id, run_id]  # one W&B run


def test_a_fresh_start_in_a_used_run_dir_begins_new_tracker_runs(tmp_path: Path) -> None:
    for name in ("tensorboard", "mlflow"):
        _log(name, tmp_path, 0, [10, 20])
        _log(name, tmp_path, 0, [5])
    assert _tensorboard_curve(tmp_path, "val_loss") == [(5, 0.5)]
    assert _mlflow_curve(tmp_path, "val_loss") == [(5, 0.5)]


def _metrics_curve(run_dir: Path, name: str) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(row["step"], round(row[name], 5)) for row in map(json.loads, lines)]


def test_pretrain_logs_to_tensorboard_and_mlflow_through_a_kill_and_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    settings = ["train.max_steps=16", "train.save_every=5", "train.eval_every=4", "logger=[tensorboard,mlflow]"]
    run_killed_at_step(12, "pretrain", *TINY, f"hydra.run.dir={run_dir}", *settings)  # evaluated 12, saved 10
    assert "resuming from" in pretrain(run_dir, *settings).stdout
    curve = _metrics_curve(run_dir, "val_loss")
    assert [step for step, _ in curve] == [4, 8, 12, 16]
    assert _tensorboard_curve(run_dir, "val_loss") == curve
    assert _mlflow_curve(run_dir, "val_loss") == curve
    hparams = _tensorboard_hparams(run_dir)
    assert hparams["train.max_steps"] == 16 and hparams["model.name"] == "lstm"
    client, run_id = _mlflow(run_dir)
    assert client.get_run(run_id).data.params["logger.mlflow.experiment"] == "halluc"


def test_finetune_logs_to_wandb_offline(lstm_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        "finetune", *TINY, f"ckpt={lstm_run}", f"hydra.run.dir={run_dir}", "logger=wandb",
        "logger.wandb.project=tests", "train.max_steps=10", "eval_after=false",
    )
    assert result.exit_code == 0, result.stderr + result.stdout
    (record,) = _wandb_records(run_dir).values()
    assert b"train_acc_known" in record and b"freeze.name" in record and b"tests" in record


def test_a_tracker_not_installed_is_one_line_error_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: importing it fails
    result = run_cli("pretrain", *TINY, f"hydra.run.dir={tmp_path / 'run'}", "logger=[tensorboard,wandb]")
    assert_one_line_error(result, "logger=wandb needs wandb", "pip install wandb")
    assert not (tmp_path / "run").exists()


def test_a_bad_logger_name_is_one_line_error_naming_the_options(tmp_path: Path) -> None:
    result = run_cli("pretrain", *TINY, f"hydra.run.dir={tmp_path / 'run'}", "logger=[tensorboard,mlfow]")
    assert_one_line_error(result, "logger/mlfow", "Available options in 'logger': jsonl, mlflow, tensorboard, wandb")
    assert not (tmp_path / "run").exists()


def test_a_run_that_failed_is_closed_as_failed(tmp_path: Path) -> None:
    (tracker,) = build_trackers(OmegaConf.structured(TRACKERS["mlflow"]), tmp_path)
    tracker.start(0)
    tracker.log_metrics(1, {"step": 1, "val_loss": 0.5})
    tracker.close(failed=True)  # what Trainer.fit does when training raises or is killed
    client, run_id = _mlflow(tmp_path)
    assert client.get_run(run_id).info.status == "FAILED"
    _log("mlflow", tmp_path, 1, [2])  # resumed and finished
    assert client.get_run(run_id).info.status == "FINISHED"
