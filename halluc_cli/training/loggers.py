"""Where a training run's evaluations go: `metrics.jsonl` always, and the trackers `logger=` chooses.

Each backend is one `Logger`; the `Trainer` talks to nothing else. A backend keeps its own
state in the run dir (`rundir`: tensorboard/, wandb/, mlflow/), so that a run resumed after a
kill continues the same tracker run from its checkpoint's step:

- jsonl: the lines after that step are dropped (they are logged again);
- tensorboard: `purge_step` hides the events after it;
- wandb, mlflow: the run id saved in the run dir is reopened, and the steps it already holds
  are not logged twice (a resumed run repeats them with the same numbers on the CPU).

The backends' packages are optional (`pip install 'halluc[trackers]'`): `check_trackers`
names a missing one before the run writes anything, and each is imported only when used.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Union

from omegaconf import DictConfig, OmegaConf

from halluc_cli import rundir
from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_text

Param = Union[bool, int, float, str]  # what every tracker takes as a hyper-parameter value


class Logger(ABC):
    """One place a training run's evaluations are logged to (the main process's only)."""

    @abstractmethod
    def start(self, step: int) -> None:
        """Open the log at `step`: 0 for a run that starts afresh (what an earlier run left in
        the run dir is set aside), else the step of the checkpoint a resumed run continues."""

    def log_hparams(self, params: dict[str, Param]) -> None:
        """Record the run's settings (the resolved config as dotted keys)."""

    @abstractmethod
    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Record one evaluation's metrics line (it holds `step` too)."""

    def close(self, failed: bool = False) -> None:
        """Flush and let go of the log; `failed`: training stopped on an error or a kill signal."""


class JsonlLogger(Logger):
    """`metrics.jsonl`: one JSON line per evaluation, always written (`score runs=` reads it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_metrics: dict[str, Any] = {}  # the latest line, after `start` the resumed run's

    def start(self, step: int) -> None:
        if step == 0:
            self.path.unlink(missing_ok=True)  # a fresh start in a used run dir begins a fresh log
            return
        if not self.path.is_file():
            return
        # A killed run may have logged evaluations after its last checkpoint; they are redone.
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [metrics for metrics in map(json.loads, filter(str.strip, lines)) if metrics["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(metrics) + "\n" for metrics in kept))
        self.last_metrics = kept[-1] if kept else {}

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(metrics) + "\n")
        self.last_metrics = metrics


class TensorBoardLogger(Logger):
    """Event files in `run_dir/tensorboard`: `tensorboard --logdir <run dir or a parent>`."""

    def __init__(self, run_dir: Path) -> None:
        self.log_dir = run_dir / rundir.TENSORBOARD_DIR
        self.writer = None

    def start(self, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard drops the earlier files' events from purge_step on: all that an earlier
        # run left (0), or what the killed run logged after its checkpoint's step.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=step + 1 if step else 0)

    def log_hparams(self, params: dict[str, Param]) -> None:
        from torch.utils.tensorboard.summary import hparams

        # The session's settings alone: TensorBoard's HParams tab then takes the metrics from
        # the run's scalars (an experiment summary would have to name them before the first).
        _, session_start, _ = hparams(params, {})
        self.writer.file_writer.add_summary(session_start)

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        for name, value in _numbers(metrics).items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a kill must not lose an evaluation its checkpoint already covers

    def close(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbLogger(Logger):
    """A Weights & Biases run in `run_dir/wandb`, offline unless `mode` or $WANDB_MODE says otherwise."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir, self.run = cfg, run_dir, None
        self.id_file = run_dir / rundir.WANDB_ID_FILE

    def start(self, step: int) -> None:
        import wandb

        resumed_id = self.id_file.read_text(encoding="utf-8").strip() if step and self.id_file.is_file() else None
        self.run = wandb.init(
            dir=str(self.run_dir),
            id=resumed_id,
            resume="allow" if resumed_id else None,
            project=self.cfg.project,
            entity=self.cfg.entity,
            name=self.cfg.name or str(self.run_dir),
            tags=list(self.cfg.tags),
            mode=str(self.cfg.mode or os.environ.get("WANDB_MODE") or "offline"),
            # halluc's output stays its own: W&B's capture of it would wrap the progress bar
            settings=wandb.Settings(console="off"),
        )
        atomic_write_text(self.id_file, self.run.id)

    def log_hparams(self, params: dict[str, Param]) -> None:
        self.run.config.update(params, allow_val_change=True)  # a resumed run may have changed one

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        # An online run resumed at its checkpoint already holds the steps after it; W&B
        # refuses steps below its own (`run.step`).
        if step >= self.run.step:
            self.run.log(_numbers(metrics), step=step)

    def close(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)  # a crashed run must not read as finished


