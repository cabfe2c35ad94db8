"""The rich tables of halluc score: the scores of prediction files, and a sweep of runs.

A number of several files (seeds) reads as its mean and 95% interval. The sweep's tables fit
`console.table_width` (100 columns): as many key metrics as fit, the rest in the CSV files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from halluc_cli.console import console, print_fitted, table_width
from halluc_cli.scoring import aggregate

# --- a sweep of runs (runs=) ---------------------------------------------------------------

FOLDED = 24  # the widest a column of settings grows before it folds onto more lines


def print_sweep(sweep: aggregate.Sweep, rows: list[dict[str, Any]]) -> None:
    """The summary rows (`aggregate.summary_rows`): a row per group and eval point, the choices
    that vary, replicates and seeds, then each key metric as mean and 95% interval."""
    print_fitted(sweep_table(sweep, rows, table_width()))


def sweep_table(sweep: aggregate.Sweep, rows: list[dict[str, Any]], width: int) -> Table:
    """The summary table with the key metrics (METRICS with a header, in priority order) that
    any row has and that fit `width` columns."""
    varying = sweep.varying()
    fixed = aggregate.describe(sweep.groups[0].choices, [name for name in sweep.names if name not in varying])
    trained = len(sweep.runs) - sweep.verified_twins
    twins = f" (+ {sweep.verified_twins} again under the score mitigation)" if sweep.verified_twins else ""
    title = (f"{trained} finetune runs{twins} in {len(sweep.groups)} groups: mean, 95% interval below "
             f"({interval_basis(rows)}); all columns in summary.csv" + (f"; all runs: {escape(fixed)}" if fixed else ""))

    def build(metrics: Sequence[str]) -> Table:
        table = Table(title=title)
        for name in varying:
            # fold: a long setting wraps, hides nothing, and leaves room for the metrics
            table.add_column(header(name), overflow="fold", max_width=FOLDED)
        table.add_column("eval", overflow="fold")
        table.add_column("pre-\ntrained", justify="right")  # pretraining replicates
        table.add_column("seeds", justify="right")
        for metric in metrics:
            table.add_column(aggregate.METRICS[metric].header, justify="right", no_wrap=True)
        for row in rows:
            several = row["n_runs"] > 1
            cells = [interval_cell(row, metric, several) for metric in metrics]
            table.add_row(*(choice_cell(row[name]) for name in varying), row["eval"], str(row["n_replicates"]),
                          str(row["n_seeds"]), *cells)
        return table

    abstaining = any(row["abstention_rate_mean"] for row in rows)
    shown = [name for name, metric in aggregate.METRICS.items()
             if metric.header and any(row[f"{name}_mean"] is not None for row in rows)
             and (abstaining or not metric.abstaining)]
    return _fitted(build, shown, width)


def print_effects(sweep: aggregate.Sweep, rows: list[dict[str, Any]]) -> None:
    """The effect rows (`aggregate.effect_rows`): each setting's value against its baseline,
    the paired differences of the key metrics, mean and 95% interval."""
    if rows:
        print_fitted(effects_table(sweep, rows, table_width()))


def effects_table(sweep: aggregate.Sweep, rows: list[dict[str, Any]], width: int) -> Table:
    """The effects table with the EFFECTS metrics any row has that fit `width` columns."""
    varying = sweep.varying()
    title = ("Effects: value minus baseline, paired on pretraining replicate and seed: mean, 95% interval below; "
             "all in effects.csv")

    def build(metrics: Sequence[str]) -> Table:
        table = Table(title=title)
        table.add_column("setting: baseline -> value", overflow="fold", max_width=FOLDED)
        table.add_column("with", overflow="fold", max_width=FOLDED)
        table.add_column("eval", overflow="fold")
        table.add_column("pairs", justify="right")
        for metric in metrics:
            table.add_column("diff " + aggregate.METRICS[metric].header, justify="right", no_wrap=True)
        for row in rows:
            change = f"{row['setting']}: {choice_cell(row['baseline'])} -> {choice_cell(row['value'])}"
            context = escape(aggregate.describe(row, [name for name in varying if name != row["setting"]]))
            cells = [interval_cell(row, f"{metric}_diff", row["n_pairs"] > 1, signed=True) for metric in metrics]
            table.add_row(change, context, row["eval"], str(row["n_pairs"]), *cells)
        return table

    # an over-refusal metric where some setting changes it (never, where nothing abstains)
    shown = [name for name in aggregate.EFFECTS
             if any(row[f"{name}_diff_mean"] is not None for row in rows)
             and (not aggregate.METRICS[name].abstaining or any(row[f"{name}_diff_mean"] for row in rows))]
    return _fitted(build, shown, width)


def _fitted(build: Callable[[Sequence[str]], Table], metrics: list[str], width: int) -> Table:
    """The table of the most metrics (the first of `metrics`) whose natural width fits
    `width`; at least one, its other columns then folded to fit."""
    for count in range(len(metrics), 1, -1):
        table = build(metrics[:count])
        if Console(width=10_000).measure(table).maximum <= width:
            return table
    return build(metrics[:1])


def interval_basis(rows: list[dict[str, Any]]) -> str:
    """What the intervals are over: replicates where a row has several, else seeds."""
    if any(row["n_replicates"] > 1 for row in rows):
        return "over pretraining replicates, each the mean of its seeds"
    return "over fine-tuning seeds of one pretrained model"


def header(name: str) -> str:
    """A choice's column header: unknown_fraction -> "unknown\nfraction", train.lr -> "train\nlr"."""
    return name.replace("_", "\n").replace(".", "\n")


