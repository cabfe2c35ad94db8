"""The plots of `halluc score` (halluc_cli/scoring/plots.py): written atomically."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.figure import Figure

from halluc_cli.scoring.plots import plot_risk_coverage

CURVES = {"neg_mean_logprob": [(0.5, 0.1), (1.0, 0.3)]}


def test_a_plot_that_fails_midway_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = plot_risk_coverage(CURVES, None, tmp_path / "risk_coverage.png")
    old = path.read_bytes()

    def failing_savefig(figure: Figure, target: Path, **kwargs: object) -> None:
        Path(target).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_risk_coverage(CURVES, (0.8, 0.2), path)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["risk_coverage.png"]  # no temp file left
