"""Stopping cleanly when a scheduler asks: SIGTERM, SIGUSR1, or SIGUSR2 (submitit's timeout signal).

While `Trainer.fit` trains, these signals only record that they came; the loop finishes the
step it is in, writes its checkpoint and raises `Preempted`. The command then prints one line
and exits with 128 + the signal number (143 for SIGTERM, 138 for SIGUSR1, 140 for SIGUSR2),
the code a shell gives a process killed by that signal. Under SLURM the job is requeued first;
under hydra-submitit-launcher, submitit's own handler (which the training replaced) does it.
Rerunning the same command into the same run dir resumes (`resume=auto`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from halluc_cli.training.progress import console

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopSignals:
    """The stop signal received while training (0: none) and the handlers it replaced."""

    def __init__(self) -> None:
        self.received = 0
        self.replaced: dict[int, Any] = {}

    def record(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: only remember; the loop acts at the end of its step."""
        self.received = signum


@contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Record stop signals instead of dying of them, for the duration of the block only.

    Restoring the previous handlers matters: several commands may run in one process (tests,
    a Hydra sweep), and submitit's handlers must be back for it to requeue.
    """
    stop = StopSignals()
    for signum in STOP_SIGNALS:
        stop.replaced[signum] = signal.signal(signum, stop.record)
    try:
        yield stop
    finally:
        for signum, handler in stop.replaced.items():
            signal.signal(signum, handler)


class Preempted(Exception):
    """Training stopped at a signal after saving its checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint_dir: Path, replaced: Any, main_process: bool) -> None:
        self.signum, self.step, self.checkpoint_dir = signum, step, checkpoint_dir
        self.replaced, self.main_process = replaced, main_process
        super().__init__(
            f"stopped by {signal.Signals(signum).name}: saved the checkpoint at step {step} in {checkpoint_dir}; "
            "run the same command again (same hydra.run.dir) to resume"
        )

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as for a process the signal killed."""
        return 128 + self.signum


def exit_preempted(stopped: Preempted) -> NoReturn:
    """Print the one line, have the job requeued where a scheduler can, and exit."""
    if stopped.main_process:
        console.print(str(stopped), highlight=False, markup=False)
    if callable(stopped.replaced):
        # submitit's handler (hydra-submitit-launcher): it requeues the job and exits itself.
        stopped.replaced(stopped.signum, None)
    elif stopped.main_process and "SLURM_JOB_ID" in os.environ:
        requeue_slurm_job(os.environ["SLURM_JOB_ID"])
    sys.exit(stopped.exit_code)


def requeue_slurm_job(job_id: str) -> None:
    """`scontrol requeue` the job; a job submitted with --no-requeue stays stopped, with a note why."""
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    except FileNotFoundError:
        console.print(f"SLURM job {job_id} not requeued: no scontrol on PATH", highlight=False)
        return
    if result.returncode == 0:
        console.print(f"requeued SLURM job {job_id}", highlight=False)
    else:
        reason = (result.stderr or result.stdout).strip()
        console.print(f"SLURM job {job_id} not requeued: {reason}", highlight=False, markup=False)
