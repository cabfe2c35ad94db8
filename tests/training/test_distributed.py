"""Data parallel training: under torchrun (gloo on CPU) two processes train like one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cli_helpers import TINY, pretrain, run_cli
from halluc_cli.errors import UserError
from halluc_cli.training.distributed import check_batch_split, check_last_batch, process_rows



TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "halluc_cli"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m halluc_cli ARGS...`, as a user would launch it."""
    result = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_curves(one: Path, two: Path) -> None:
    # Same steps and numbers up to float summation order (gradients are summed across processes).
    left, right = _metrics(one), _metrics(two)
    assert [m["step"] for m in left] == [m["step"] for m in right]  # one writer: no line twice
    for a, b in zip(left, right):
        for key in set(a) - {"tokens_per_s"}:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


def _listing(run_dir: Path) -> list[str]:
    return sorted(str(path.relative_to(run_dir)) for path in run_dir.rglob("*"))


@pytest.mark.slow
def test_two_processes_pretrain_and_finetune_like_one(tmp_path: Path) -> None:
    # No dropout: each process draws its own masks, so only then are the two runs the same.
    settings = ["model=lstm", "model.dropout=0.0", "train.max_steps=6", "train.eval_every=3", "train.save_every=3"]
    pretrain(tmp_path / "one", *settings)
    result = torchrun("pretrain", *TINY, f"hydra.run.dir={tmp_path / 'two'}", *settings)

    _assert_same_curves(tmp_path / "one", tmp_path / "two")
    assert result.stdout.count("run dir") == 1  # only the main process prints
    assert _listing(tmp_path / "two") == _listing(tmp_path / "one")  # same files, no leftovers
    assert sorted(path.name for path in tmp_path.iterdir()) == ["one", "two"]
    state = torch.load(tmp_path / "two" / "checkpoint" / "training_state.pt", weights_only=True)
    assert state["step"] == 6 and state["carry"][0][0].shape[1] == 8  # the LSTM state of the global batch

    # with a tracker: only the main process logs (one writer, one event file)
    finetune = ["train.max_steps=4", "train.eval_every=2", "train.save_every=2", "eval_after=false", "logger=tensorboard"]
    one = run_cli("finetune", *TINY, f"ckpt={tmp_path / 'one'}", f"hydra.run.dir={tmp_path / 'ft_one'}", *finetune)
    assert one.exit_code == 0, one.stderr
    torchrun("finetune", *TINY, f"ckpt={tmp_path / 'one'}", f"hydra.run.dir={tmp_path / 'ft_two'}", *finetune)
    _assert_same_curves(tmp_path / "ft_one", tmp_path / "ft_two")
    untracked = lambda run_dir: [name for name in _listing(run_dir) if not name.startswith("tensorboard/")]  # noqa: E731
    assert untracked(tmp_path / "ft_two") == untracked(tmp_path / "ft_one")
    assert len(list((tmp_path / "ft_two" / "tensorboard").iterdir())) == 1


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_after_the_same_step(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    settings = ["train.max_steps=1000000", "train.eval_every=2", "train.save_every=1000000"]
    agent = subprocess.Popen(
        [*TORCHRUN, "pretrain", *TINY, f"hydra.run.dir={run_dir}", *settings],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    while not (run_dir / "metrics.jsonl").is_file() and agent.poll() is None:
        time.sleep(0.2)  # until both train
    workers = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
    worker = max(int(pid) for pid in workers)
    # Only one worker hears it; the other must stop with it, or the save would hang.
    os.kill(worker, signal.SIGTERM)
    _, stderr = agent.communicate(timeout=300)
    step = torch.load(run_dir / "checkpoint" / "training_state.pt", weights_only=True)["step"]
    assert 2 <= step < 1000000
    assert stderr.count(f"stopped by SIGTERM: saved the checkpoint at step {step}") == 1, stderr[-3000:]
    assert "exitcode  : 143" in stderr  # torchrun's report of its workers


def test_a_process_takes_a_contiguous_block_of_rows() -> None:
    blocks = [process_rows(10, SimpleNamespace(process_index=rank, num_processes=4)) for rank in range(4)]
    assert [(block.start, block.stop) for block in blocks] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    # A smaller last batch still gives every process a row.
    blocks = [process_rows(3, SimpleNamespace(process_index=rank, num_processes=3)) for rank in range(3)]
    assert [block.stop - block.start for block in blocks] == [1, 1, 1]


def test_global_batch_must_split_across_processes() -> None:
    check_batch_split(8, 2)
    with pytest.raises(UserError, match="train.batch_size=10 .* does not split across 4 processes"):
        check_batch_split(10, 4)


def test_last_batch_must_reach_every_process() -> None:
    check_last_batch(24, 8, 4)  # no smaller last batch
    check_last_batch(29, 8, 4)  # 5 over: one row each at least
    with pytest.raises(UserError, match="last batch of each epoch holds 2 of 26 examples"):
        check_last_batch(26, 8, 4)
