"""Shared fixtures: run the real CLI in-process, and tiny trained runs reused across tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import pretrain

@pytest.fixture(scope="session")
def lstm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pretrained LSTM run dir, shared by every test that only reads it."""
    run_dir = tmp_path_factory.mktemp("runs") / "lstm"
    pretrain(run_dir, "model=lstm")
    return run_dir


@pytest.fixture(scope="session")
def transformer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pretrained Transformer run dir, shared by every test that only reads it."""
    run_dir = tmp_path_factory.mktemp("runs") / "transformer"
    pretrain(run_dir, "model=transformer")
    return run_dir
