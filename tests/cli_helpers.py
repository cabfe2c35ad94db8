"""Running the real CLI in-process from tests, as a user would from the shell."""

from __future__ import annotations

import os
import shutil
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


def assert_one_line_error(result: CliResult, *phrases: str) -> None:
    """The command ended as a user's mistake should: exit status 2 and one `error:` line
    holding every phrase, no traceback."""
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


# What loading says of the weights `truncated_copy` leaves, after the run dir's path.
TRUNCATED = "checkpoint/model.safetensors is truncated or not a safetensors file"


def truncated_copy(run_dir: Path, copy: Path) -> Path:
    """A copy of `run_dir` whose checkpoint weights are cut in half, as a full disk or an
    interrupted copy leaves them."""
    shutil.copytree(run_dir, copy)
    weights = copy / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return copy


def pretrain(run_dir: Path, *overrides: str) -> CliResult:
    """The tiny pretraining run into `run_dir`; asserts it succeeded."""
    result = run_cli("pretrain", *TINY, f"hydra.run.dir={run_dir}", *overrides)
    assert result.exit_code == 0, result.stderr + result.stdout
    return result


class Killed(BaseException):
    """Like SIGKILL: nothing on the way out catches it, so nothing gets saved."""


def run_killed_at_step(step: int, *args: str) -> None:
    """Run `halluc ARGS...` and kill it just before training step `step + 1`."""
    import pytest

    from halluc_cli.training.loop import Trainer

    real_step = Trainer._train_step

    def dies(self: Trainer):
        if self.step == step:
            raise Killed
        return real_step(self)

    Trainer._train_step = dies
    try:
        with pytest.raises(Killed):
            run_cli(*args)
    finally:
        Trainer._train_step = real_step


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    """The two runs' final checkpoints hold bit-identical tensors."""
    from safetensors.torch import load_file

    a = load_file(str(run_a / "checkpoint" / "model.safetensors"))
    b = load_file(str(run_b / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert bool((a[name] == b[name]).all()), name


def import_script(name: str):
    """Import `scripts/<name>.py` as a module (scripts/ is not a package)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
