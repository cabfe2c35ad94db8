"""The rich tables of halluc score: the scores of prediction files, and a sweep of runs.

A number of several files (seeds) reads as its mean and 95% interval. The sweep's table, sent
to a log or a pipe, is printed whole, a line per row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from halluc_cli.config import SLICK_CATEGORIES
from halluc_cli.console import console
from halluc_cli.rundir import EVAL_POINTS
from halluc_cli.scoring import aggregate

# --- a sweep of runs (runs=) ---------------------------------------------------------------

# The table's rates (summary.csv has every one, overall abstention too).
_SWEEP_COLUMNS = {
    "known_accuracy": "acc\nknown",
    "unknown_accuracy": "acc\nunknown",
    "known_hallucination_rate": "halluc.\nknown",
    "unknown_hallucination_rate": "halluc.\nunknown",
    "hallucination_rate": "halluc.\nall",
    "unknown_abstention_rate": "abstain\nunknown",
}


def print_sweep(sweep: aggregate.Sweep) -> None:
    """A row per group and eval point: the choices that vary, seeds, then each rate as
    mean [95% interval] over seeds."""
    varying = sweep.varying()
    fixed = aggregate.describe(sweep.groups[0].choices, [name for name in aggregate.CHOICES if name not in varying])
    trained = len(sweep.runs) - sweep.verified_twins
    twins = f" (+ {sweep.verified_twins} again under the score mitigation)" if sweep.verified_twins else ""
    table = Table(title=f"{trained} finetune runs{twins} in {len(sweep.groups)} groups, "
                        "mean \\[95% interval] over seeds" + (f"; all runs: {escape(fixed)}" if fixed else ""))
    for name in varying:
        table.add_column(name.replace("_", " "), overflow="fold")  # fold: a narrow terminal hides nothing
    table.add_column("eval", overflow="fold")
    table.add_column("seeds", justify="right")
    columns = dict(_SWEEP_COLUMNS)
    if any("verification" in scores for run in sweep.runs for scores in run.scores.values()):
        columns["verifier_precision"] = "verifier\nprecision"
    probed = {category for run in sweep.runs for scores in run.scores.values() for category in scores.get("by_category", {})}
    for category in SLICK_CATEGORIES:  # data.known_from=probe: accuracy per SliCK category
        if category in probed:
            columns[f"{category}_accuracy"] = f"acc\n{category}"
    for header in columns.values():
        table.add_column(header, justify="right", overflow="fold")
    for group in sweep.groups:
        for point in EVAL_POINTS:
            stats = aggregate.group_stats(group, point)
            if not stats["n_seeds"]:
                continue
            choices = [f"{group.choices[name]:g}" if isinstance(group.choices[name], float)
                       else escape(str(group.choices[name])) for name in varying]
            cells = [_interval_cell(stats[metric]) for metric in columns]
            table.add_row(*choices, point, str(stats["n_seeds"]), *cells)
    if console.is_terminal:
        console.print(table)  # fitted to the terminal, intervals wrapped onto more lines
    else:  # a log or a pipe gets the table whole, a line per row
        width = Console(width=1000).measure(table).maximum
        Console(file=console.file, width=width, soft_wrap=True).print(table)


def _interval_cell(stat: Mapping[str, float] | None) -> str:
    """"0.750" for one seed, "0.750 [0.432, 1.068]" (the interval on a second line) for several."""
    if stat is None:
        return "-"
    if stat["n"] > 1:
        return f"{stat['mean']:.3f}\n[{stat['low']:.3f}, {stat['high']:.3f}]"
    return f"{stat['mean']:.3f}"


# --- prediction files (predictions=) -------------------------------------------------------

_SELECTION_ROWS = ("threshold", "withheld", "withheld_wrong", "coverage")
_VERIFIER_ROWS = ("supported", "contradicted", "unverifiable", "abstained", "precision", "recall")
_FACTSCORE_ROWS = ("n", "responses_with_claims", "claims", "supported", "contradicted", "unverifiable", "factscore")
_RATES = ("precision", "recall", "factscore", "error_rate", "accuracy")
_QA_COLUMNS = {
    "accuracy": "accuracy",
    "abstention_rate": "abstention",
    "hallucination_rate": "halluc./all",
    "hallucination_rate_answered": "halluc./answered",
}


def print_scores(scores: dict[str, Any], cfg: DictConfig) -> None:
    """The mean scores over the files: QA by group (before -> after verification under
    kb_verify), FActScore for free text, errors and confusion for classification."""
    mean, seeds = scores["mean"], scores["seeds"]
    title = f"score {cfg.task}: 1 file" if seeds == 1 else f"score {cfg.task}: {seeds} files, mean ± 95% interval"
    verify = cfg.mitigation.name == "kb_verify"
    if cfg.task == "qa" and verify:
        _print_qa(title, mean["before"], mean["after"])
        _print_rows(f"verifier (policy={cfg.mitigation.policy})", _VERIFIER_ROWS, {"value": mean["verification"]})
    elif cfg.task == "qa" and "selection" in mean:
        _print_qa(title, mean["before"], mean["after"], step="selective answering")
        rule = f"selective answering ({cfg.mitigation.estimator} above the threshold chosen on {cfg.mitigation.calibration})"
        _print_rows(rule, _SELECTION_ROWS, {"value": mean["selection"]})
    elif cfg.task == "qa":
        _print_qa(title, mean)
    elif cfg.task == "freetext":
        columns = {"before": mean["before"], "after": mean["after"]} if verify else {"value": mean}
        _print_rows(f"{title}: FActScore", _FACTSCORE_ROWS, columns)
    else:
        _print_classification(title, mean)
    if "detection" in mean:  # the predictions carry uncertainty scores
        _print_detection(mean["detection"])


def _print_qa(
    title: str, before: Mapping[str, Any], after: Mapping[str, Any] | None = None, step: str = "verification"
) -> None:
    """Rows: overall, known, unknown, each relation, each SliCK category (data.known_from=probe);
    with `after`, cells read before -> after."""
    table = Table(title=title + (f": before -> after {step}" if after else ""))
    for header in ("group", "n", *_QA_COLUMNS.values()):
        table.add_column(header, justify="left" if header == "group" else "right")
    groups = {"overall": ("overall",)}
    groups.update({key: ("by_known", key) for key in before["by_known"]})
    groups.update({f"relation {key}": ("by_relation", key) for key in before["by_relation"]})
    groups.update({f"category {key}": ("by_category", key) for key in before.get("by_category", {})})
    for label, keys in groups.items():
        row = _dig(before, keys)
        cells = [_cell(row.get(column)) for column in _QA_COLUMNS]
        if after is not None:
            row_after = _dig(after, keys)
            cells = [f"{cell} -> {_cell(row_after.get(column))}" for cell, column in zip(cells, _QA_COLUMNS)]
        table.add_row(label, _cell(row.get("n"), count=True), *cells)
    console.print(table)


def _print_detection(detection: Mapping[str, Any]) -> None:
    """A row per uncertainty score: how well it ranks wrong answers above right ones (ROC-AUC,
    PRR), its calibration where it is a probability (ECE), and how well it tells questions
    about unknown facts from known ones."""
    table = Table(title="uncertainty scores as hallucination detectors (higher score = less sure)")
    for header in ("score", "ROC-AUC\nwrong vs right", "PRR", "ECE", "ROC-AUC\nunknown vs known"):
        table.add_column(header, justify="left" if header == "score" else "right")
    for name, judged in detection["estimators"].items():
        overall = judged.get("overall", {})
        table.add_row(
            name,
            *(_cell(value) for value in (overall.get("roc_auc"), overall.get("prr"), judged.get("ece"),
                                         judged.get("known_vs_unknown_roc_auc"))),
        )
    console.print(table)


def _print_rows(title: str, metrics: tuple[str, ...], columns: Mapping[str, Mapping[str, Any]]) -> None:
    """A table with one row per metric and one column per entry of `columns`."""
    table = Table(title=title)
    table.add_column("metric")
    for header in columns:
        table.add_column(header, justify="right")
    for metric in metrics:
        count = metric not in _RATES
        table.add_row(metric, *(_cell(column.get(metric), count) for column in columns.values()))
    console.print(table)


def _print_classification(title: str, mean: Mapping[str, Any]) -> None:
    _print_rows(title, ("n", "error_rate", "accuracy"), {"value": mean})
    labels = list(mean["confusion"])
    predicted = list(dict.fromkeys(key for row in mean["confusion"].values() for key in row))
    table = Table(title="confusion (rows: label, columns: prediction) and per-class error rate")
    table.add_column("label")
    for header in (*predicted, "error rate"):
        table.add_column(header, justify="right")
    for label in labels:
        row = mean["confusion"][label]
        counts = [_cell(row.get(key), count=True) for key in predicted]
        table.add_row(label, *counts, _cell(mean["by_class"][label]["error_rate"]))
    console.print(table)


def _dig(tree: Mapping[str, Any], keys: tuple[str, ...]) -> Mapping[str, Any]:
    for key in keys:
        tree = tree.get(key, {})
    return tree


def _cell(stat: Mapping[str, float] | None, count: bool = False) -> str:
    """A mean (a count as an integer when it is one), with its interval's half-width when it
    comes from several seeds; "-" where there is no value (e.g. nothing answered)."""
    if stat is None:
        return "-"
    mean = stat["mean"]
    text = f"{mean:g}" if count and float(mean).is_integer() else f"{mean:.3f}"
    if stat["n"] > 1 and stat["high"] > stat["low"]:
        text += f" ± {(stat['high'] - stat['low']) / 2:.3f}"
    return text
