"""Preemption: a stop signal ends training after the current step with a checkpoint, and a
rerun of the same command continues to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_helpers import TINY, CliResult, assert_same_weights, pretrain, run_cli
from halluc_cli.training.loop import Trainer


def run_signalled_at_step(step: int, signum: int, *args: str) -> CliResult:
    """Run `halluc ARGS...`, sending this process `signum` while it trains step `step + 1`."""
    real_step = Trainer._train_step

    def signalled(self: Trainer):
        if self.step == step:
            os.kill(os.getpid(), signum)
        return real_step(self)

    Trainer._train_step = signalled
    try:
        return run_cli(*args)
    finally:
        Trainer._train_step = real_step


def _saved_step(run_dir: Path) -> int:
    return torch.load(run_dir / "checkpoint" / "training_state.pt", weights_only=True)["step"]


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in rows]


@pytest.mark.parametrize(("family", "signum"), [("lstm", signal.SIGTERM), ("transformer", signal.SIGUSR1)])
def test_signal_saves_and_a_rerun_resumes_to_the_same_weights(family: str, signum: int, tmp_path: Path) -> None:
    settings = [f"model={family}", "train.max_steps=12", "train.save_every=5", "train.eval_every=4"]
    pretrain(tmp_path / "whole", *settings)
    before = signal.getsignal(signum)

    command = ["pretrain", *TINY, f"hydra.run.dir={tmp_path / 'stopped'}", *settings]
    stopped = run_signalled_at_step(6, signum, *command)
    assert stopped.exit_code == 128 + signum
    assert f"stopped by {signal.Signals(signum).name}: saved the checkpoint at step 7" in stopped.stderr
    assert _saved_step(tmp_path / "stopped") == 7  # the step it was in, not the last periodic save
    assert signal.getsignal(signum) is before  # handlers live only while training

    resumed = pretrain(tmp_path / "stopped", *settings)
    assert "resuming from" in resumed.stdout
    assert_same_weights(tmp_path / "whole", tmp_path / "stopped")
    assert _metrics(tmp_path / "stopped") == _metrics(tmp_path / "whole")


def test_finetune_stops_and_resumes(lstm_run: Path, tmp_path: Path) -> None:
    settings = [f"ckpt={lstm_run}", "train.max_steps=6", "train.eval_every=3", "eval_after=false"]
    whole = run_cli("finetune", *TINY, f"hydra.run.dir={tmp_path / 'whole'}", *settings)
    assert whole.exit_code == 0, whole.stderr
    command = ["finetune", *TINY, f"hydra.run.dir={tmp_path / 'stopped'}", *settings]
    assert run_signalled_at_step(1, signal.SIGTERM, *command).exit_code == 143
    assert _saved_step(tmp_path / "stopped") == 2
    assert run_cli(*command).exit_code == 0
    assert_same_weights(tmp_path / "whole", tmp_path / "stopped")


def test_slurm_job_is_requeued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")

    result = run_signalled_at_step(1, signal.SIGTERM, "pretrain", *TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.exit_code == 143
    assert calls.read_text() == "requeue 4242\n" and "requeued SLURM job 4242" in result.stderr


def test_submitits_handler_takes_over_after_the_save(tmp_path: Path) -> None:
    # hydra-submitit-launcher: submitit's SIGUSR2 handler requeues the job; it must run after
    # the checkpoint is written, and be back in place afterwards.
    received: list[tuple[int, int]] = []

    def submitit_handler(signum: int, frame) -> None:
        received.append((signum, _saved_step(tmp_path / "run")))

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        result = run_signalled_at_step(1, signal.SIGUSR2, "pretrain", *TINY, f"hydra.run.dir={tmp_path / 'run'}")
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert result.exit_code == 140
    assert received == [(signal.SIGUSR2, 2)]


@pytest.mark.slow
def test_sigterm_from_outside_stops_a_running_command(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "halluc_cli", "pretrain", *TINY, f"hydra.run.dir={run_dir}"]
    # Far more steps than it gets through before the signal, and no periodic save.
    settings = ["train.max_steps=1000000", "train.eval_every=2", "train.save_every=1000000"]
    process = subprocess.Popen([*command, *settings], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (run_dir / "metrics.jsonl").is_file() and process.poll() is None:
        time.sleep(0.2)  # until it has trained and logged its first steps
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr
    step = _saved_step(run_dir)
    assert 2 <= step < 1000000
    assert f"stopped by SIGTERM: saved the checkpoint at step {step} in {run_dir / 'checkpoint'}" in stderr
