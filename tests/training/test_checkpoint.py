"""Checkpoints are written atomically and read back without unpickling code."""

from __future__ import annotations

import pickle
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from halluc_cli.config import LSTMConfig, TokenizerConfig
from halluc_cli.data.tokenizer import train_tokenizer
from halluc_cli.errors import UserError
from halluc_cli.models import build_model, load_model
from halluc_cli.training.checkpoint import (
    TRAINING_STATE_FILE,
    find_checkpoint,
    load_training_state,
    save_checkpoint,
)


@pytest.fixture()
def model_and_tokenizer():
    tokenizer = train_tokenizer(["a b c d e f g"], TokenizerConfig())
    return build_model(LSTMConfig(hidden_dim=8, num_layers=1), tokenizer), tokenizer


def _assert_first_checkpoint_whole(directory: Path) -> None:
    assert load_training_state(find_checkpoint(directory))["step"] == 1
    load_model(directory)  # still loads
    assert sorted(p.name for p in directory.parent.iterdir()) == ["checkpoint"]  # no temp dir left behind


def test_a_failed_save_leaves_the_previous_checkpoint_whole(model_and_tokenizer, tmp_path: Path, monkeypatch) -> None:
    model, tokenizer = model_and_tokenizer
    directory = tmp_path / "checkpoint"
    save_checkpoint(directory, model, tokenizer, {"step": 1})

    def crash(self, directory: Path) -> None:
        (directory / "model.safetensors").write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(model), "save", crash)
    with pytest.raises(UserError, match=f"could not write {directory}: No space left on device; the previous"):
        save_checkpoint(directory, model, tokenizer, {"step": 2})
    monkeypatch.undo()
    _assert_first_checkpoint_whole(directory)


@contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Within the block, a file written past `limit` bytes fails as on a full disk (EFBIG)."""
    resource = pytest.importorskip("resource")
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing us
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


# The writers a real full disk stops: the weights (safetensors, whose Rust error carries only
# "os error N") or the training state (torch.save, whose error hides the OSError as context).
@pytest.mark.parametrize("limit", [100, 200_000], ids=["weights", "training state"])
def test_the_os_reason_of_a_failed_write_is_named(model_and_tokenizer, tmp_path: Path, limit: int) -> None:
    model, tokenizer = model_and_tokenizer
    directory = tmp_path / "checkpoint"
    save_checkpoint(directory, model, tokenizer, {"step": 1})
    with _file_size_limit(limit), pytest.raises(UserError, match="File too large; the previous checkpoint"):
        save_checkpoint(directory, model, tokenizer, {"step": 2, "big": torch.zeros(100_000)})
    _assert_first_checkpoint_whole(directory)


def test_a_failure_that_is_no_write_stays_a_traceback(model_and_tokenizer, tmp_path: Path, monkeypatch) -> None:
    model, tokenizer = model_and_tokenizer

    def bug(self, directory: Path) -> None:
        raise ValueError("a bug in save")

    monkeypatch.setattr(type(model), "save", bug)
    with pytest.raises(ValueError, match="a bug in save"):
        save_checkpoint(tmp_path / "checkpoint", model, tokenizer, {"step": 1})


def test_a_kill_between_the_renames_keeps_the_old_copy(model_and_tokenizer, tmp_path: Path) -> None:
    model, tokenizer = model_and_tokenizer
    directory = tmp_path / "checkpoint"
    save_checkpoint(directory, model, tokenizer, {"step": 3})
    directory.rename(tmp_path / "checkpoint.old")  # the state a kill mid-swap leaves
    assert find_checkpoint(directory) == tmp_path / "checkpoint.old"
    assert load_training_state(find_checkpoint(directory))["step"] == 3


class Payload:
    def __reduce__(self):
        return (print, ("this code ran while loading",))


def test_training_state_refuses_to_unpickle_code(model_and_tokenizer, tmp_path: Path) -> None:
    model, tokenizer = model_and_tokenizer
    save_checkpoint(tmp_path, model, tokenizer, {"step": 1})
    with open(tmp_path / TRAINING_STATE_FILE, "wb") as handle:
        pickle.dump({"step": Payload()}, handle)
    with pytest.raises(UserError, match="not a halluc training state"):
        load_training_state(tmp_path)


def test_training_state_round_trips_tensors_and_plain_values(model_and_tokenizer, tmp_path: Path) -> None:
    model, tokenizer = model_and_tokenizer
    state = {"step": 7, "rng": {"torch": torch.get_rng_state()}, "losses": [1.5, 2.5], "carry": None}
    save_checkpoint(tmp_path, model, tokenizer, state)
    loaded = load_training_state(tmp_path)
    assert loaded["step"] == 7 and loaded["losses"] == [1.5, 2.5]
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
