"""The plots of a gathered sweep (`halluc score runs=...`), as PNG files.

- rates_vs_unknown_fraction.png: accuracy and hallucination rate on the test questions vs
  the share of unknown fine-tuning examples (Gekhman et al. 2024), a line per mitigation
  (and any other choice that varies), early-stopping point dashed, end of training solid.
- rates_vs_paraphrases.png: the same vs the pretraining paraphrases per fact (Physics of
  LMs 3.1), and rates_vs_<setting>.png vs any other numeric setting the sweep varied
  (train.lr, freeze.rank); a labelled-data sweep's error rate likewise.
- train_accuracy_over_steps.png: how fast the known and the unknown fine-tuning examples
  are fitted, a panel per unknown fraction.
- freeze_strategies.png: accuracy, hallucination rate, trainable parameters and time per
  freeze strategy, among runs that differ in nothing else.
- ledger_vs_unknown_fraction.png (runs of `finetune ledger=true`): the held-out known facts
  by forgetting-ledger category (retained, stored but not extracted, confidently wrong, lost,
  never stored), stacked shares vs the unknown fraction, a panel per eval point.
And of scored predictions (`halluc score predictions=...`, `plot_risk_coverage`):
- risk_coverage.png: the hallucination rate among the answers given vs the share given, when
  only the answers an uncertainty score is surest of are given, a line per score, and the KB
  verifier's point (abstaining on what the KB contradicts).
Each is drawn only when the sweep has what it compares. Figures are drawn on matplotlib's
Agg canvas directly: no display, no pyplot global state.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from halluc_cli.io import atomic_path
from halluc_cli.scoring.aggregate import (
    Group,
    Sweep,
    choice_key,
    describe,
    group_stats,
    sort_key,
)
from halluc_cli.scoring.metrics import is_number

RATE_LABEL = "rate (share of questions)"
POINT_STYLE = {"early_stop": "--", "final": "-"}
POINT_NAME = {"early_stop": "early-stopping point", "final": "end of training"}
DPI = 120


def draw_plots(sweep: Sweep, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Every plot the sweep supports, written into `out_dir`: (paths, notes on plots left out)."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # no font-cache chatter in the log
    varying = sweep.varying()
    paths, notes = [], []
    for x in varying:
        if len({group.choices[x] for group in sweep.groups if is_number(group.choices[x])}) > 1:
            name = f"rates_vs_{x.replace('.', '_')}.png"
            path = plot_rates_vs(sweep.groups, varying, x, out_dir / name, sweep.names)
            if path is None:
                notes.append(f"{name}: no run has test scores (eval/<point>/scores.json)")
            else:
                paths.append(path)
    if "unknown_fraction" not in varying:
        notes.append("rates_vs_unknown_fraction.png: every run has the same data.unknown_fraction")
    trained = [group for group in sweep.groups if any(run.curve for run in group.runs)]  # not verified twins
    if any("train_acc_known" in line or "train_acc_unknown" in line for run in sweep.runs for line in run.curve):
        paths.append(plot_train_accuracy(trained, varying, out_dir / "train_accuracy_over_steps.png", sweep.names))
    else:
        notes.append("train_accuracy_over_steps.png: no metrics.jsonl holds train_acc_known/train_acc_unknown")
    if "freeze" in varying:
        path = plot_freeze_strategies(sweep.groups, varying, out_dir / "freeze_strategies.png", sweep.names)
        if path is None:
            notes.append("freeze_strategies.png: no two freeze strategies were run with otherwise equal settings")
        else:
            paths.append(path)
    ledger = plot_ledger(sweep.groups, varying, out_dir / "ledger_vs_unknown_fraction.png", sweep.names)
    paths += [ledger] if ledger is not None else []  # opt-in (ledger=true): no note when absent
    return paths, notes


def _families(groups: Iterable[Group], apart: str, varying: list[str]) -> dict[str, list[Group]]:
    """Groups that differ only in `apart`, keyed by a label of the other varying choices;
    only families with two values of `apart` or more (none when no family has two)."""
    others = [name for name in varying if name != apart]
    families: dict[tuple[str, ...], list[Group]] = defaultdict(list)
    for group in sorted(groups, key=lambda group: sort_key(group.choices, [*others, apart])):
        families[tuple(choice_key(group.choices[name]) for name in others)].append(group)
    kept = [family for family in families.values() if len(family) > 1]
    # label by the choices that tell the kept families apart (freeze= is no help on a line
    # when every line has freeze=none)
    named = [name for name in others if len({choice_key(family[0].choices[name]) for family in kept}) > 1] or others
    return {describe(family[0].choices, named) or "all runs": family for family in kept}


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:  # the temp name ends in .tmp: the format comes from `path`
        figure.savefig(tmp, dpi=DPI, format=path.suffix.lstrip("."))
    return path


def _legend_below(figure: Figure, handles: list[Any], columns: int) -> None:
    """The figure's legend under its panels, in up to `columns` columns, as many as fit the
    figure's width: long labels (a sweep's score mitigations) take more rows instead."""
    renderer = FigureCanvasAgg(figure).get_renderer()
    for ncol in range(min(len(handles), columns), 0, -1):
        legend = figure.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize="small")
        if ncol == 1 or legend.get_window_extent(renderer).width <= figure.bbox.width:
            return
        legend.remove()


def _colors(count: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(index % 10) for index in range(count)]


def _fixed(groups: list[Group], apart: str, names: Iterable[str]) -> str:
    """The choices (but `apart`) that every group shown shares, for a figure's subtitle."""
    fixed = [name for name in names if name != apart
             and len({choice_key(group.choices[name]) for group in groups}) == 1]
    return describe(groups[0].choices, fixed) if groups and fixed else ""


