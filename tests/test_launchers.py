"""Sweeps through hydra-submitit-launcher: `hydra/launcher=local` runs each run as a submitit
job in its own process, the code path `hydra/launcher=slurm` takes on a cluster; and
`hydra/launcher=slurm` itself on a one-node SLURM cluster (tests/slurm_cluster.py), through
sbatch, srun and a real requeue."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cli_helpers import TINY, assert_same_weights, pretrain, run_cli
from slurm_cluster import SlurmCluster


@pytest.mark.slow
def test_local_submitit_sweep_writes_each_run_dir(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "pretrain", "-m", "hydra/launcher=local", *TINY, "model=lstm", "train.max_steps=2",
        "train.eval_every=2", "train.eval_batches=1", "seed=0,1", f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr + result.stdout
    for job, seed in ((0, 0), (1, 1)):
        run_dir = sweep_dir / str(job)
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == seed
        assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2
        assert (run_dir / "checkpoint" / "model.safetensors").is_file()
    # each job's own log, where a SLURM job's would be
    assert len(list((sweep_dir / ".submitit").glob("*/*_log.out"))) == 2


# `hydra/launcher=slurm` on the one-node test cluster (conftest.py: slurm_cluster). What the
# config asks by default for a real run (a GPU, 8 CPUs, 64 GB) the node may not have, and SLURM
# refuses a job it could never start.
SLURM = [
    "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
]  # fmt: skip
# The test cluster keeps no accounting (sacct), so submitit cannot tell a job that died without
# a result from one still to come, and would wait for it forever.
SWEEP_TIMEOUT_S = 120


def halluc_command(*args: str) -> list[str]:
    """`halluc ARGS...` as a process of its own: the submitting process waits for its jobs."""
    return [sys.executable, "-m", "halluc_cli", *args]


@pytest.mark.slow
def test_slurm_sweep_runs_each_run_as_a_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        halluc_command("pretrain", "-m", *TINY, *SLURM, "train.max_steps=4", "train.eval_every=2",
                       "train.eval_batches=1", "seed=1,2", f"hydra.sweep.dir={sweep_dir}"),
        env=slurm_cluster.env(), capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    for job, seed in ((0, 1), (1, 2)):
        run_dir = sweep_dir / str(job)
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == seed
        assert (run_dir / "checkpoint" / "model.safetensors").is_file()


def wait_for(ready, what: str, timeout_s: float) -> None:
    """Poll `ready` until it is true; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_slurm_requeues_a_preempted_run_that_ends_as_if_never_stopped(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    # A few seconds of training: the signal comes after the first evaluation, well before the end.
    overrides = ["model=lstm", "train.max_steps=300", "train.eval_every=20"]
    sweep_dir = tmp_path / "sweep"
    submitter = subprocess.Popen(
        halluc_command("pretrain", "-m", *TINY, *overrides, *SLURM, f"hydra.sweep.dir={sweep_dir}"),
        env=slurm_cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        metrics = sweep_dir / "0" / "metrics.jsonl"
        wait_for(lambda: metrics.is_file() and metrics.read_text(), "first evaluation of the job", SWEEP_TIMEOUT_S)
        # the job's SLURM id, as its run recorded it (hydra.job.id)
        job_id = yaml.safe_load((sweep_dir / "0" / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"]
        slurm_cluster.command("scancel", "--signal=USR2", job_id)
        # The uninterrupted run, in this process while the job waits to start again.
        pretrain(tmp_path / "whole", *overrides)
        output, _ = submitter.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        submitter.kill()
    assert submitter.returncode == 0, output
    log = "".join(path.read_text() for path in sweep_dir.glob(".submitit/*/*_log.*"))
    assert "stopped by SIGUSR2" in log, log
    assert slurm_cluster.job_field(job_id, "Restarts") == "1"
    assert json.loads((sweep_dir / "0" / "summary.json").read_text())["steps"] == 300
    assert_same_weights(tmp_path / "whole", sweep_dir / "0")
