"""Sweeps through hydra-submitit-launcher: `hydra/launcher=local` runs each run as a submitit
job in its own process, the code path `hydra/launcher=slurm` takes on a cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cli_helpers import TINY, run_cli


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