# --- 1. rates vs unknown fraction (or pretraining paraphrases) --------------------------------------------------------

_RATE_PANELS = (
    ("known_accuracy", "Accuracy on known test questions"),
    ("known_hallucination_rate", "Hallucination rate on known test questions"),
    ("unknown_hallucination_rate", "Hallucination rate on unknown test questions"),
    ("error_rate", "Error rate on the labelled test set"),  # data=labelled
)


# Axis labels of the choices a rates plot often has on its x axis: (axis label, what the
# title says it is); any other numeric choice is named by its key.
_X_AXES = {
    "unknown_fraction": ("unknown fraction of fine-tuning examples (share)", "share of unknown fine-tuning examples"),
    "paraphrases": ("pretraining paraphrases per fact (count)", "pretraining paraphrases per fact"),
}


def plot_rates_vs(groups: list[Group], varying: list[str], x: str, path: Path, names: Iterable[str]) -> Path | None:
    """Test accuracy and hallucination (or a labelled set's error rate) vs the numeric choice
    `x`, mean with 95% interval bars; a line per setting of the other choices that was run at
    two values or more. None when no group has a test score to draw."""
    axis_label, x_name = _X_AXES.get(x, (x, x))
    groups = [group for group in groups if is_number(group.choices[x])]  # "?": an unknown count
    # no setting run at two values: each group is a point of its own
    families = _families(groups, x, varying) or {
        describe(group.choices, [name for name in varying if name != x]): [group] for group in groups
    }
    panels = [(metric, title) for metric, title in _RATE_PANELS
              if any(group_stats(group, point)[metric] for group in groups for point in POINT_STYLE)]
    if not panels:  # runs fine-tuned with eval_after=false: nothing to draw
        return None
    figure = Figure(figsize=(5.2 * len(panels), 4.8), layout="constrained")
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    values = sorted({group.choices[x] for group in groups})
    # a learning rate's values are apart by factors: a log axis spaces them evenly
    logarithmic = min(values) > 0 and max(values) / min(values) >= 100
    span = (max(values) - min(values)) or 1.0
    colors = _colors(len(families))
    points = [point for point in POINT_STYLE if any(point in run.scores for g in groups for run in g.runs)]
    series = len(families) * len(points)
    for index, (label, family) in enumerate(families.items()):
        for point_index, point in enumerate(points):
            # shift each line a little sideways so that error bars at one fraction stay apart
            shift = (index * len(points) + point_index - (series - 1) / 2) * 0.01
            stats = [(group.choices[x], group_stats(group, point)) for group in family]
            stats = [(x, s) for x, s in stats if s["n_runs"]]
            if not stats:
                continue
            for ax, (metric, _) in zip(axes, panels):
                xs = [x * (1 + 2 * shift) if logarithmic else x + shift * span for x, s in stats if s[metric]]
                cells = [s[metric] for _, s in stats if s[metric]]
                if not cells:
                    continue
                means = [cell["mean"] for cell in cells]
                errors = [[cell["mean"] - cell["low"] for cell in cells],
                          [cell["high"] - cell["mean"] for cell in cells]]
                ax.errorbar(xs, means, yerr=errors, color=colors[index], linestyle=POINT_STYLE[point],
                            marker="o", markersize=4, capsize=3, linewidth=1.6)
    handles = [Line2D([], [], color=color, marker="o", label=label) for label, color in zip(families, colors)]
    handles += [Line2D([], [], color="black", linestyle=POINT_STYLE[point], label=POINT_NAME[point])
                for point in points]
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel(axis_label)
        if logarithmic:
            ax.set_xscale("log")
        ax.set_xticks(values, [f"{value:g}" for value in values])
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(RATE_LABEL)
    fixed = _fixed([group for family in families.values() for group in family], x, names)
    figure.suptitle(f"Test rates vs {x_name}"
                    + (f"\n{fixed}" if fixed else "") + "\n(mean over seeds, bars: 95% interval, inside [0, 1])")
    _legend_below(figure, handles, 4)
    return _save(figure, path)


