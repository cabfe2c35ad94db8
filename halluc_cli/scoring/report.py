"""report.md of a gathered sweep (`halluc score runs=...`): its tables and plots on one page,
to read, share and commit beside the CSV files it summarises.

The tables are those of `scoring/tables.py`, as markdown and with every key metric (a page
has no terminal width); summary.csv, effects.csv and runs.csv hold every number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from halluc_cli.io import atomic_write_text
from halluc_cli.rundir import SWEEP_EFFECTS_FILE, SWEEP_RUNS_FILE, SWEEP_SUMMARY_FILE
from halluc_cli.scoring import aggregate
from halluc_cli.scoring.tables import interval_basis, interval_cell

INTERVALS = (
    "Intervals are 95% Student-t intervals (scipy) of the mean: over the pretraining replicates, each "
    "the mean of its fine-tuning seeds, when a row has several replicates (the seeds of one pretrained "
    "model share its split and weights, so they are not independent repeats of the experiment); else "
    "over the fine-tuning seeds, for that pretrained model only. A rate's interval is clipped to [0, 1] "
    "and a difference of rates to [-1, 1]: with 2 seeds a t-interval spans 12.7 standard errors each "
    "side, and clipping keeps its coverage where it would leave the possible values."
)


def write_report(
    path: Path,
    sweep: aggregate.Sweep,
    summary: list[dict[str, Any]],
    effects: list[dict[str, Any]],
    plots: Iterable[Path],
) -> Path:
    """report.md at `path`: what was gathered, the summary and effects tables, the plots (as
    links relative to the report), and the files with every number."""
    varying = sweep.varying()
    fixed = aggregate.describe(sweep.groups[0].choices, [name for name in sweep.names if name not in varying])
    trained = len(sweep.runs) - sweep.verified_twins
    lines = [
        f"# Sweep of {trained} finetune runs in {len(sweep.groups)} groups",
        "",
        *([f"All runs: {fixed}.", ""] if fixed else []),
        f"Mean, with its 95% interval in brackets ({interval_basis(summary)}). {INTERVALS}",
        "",
        "## Results",
        "",
        *_summary_table(summary, varying),
    ]
    if effects:
        lines += ["", "## Effects", "",
                  "Each setting's value minus its baseline (the first value: share 0, mitigation none), the "
                  "other settings equal, paired on the pretraining replicate and the fine-tuning seed.", "",
                  *_effects_table(effects, varying)]
    lines += ["", "## Plots", ""]
    lines += [f"![{plot.stem}]({plot.name})" for plot in plots] or ["(none: the sweep varies nothing a plot compares)"]
    lines += ["", "## Files", "",
              f"- [{SWEEP_SUMMARY_FILE}]({SWEEP_SUMMARY_FILE}): every metric and cost of each group, mean, low, high",
              f"- [{SWEEP_EFFECTS_FILE}]({SWEEP_EFFECTS_FILE}): every paired difference, mean, low, high",
              f"- [{SWEEP_RUNS_FILE}]({SWEEP_RUNS_FILE}): every run, its dir, replicate, seed and numbers"]
    if sweep.skipped or sweep.notes:
        lines += ["", "## Notes", "", *(f"- skipped {where}: {why}" for where, why in sweep.skipped),
                  *(f"- {note}" for note in sweep.notes)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _summary_table(rows: list[dict[str, Any]], varying: list[str]) -> list[str]:
    metrics = [name for name, metric in aggregate.METRICS.items()
               if metric.header and any(row[f"{name}_mean"] is not None for row in rows)]
    headers = [*varying, "eval", "pretrained", "seeds", *(_flat(aggregate.METRICS[name].header) for name in metrics)]
    body = [[*(_value(row[name]) for name in varying), row["eval"], row["n_replicates"], row["n_seeds"],
             *(interval_cell(row, name, row["n_runs"] > 1, below=" ") for name in metrics)] for row in rows]
    return _markdown(headers, body)


def _effects_table(rows: list[dict[str, Any]], varying: list[str]) -> list[str]:
    metrics = [name for name in aggregate.EFFECTS if any(row[f"{name}_diff_mean"] is not None for row in rows)]
    headers = ["setting", "baseline", "value", "with", "eval", "pairs",
               *(f"diff {_flat(aggregate.METRICS[name].header)}" for name in metrics)]
    body = [[row["setting"], _value(row["baseline"]), _value(row["value"]),
             aggregate.describe(row, [name for name in varying if name != row["setting"]]), row["eval"],
             row["n_pairs"], *(interval_cell(row, f"{name}_diff", row["n_pairs"] > 1, True, " ") for name in metrics)]
            for row in rows]
    return _markdown(headers, body)


def _markdown(headers: Sequence[Any], body: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table; a "|" inside a cell escaped."""
    line = lambda cells: "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"  # noqa: E731
    return [line(headers), line(["---"] * len(headers)), *(line(cells) for cells in body)]


def _flat(header: str) -> str:
    return header.replace("\n", " ")


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)

