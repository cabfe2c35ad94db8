"""The plots of `halluc score` (halluc_cli/scoring/plots.py): written atomically, legends inside the figure."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from halluc_cli.scoring import plots
from halluc_cli.scoring.aggregate import Group, Run
from halluc_cli.scoring.plots import plot_rates_vs, plot_risk_coverage

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


def _known_rates(accuracy: float) -> dict:
    return {"n": 10, "accuracy": accuracy, "abstention_rate": 0.0, "hallucination_rate": 1 - accuracy}


def _group(fraction: float, mitigation: str) -> Group:
    """Two seeds scored on known test questions only (two panels: a narrow figure)."""
    scores = {point: {"by_known": {"known": _known_rates(0.8 - fraction / 2)}} for point in ("early_stop", "final")}
    choices = {"unknown_fraction": fraction, "mitigation": mitigation}
    return Group(choices, [Run(Path(f"{fraction}-{mitigation}-{seed}"), seed, "r", choices, scores, {}, [])
                           for seed in (0, 1)])


def test_a_legend_of_many_score_mitigations_fits_the_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mitigations = [f"{name}+{score}" for name in ("none", "clean", "distill", "replay")
                   for score in ("kb_verify(abstain)", "abstain_uncertain(neg_mean_logprob)")]
    groups = [_group(fraction, mitigation) for fraction in (0.0, 0.5, 1.0) for mitigation in mitigations]
    saved = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: saved.append(figure) or path)
    names = ["unknown_fraction", "mitigation"]
    plot_rates_vs(groups, names, "unknown_fraction", tmp_path / "rates.png", names)
    (figure,) = saved
    FigureCanvasAgg(figure).draw()
    (legend,) = figure.legends
    box = legend.get_window_extent()
    assert len(legend.get_texts()) == len(mitigations) + 2  # and the two eval points
    assert figure.bbox.x0 <= box.x0 and box.x1 <= figure.bbox.x1


def _ledger_group(fraction: float, mitigation: str) -> Group:
    ledger = {"retained": 0.6, "lost": 0.2, "stored_not_extracted": 0.1, "confident_wrong": 0.1, "never_stored": 0.0}
    scores = {point: {"ledger": ledger} for point in ("early_stop", "final")}
    choices = {"unknown_fraction": fraction, "mitigation": mitigation}
    return Group(choices, [Run(Path(f"{fraction}-{mitigation}-{seed}"), seed, "r", choices, scores, {}, [])
                           for seed in (0, 1)])


def test_the_ledger_draws_a_bar_per_group_that_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shares 0 / 0.5 / 1 without mitigation and four mitigations at 0.5 alone: 7 bars a panel,
    no empty slots for the mitigations at the shares they were not run at."""
    groups = [_ledger_group(fraction, "none") for fraction in (0.0, 0.5, 1.0)]
    groups += [_ledger_group(0.5, mitigation) for mitigation in ("clean", "distill", "replay", "idk")]
    twin = _group(0.5, "none+kb_verify(abstain)")  # a score mitigation's twin keeps no ledger
    saved = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: saved.append(figure) or path)
    names = ["unknown_fraction", "mitigation"]
    plots.plot_ledger([*groups, twin], names, tmp_path / "ledger.png", names)
    (figure,) = saved
    for axes in figure.axes:
        slots = sorted({round(patch.get_x() + patch.get_width() / 2, 3) for patch in axes.patches})
        width = axes.patches[0].get_width()
        assert len(slots) == len(groups)
        assert max(b - a for a, b in zip(slots, slots[1:])) <= 2.5 * width  # at most a bar's gap between shares
        assert [tick.get_text() for tick in axes.get_xticklabels()] == ["0", "0.5", "1"]
