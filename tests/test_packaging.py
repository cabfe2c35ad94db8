"""The built wheel is a working halluc on its own: code, bundled data and configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _files(root: Path, pattern: str) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob(pattern) if "__pycache__" not in path.parts}


@pytest.mark.slow
def test_installed_wheel_runs_with_its_own_configs(tmp_path: Path) -> None:
    # The wheel's sources, copied: pip builds in the tree it is given, and a checkout's stale
    # build/ could ship files that are gone.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    for name in ("halluc_cli", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = _run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "wheel"), str(source)], cwd=tmp_path)
    assert "warning" not in (built.stdout + built.stderr).lower()  # e.g. a deprecated license table
    site = tmp_path / "site"
    (wheel,) = (tmp_path / "wheel").glob("halluc-*.whl")
    _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], cwd=tmp_path)
    # Every module and config of the checkout ships (pyproject.toml lists the packages by hand).
    assert _files(site / "halluc_cli", "*.py") == _files(REPO / "halluc_cli", "*.py")
    assert _files(site / "halluc_cli" / "conf", "*.yaml") == _files(REPO / "conf", "*.yaml")

    # Only the installed copy is importable: PYTHONPATH holds it alone and cwd is outside the
    # checkout; the test interpreter's site-packages give torch and the other dependencies.
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    where = _run([sys.executable, "-c", "import halluc_cli.config as c; print(c.__file__); print(c.CONF_DIR)"],
                 cwd=tmp_path, env=env).stdout.splitlines()
    assert [Path(path).resolve().is_relative_to(site.resolve()) for path in where] == [True, True], where
    run_dir = tmp_path / "run"
    _run([sys.executable, "-m", "halluc_cli", "pretrain", "experiment=tiny", "train.progress=false",
          f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env)
    assert (run_dir / "checkpoint" / "model.safetensors").is_file()