def choice_cell(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else escape(str(value))


def interval_cell(row: Mapping[str, Any], name: str, several: bool, signed: bool = False, below: str = "\n") -> str:
    """"0.750" over one run or runs that agree; over several that differ, "0.750" and
    "[0.43, 1.00]" (its interval) after `below`; "-" without a value. `signed`: "+0.120" (a
    difference)."""
    mean = row[f"{name}_mean"]
    if mean is None:
        return "-"
    sign = "+" if signed else ""
    text = f"{mean:{sign}.3f}"
    if several and row[f"{name}_high"] > row[f"{name}_low"]:  # seeds that agree: the mean is all
        text += f"{below}[{row[f'{name}_low']:{sign}.2f}, {row[f'{name}_high']:{sign}.2f}]"
    return text


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
    print_fitted(table)


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
    print_fitted(table)


def _print_rows(title: str, metrics: tuple[str, ...], columns: Mapping[str, Mapping[str, Any]]) -> None:
    """A table with one row per metric and one column per entry of `columns`."""
    table = Table(title=title)
    table.add_column("metric")
    for header in columns:
        table.add_column(header, justify="right")
    for metric in metrics:
        count = metric not in _RATES
        table.add_row(metric, *(_cell(column.get(metric), count) for column in columns.values()))
    print_fitted(table)


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
    print_fitted(table)


def _dig(tree: Mapping[str, Any], keys: tuple[str, ...]) -> Mapping[str, Any]:
    for key in keys:
        tree = tree.get(key, {})
    return tree


def _cell(stat: Mapping[str, float] | None, count: bool = False) -> str:
    """A mean (a count as an integer when it is one), with its 95% interval when it comes
    from several seeds that differ; "-" where there is no value (e.g. nothing answered)."""
    if stat is None:
        return "-"
    mean = stat["mean"]
    text = f"{mean:g}" if count and float(mean).is_integer() else f"{mean:.3f}"
    if stat["n"] > 1 and stat["high"] > stat["low"]:  # a rate's interval is clipped: not symmetric
        text += f" [{stat['low']:.2f}, {stat['high']:.2f}]"
    return text