# --- 2. train accuracy over steps --------------------------------------------------------

_FIT_STYLE = {"train_acc_known": ("-", "known examples"), "train_acc_unknown": (":", "unknown examples")}


def _mean_curve(runs: Iterable[Any], key: str) -> tuple[list[int], list[float]]:
    """Mean over runs of `key` at each step any of them evaluated."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for line in run.curve:
            value = line.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                by_step[line["step"]].append(float(value))
    steps = sorted(by_step)
    return steps, [sum(by_step[step]) / len(by_step[step]) for step in steps]


def plot_train_accuracy(groups: list[Group], varying: list[str], path: Path, names: Iterable[str]) -> Path:
    """Train accuracy on the known and the unknown fine-tuning examples over steps, a panel
    per unknown fraction, a colour per other varying choice, mean over seeds."""
    fractions = sorted({group.choices["unknown_fraction"] for group in groups})
    others = [name for name in varying if name != "unknown_fraction"]
    labels = list(dict.fromkeys(describe(g.choices, others) or "all runs"
                                for g in sorted(groups, key=lambda g: sort_key(g.choices, others))))
    colors = dict(zip(labels, _colors(len(labels))))
    columns = min(len(fractions), 4)
    rows = math.ceil(len(fractions) / columns)
    figure = Figure(figsize=(4.8 * columns, 3.9 * rows + 0.9), layout="constrained")
    axes = figure.subplots(rows, columns, sharey=True, squeeze=False).flatten()
    for ax, fraction in zip(axes, fractions):
        for group in groups:
            if group.choices["unknown_fraction"] != fraction:
                continue
            label = describe(group.choices, others) or "all runs"
            for key, (style, _) in _FIT_STYLE.items():
                steps, means = _mean_curve(group.runs, key)
                if steps:
                    ax.plot(steps, means, color=colors[label], linestyle=style, linewidth=1.6)
        ax.set_title(f"unknown fraction {fraction:g}")
        ax.set_xlabel("step (optimizer updates)")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    for ax in axes[len(fractions):]:
        ax.set_visible(False)
    for row in range(rows):
        axes[row * columns].set_ylabel("train accuracy (share of examples)")
    handles = [Line2D([], [], color=colors[label], label=label) for label in labels if len(labels) > 1]
    handles += [Line2D([], [], color="black", linestyle=style, label=name) for style, name in _FIT_STYLE.values()]
    fixed = _fixed(groups, "unknown_fraction", names)
    figure.suptitle("Fitting known vs unknown fine-tuning examples (mean over seeds)"
                    + (f"\n{fixed}" if fixed else ""))
    _legend_below(figure, handles, 4)
    return _save(figure, path)


# --- 3. freeze strategies ----------------------------------------------------------------

_FREEZE_PANELS = (
    ("known_accuracy", "Accuracy on known test questions", RATE_LABEL),
    ("hallucination_rate", "Hallucination rate (all test questions)", RATE_LABEL),
    ("trainable_parameters", "Trainable parameters", "parameters (count)"),
    ("seconds", "Fine-tuning time", "time (seconds)"),
)


def plot_freeze_strategies(groups: list[Group], varying: list[str], path: Path, names: Iterable[str]) -> Path | None:
    """Bars per freeze strategy (a colour per setting of the other choices, where at least
    two strategies share it); rates at the end of training (else the early-stopping point).
    None when no two strategies were run with otherwise equal settings."""
    families = _families(groups, "freeze", varying)
    if not families:
        return None
    strategies = list(dict.fromkeys(group.choices["freeze"] for family in families.values()
                                    for group in sorted(family, key=lambda g: sort_key(g.choices, ["freeze"]))))
    figure = Figure(figsize=(4.2 * len(_FREEZE_PANELS), 4.6), layout="constrained")
    axes = figure.subplots(1, len(_FREEZE_PANELS))
    width = 0.8 / len(families)
    colors = _colors(len(families))
    point_used = set()
    for index, (label, family) in enumerate(families.items()):
        for group in family:
            point = "final" if any("final" in run.scores for run in group.runs) else "early_stop"
            point_used.add(point)
            stats = group_stats(group, point)
            x = strategies.index(group.choices["freeze"]) - 0.4 + width * (index + 0.5)
            for ax, (metric, _, _) in zip(axes, _FREEZE_PANELS):
                cell = stats[metric]
                if cell is None:
                    continue
                error = [[cell["mean"] - cell["low"]], [cell["high"] - cell["mean"]]]
                ax.bar(x, cell["mean"], width=width * 0.92, color=colors[index],
                       yerr=error if cell["high"] - cell["low"] > 1e-9 else None, capsize=3,
                       label=label if group is family[0] and ax is axes[0] else None)
    for ax, (metric, title, ylabel) in zip(axes, _FREEZE_PANELS):
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("freeze strategy")
        ax.set_xticks(range(len(strategies)), strategies, rotation=20 if len(strategies) > 3 else 0)
        ax.grid(axis="y", alpha=0.3)
        if ylabel == RATE_LABEL:
            ax.set_ylim(0, 1.03)
        if not ax.patches:
            ax.text(0.5, 0.5, "not recorded\n(summary.json lacks it)", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
    heights = [patch.get_height() for patch in axes[2].patches if patch.get_height() > 0]
    if heights and max(heights) / min(heights) > 50:
        axes[2].set_yscale("log")
    where = " and ".join(POINT_NAME[point] for point in POINT_STYLE if point in point_used)
    fixed = _fixed([group for family in families.values() for group in family], "freeze", names)
    figure.suptitle(f"Freeze strategies: rates at the {where}, mean over seeds, bars: 95% interval"
                    + (f"\n{fixed}" if fixed else ""))
    if len(families) > 1:  # one family: the subtitle already names its settings
        _legend_below(figure, axes[0].get_legend_handles_labels()[0], 3)
    return _save(figure, path)


# --- 4. the forgetting ledger ----------------------------------------------------------------

# (metric, legend) from the bottom of a bar up: what fine-tuning kept, then how the rest was missed
_LEDGER_STACK = (
    ("ledger_retained", "retained"),
    ("ledger_stored_not_extracted", "stored, not extracted"),
    ("ledger_confident_wrong", "stored, confidently wrong"),
    ("ledger_lost", "lost (storage)"),
    ("ledger_never_stored", "never stored"),
)
# a bar's family (the other varying choices), when several
_HATCHES = ("", "//", "..", "xx", "\\\\", "--", "||", "oo", "++", "**")


def plot_ledger(groups: list[Group], varying: list[str], path: Path, names: Iterable[str]) -> Path | None:
    """Stacked mean shares of the held-out known facts by ledger category vs the unknown
    fraction, a panel per eval point, a hatch per setting of the other varying choices; None
    when no run kept a ledger."""
    numbered = [group for group in groups if is_number(group.choices["unknown_fraction"])]
    stats = {id(group): {point: group_stats(group, point) for point in POINT_STYLE} for group in numbered}
    points = [point for point in POINT_STYLE if any(stats[id(group)][point]["ledger_lost"] for group in numbered)]
    if not points:
        return None
    # runs without a ledger (ledger=false, a score mitigation's twins) get no empty bar
    groups = [group for group in numbered if any(stats[id(group)][point]["ledger_lost"] for point in points)]
    others = [name for name in varying if name != "unknown_fraction"]
    label = lambda group: describe(group.choices, others) or "all runs"  # noqa: E731
    labels = list(dict.fromkeys(label(group) for group in sorted(groups, key=lambda g: sort_key(g.choices, others))))
    fractions = sorted({group.choices["unknown_fraction"] for group in groups})
    share = lambda group: fractions.index(group.choices["unknown_fraction"])  # noqa: E731
    # a bar per group that exists, side by side within its fraction, a slot's gap between
    # fractions: a sweep that varies a mitigation at one share only gets no empty slots
    bars = sorted(groups, key=lambda g: (share(g), labels.index(label(g))))
    slots = [index + share(group) for index, group in enumerate(bars)]
    centers = [statistics.mean(x for x, group in zip(slots, bars) if share(group) == index)
               for index in range(len(fractions))]
    colors = _colors(len(_LEDGER_STACK))
    figure = Figure(figsize=(max(5.2, 0.55 * (len(bars) + len(fractions)) + 1.5) * len(points), 4.8),
                    layout="constrained")
    axes = figure.subplots(1, len(points), sharey=True, squeeze=False)[0]
    for ax, point in zip(axes, points):
        for x, group in zip(slots, bars):
            hatch = _HATCHES[labels.index(label(group)) % len(_HATCHES)]
            bottom = 0.0
            for (metric, _), color in zip(_LEDGER_STACK, colors):
                stat = stats[id(group)][point][metric]
                height = stat["mean"] if stat else 0.0
                ax.bar(x, height, 0.9, bottom=bottom, color=color, hatch=hatch, edgecolor="white")
                bottom += height
        ax.set_title(POINT_NAME[point])
        ax.set_xticks(centers, [f"{fraction:g}" for fraction in fractions])
        ax.set_xlabel(_X_AXES["unknown_fraction"][0])
        ax.set_ylim(0, 1.03)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("share of held-out known facts")
    handles = [Patch(color=color, label=name) for (_, name), color in zip(_LEDGER_STACK, colors)]
    if len(labels) > 1:
        handles += [Patch(facecolor="lightgray", hatch=_HATCHES[i % len(_HATCHES)], label=text)
                    for i, text in enumerate(labels)]
    fixed = _fixed(groups, "unknown_fraction", names)
    figure.suptitle("Forgetting ledger: held-out known facts after fine-tuning (mean over seeds)"
                    + (f"\n{fixed}" if fixed else ""))
    _legend_below(figure, handles, 5)
    return _save(figure, path)


def plot_risk_coverage(
    curves: dict[str, list[tuple[float, float]]], kb_point: tuple[float, float] | None, path: Path
) -> Path:
    """Risk (hallucination rate among the answers given) vs coverage (share of answers given),
    a line per uncertainty score, the KB verifier as a point."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    figure = Figure(figsize=(6.4, 4.8))
    axes = figure.add_subplot()
    for (name, points), color in zip(curves.items(), _colors(len(curves))):
        axes.plot([coverage for coverage, _ in points], [risk for _, risk in points], label=name, color=color)
    if kb_point is not None:
        axes.plot(*kb_point, marker="*", markersize=14, linestyle="", color="black", label="kb_verify (abstain)")
    axes.set_xlabel("coverage (share of answers given, the surest first)")
    axes.set_ylabel("hallucination rate among the answers given")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    axes.set_title("Selective answering: risk vs coverage")
    return _save(figure, path)
