"""Running the real CLI in-process from tests, as a user would from the shell."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from halluc_cli.cli import app

# Tests never touch a hub: anything that would download fails fast instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TINY = ["experiment=tiny", "train.progress=false"]


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    """Run `halluc ARGS...` in this process, as a user would from the shell."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def pretrain(run_dir: Path, *overrides: str) -> CliResult:
    """The tiny pretraining run into `run_dir`; asserts it succeeded."""
    result = run_cli("pretrain", *TINY, f"hydra.run.dir={run_dir}", *overrides)
    assert result.exit_code == 0, result.stderr + result.stdout
    return result
