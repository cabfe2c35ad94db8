"""Checkpoints: the model in its own loadable form, plus everything needed to resume.

`checkpoint/` holds the model's weights (safetensors) and config, the tokenizer, and
`training_state.pt` (step, optimizer, schedule, data position, RNG states, carried state).
The training state holds only tensors and plain Python values and is read back with
`torch.load(weights_only=True)`, which refuses to unpickle code. The whole directory is
written beside the old one and swapped in by rename, so a kill, a full disk or a run dir made
read-only leaves the previous checkpoint complete.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from halluc_cli.errors import UserError
from halluc_cli.io import atomic_dir, complete_dir
from halluc_cli.models import LanguageModel

TRAINING_STATE_FILE = "training_state.pt"


def save_checkpoint(
    directory: Path,
    model: LanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    training_state: dict[str, Any] | None = None,
) -> None:
    """Write model, tokenizer and (to resume from) training state to `directory` atomically.

    A write the OS refuses (disk full, read-only run dir) leaves the previous copy whole and
    raises a UserError naming what could not be written and why.
    """
    try:
        with atomic_dir(directory) as tmp:
            model.save(tmp)
            tokenizer.save_pretrained(tmp)
            if training_state is not None:
                _write_training_state(tmp / TRAINING_STATE_FILE, training_state)
    except Exception as error:
        reason = _os_reason(error)
        if reason is None:  # not the OS refusing a write: a bug, shown as one
            raise
        where = f" ({reason.filename})" if reason.filename else ""
        raise UserError(
            f"could not write {directory}{where}: {reason.strerror or reason}; the previous checkpoint there, "
            "if any, is intact. Free disk space or make the run dir writable, then run the same command again "
            "to resume"
        ) from error


def _write_training_state(path: Path, state: dict[str, Any]) -> None:
    # Through our own handle: torch.save reports a failed write as a RuntimeError of its own,
    # and only then keeps the OSError behind it (as its context) for `_os_reason`.
    with open(path, "wb") as handle:
        torch.save(state, handle)


def _os_reason(error: BaseException) -> OSError | None:
    """The OS error behind a failed write, if any: the error itself, the one a torch writer
    wraps, or the errno a Rust writer (safetensors, tokenizers) spells as "os error N"."""
    if isinstance(error, OSError):
        return error
    if isinstance(error.__context__, OSError):
        return error.__context__
    found = re.search(r"os error (\d+)", str(error))
    return OSError(int(found[1]), os.strerror(int(found[1]))) if found else None


def find_checkpoint(directory: Path) -> Path | None:
    """The complete checkpoint at `directory` (or the copy a kill mid-swap left), if any."""
    found = complete_dir(directory)
    return found if found is not None and (found / TRAINING_STATE_FILE).is_file() else None


def load_training_state(directory: Path) -> dict[str, Any]:
    """The training state saved in a checkpoint dir, read without unpickling code."""
    try:
        return torch.load(directory / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or foreign file: tell the user which one
        raise UserError(
            f"cannot read {directory / TRAINING_STATE_FILE} ({error}); it is not a halluc training state. "
            "Start over with resume=false"
        ) from error


def rng_state() -> dict[str, Any]:
    """Every random generator training draws from (dropout, sampling)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    # random.setstate wants tuples all the way down; a round trip may hand back lists.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