class MlflowLogger(Logger):
    """An MLflow run; by default in a SQLite store in `run_dir/mlflow` (`mlflow ui --backend-store-uri`)."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.own_store = cfg.tracking_uri is None
        self.client, self.run_id, self.logged_until = None, "", -1

    def start(self, step: int) -> None:
        from mlflow.tracking import MlflowClient

        # Its INFO lines (creating the database tables) are not the run's news.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        store = self.run_dir / rundir.MLFLOW_STORE
        store.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(f"sqlite:///{store.resolve()}" if self.own_store else self.cfg.tracking_uri)
        id_file = self.run_dir / rundir.MLFLOW_ID_FILE
        if step and id_file.is_file():
            self.run_id = id_file.read_text(encoding="utf-8").strip()
            self.client.update_run(self.run_id, status="RUNNING")
            self.logged_until = self._last_logged_step()
            return
        run = self.client.create_run(self._experiment_id(), run_name=self.cfg.run_name or str(self.run_dir))
        self.run_id = run.info.run_id
        atomic_write_text(id_file, self.run_id)

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.cfg.experiment)
        if found is not None:
            return found.experiment_id
        # The run dir's own store keeps its artifacts beside it, not in ./mlruns of the working dir.
        artifacts = (self.run_dir / rundir.MLFLOW_ARTIFACTS_DIR).resolve().as_uri() if self.own_store else None
        try:
            return self.client.create_experiment(self.cfg.experiment, artifact_location=artifacts)
        except MlflowException:  # another run of a sweep sharing the store created it first
            return self.client.get_experiment_by_name(self.cfg.experiment).experiment_id

    def _last_logged_step(self) -> int:
        run = self.client.get_run(self.run_id)
        steps = [m.step for key in run.data.metrics for m in self.client.get_metric_history(self.run_id, key)]
        return max(steps, default=-1)

    def log_hparams(self, params: dict[str, Param]) -> None:
        from mlflow.entities import Param as MlflowParam
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        # A param cannot change once logged: a resumed run keeps the first start's and adds
        # only new keys (config.yaml holds the settings the run now runs with). A value past
        # MLflow's length limit (a long list of files) is cut rather than failing the run.
        logged = self.client.get_run(self.run_id).data.params
        new = [MlflowParam(key, str(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in params.items() if key not in logged]
        for first in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[first : first + MAX_PARAMS_TAGS_PER_BATCH])

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        if step <= self.logged_until:
            return  # the run holds this step from before the kill
        now = int(time.time() * 1000)
        values = [Metric(name, value, now, step) for name, value in _numbers(metrics).items()]
        self.client.log_batch(self.run_id, metrics=values)

    def close(self, failed: bool = False) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


# logger= option -> (the modules it imports, what pip installs them)
REQUIREMENTS = {
    "tensorboard": (("tensorboard",), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "mlflow-skinny sqlalchemy alembic"),
}


def chosen_trackers(cfg: DictConfig) -> list[str]:
    """The trackers `logger=` chose (`cfg` is the `logger` section); jsonl is no tracker."""
    return [name for name in REQUIREMENTS if cfg.get(name) is not None]


def check_trackers(cfg: DictConfig) -> None:
    """Refuse a chosen tracker whose package is not installed, naming what to install."""
    for name in chosen_trackers(cfg):
        modules, pip_names = REQUIREMENTS[name]
        if any(importlib.util.find_spec(module) is None for module in modules):
            raise UserError(
                f"logger={name} needs {pip_names}, not installed: pip install {pip_names} "
                "(or pip install 'halluc[trackers]' for every tracker)"
            )


def build_trackers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    """The trackers `logger=` chose (`cfg` is the `logger` section), not yet started."""
    builders = {
        "tensorboard": lambda: TensorBoardLogger(run_dir),
        "wandb": lambda: WandbLogger(cfg.wandb, run_dir),
        "mlflow": lambda: MlflowLogger(cfg.mlflow, run_dir),
    }
    return [builders[name]() for name in chosen_trackers(cfg)]


def flat_params(cfg: DictConfig) -> dict[str, Param]:
    """The resolved config as {"train.lr": 0.001, ...}: lists as JSON text, null as "null"."""
    return _flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "")


def _flatten(node: Any, prefix: str) -> dict[str, Param]:
    if isinstance(node, dict):
        return {key: value for name, child in node.items() for key, value in _flatten(child, f"{prefix}{name}.").items()}
    key = prefix.removesuffix(".")
    if node is None or isinstance(node, list):
        return {key: json.dumps(node)}
    return {key: node}


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """A metrics line's values a tracker plots: the numbers, less the step it is logged at."""
    return {
        name: float(value)
        for name, value in metrics.items()
        if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }
