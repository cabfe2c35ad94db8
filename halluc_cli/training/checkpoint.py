"""Checkpoints: the model in its own loadable form, plus everything needed to resume.

`checkpoint/` holds the model's weights (safetensors) and config, the tokenizer, and
`training_state.pt` (step, optimizer, schedule, data position, RNG states, carried state).
The training state holds only tensors and plain Python values and is read back with
`torch.load(weights_only=True)`, which refuses to unpickle code. The whole directory is
written beside the old one and swapped in by rename, so a kill leaves a complete checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from halluc_cli.errors import UserError
from halluc_cli.io import atomic_dir, complete_dir
from halluc_cli.models import LanguageModel

TRAINING_STATE_FILE = "training_state.pt"


def save_checkpoint(
    directory: Path, model: LanguageModel, tokenizer: PreTrainedTokenizerBase, training_state: dict[str, Any]
) -> None:
    """Write model, tokenizer and training state to `directory` atomically."""
    with atomic_dir(directory) as tmp:
        model.save(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(training_state, tmp / TRAINING_STATE_FILE)


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
