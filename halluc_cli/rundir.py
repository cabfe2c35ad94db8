"""A run dir: what it holds, and one run at a time in it.

The names below are the run dir's layout, spelled here only: every module that reads or
writes a run dir's file takes its name from this module.

Hydra creates the run dir before the command starts; `commands.common.start_run` then
`claim`s it: a lock that a second run into the same dir cannot take, and a note of whether the
dir was empty. A command that fails with a user's mistake before its first checkpoint
(`discard_failed_start`) leaves nothing behind: what it wrote into a dir that was empty is
removed. A dir that held a run before keeps it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from filelock import FileLock, Timeout

from halluc_cli.errors import UserError

# --- every command's run dir
CONFIG_FILE = "config.yaml"  # the run's resolved config (start_run)
HYDRA_DIR = ".hydra"  # Hydra's own record of how the run was launched
OVERRIDES_FILE = "overrides.yaml"  # in .hydra/: the command line's overrides (of a sweep's job: its own values)
LOCK_FILE = ".lock"  # held (an OS lock, gone with the process) while a run writes the dir

# --- a training run's (pretrain, finetune)
CHECKPOINT_DIR = "checkpoint"  # the latest weights and training state: what a resume continues
BEST_DIR = "best"  # the weights of the lowest validation loss (early stopping)
METRICS_FILE = "metrics.jsonl"  # one line per evaluation during training
SUMMARY_FILE = "summary.json"  # the headline numbers of a finished run
# logger=: each tracker's own files, so that a resumed run continues the tracker's run
TENSORBOARD_DIR = "tensorboard"  # event files
WANDB_DIR = "wandb"  # made by W&B itself: offline-run-*/ (or run-*/), its logs
WANDB_ID_FILE = "wandb/halluc_run_id"  # the W&B run id a resumed run continues
MLFLOW_STORE = "mlflow/mlflow.db"  # the default MLflow store (SQLite)
MLFLOW_ARTIFACTS_DIR = "mlflow/artifacts"  # that store's artifact location
MLFLOW_ID_FILE = "mlflow/run_id"  # the MLflow run id a resumed run continues
TRAINED = (CHECKPOINT_DIR, BEST_DIR)  # what a run has once it trained: never removed

# --- pretrain's
TOKENS_DIR = "tokens"  # the tokenized splits and the tokenizer that made them
SPLIT_FILE = "kb_split.json"  # data=kbqa: which subjects the corpus states (known) and which not

# --- finetune's
QA_DIR = "qa"  # the QA sets, qa/<set>.jsonl
CLEAN_FILE = "finetune_clean.jsonl"  # mitigation=clean: the cleaned fine-tuning set, in qa/
QA_SETS_FILE = "sets.json"  # in qa/: the names of the run's QA sets, written after them
CATEGORIES_FILE = "categories.jsonl"  # data.known_from=probe: each fact's SliCK category
CLEANING_REPORT_FILE = "cleaning_report.json"  # mitigation=clean: what each cleaning step did
EVAL_DIR = "eval"  # eval/<point>/: the test answers of one set of weights and their scores
# eval point -> the weights it answers with: Gekhman et al.'s early-stopping point and the
# end of training.
EVAL_WEIGHTS = {"early_stop": BEST_DIR, "final": CHECKPOINT_DIR}
EVAL_POINTS = tuple(EVAL_WEIGHTS)
LEDGER_FILE = "ledger.jsonl"  # in eval/<point>/ (ledger=true): each held-out fact before and after fine-tuning

# --- generate's and score's (and finetune's, in eval/<point>/)
PREDICTIONS_FILE = "predictions.jsonl"  # one prediction record a line
VALID_PREDICTIONS_FILE = "valid_predictions.jsonl"  # finetune's eval/<point>/: the validation set's answers
PROBE_FILE = "hidden_probe.json"  # finetune's eval/<point>/ with detector=hidden_probe: the fitted probe
SCORES_FILE = "scores.json"  # the metrics of the predictions
RISK_COVERAGE_PLOT = "risk_coverage.png"  # score predictions= with uncertainty scores
SWEEP_SUMMARY_FILE = "summary.csv"  # score runs=: a row per group of seeds and eval point
SWEEP_RUNS_FILE = "runs.csv"  # score runs=: a row per run
SWEEP_EFFECTS_FILE = "effects.csv"  # score runs=: paired differences of each setting from its baseline
SWEEP_REPORT_FILE = "report.md"  # score runs=: the tables and plots on one page


MITIGATED = {"kb_verify": "verified", "abstain_uncertain": "selected"}  # score's mitigations -> file name


def mitigated_predictions_file(mitigation: str, index: int, files: int) -> str:
    """Where score mitigation=kb_verify (abstain_uncertain) writes the verified (selected)
    records of its `index`th of `files` prediction files: predictions_verified.jsonl for one,
    predictions_verified_<index>.jsonl for several."""
    done = MITIGATED[mitigation]
    return f"predictions_{done}.jsonl" if files == 1 else f"predictions_{done}_{index}.jsonl"


_claimed: dict[Path, FileLock] = {}
_fresh: set[Path] = set()  # claimed dirs that were empty: a failed start removes what it wrote


def claim(run_dir: Path) -> None:
    """Hold `run_dir` for this run; a second run into it ends with one line instead of
    interleaving its metrics and checkpoints with this one's."""
    run_dir.mkdir(parents=True, exist_ok=True)
    empty = not any(run_dir.iterdir())
    lock = FileLock(str(run_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(
            f"{run_dir} is in use by another run; wait for it to end, or choose another hydra.run.dir"
        ) from None
    _claimed[run_dir] = lock
    if empty:
        _fresh.add(run_dir)


def release() -> None:
    """Let go of the run dirs this process holds (at the end of each run of a sweep)."""
    for lock in _claimed.values():
        lock.release()
    _claimed.clear()
    _fresh.clear()


def discard_failed_start(run_dir: Path, command_start: float) -> None:
    """After a user's mistake: remove what this run wrote if the dir was empty when it began
    and nothing was trained yet; an empty dir that Hydra made for the command (after
    `command_start`) goes too."""
    fresh = run_dir in _fresh
    release()
    try:
        if fresh and not any((run_dir / name).exists() for name in TRAINED):
            shutil.rmtree(run_dir)
        elif not any(run_dir.iterdir()) and run_dir.stat().st_ctime >= command_start:
            run_dir.rmdir()
    except OSError:
        pass  # gone already, or not ours to remove
