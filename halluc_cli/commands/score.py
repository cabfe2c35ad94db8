"""`halluc score`: hallucination metrics of prediction files, optionally verified against a KB.

check settings -> read and check every prediction file (and its ids against `questions`) ->
per file: (KB verification) -> metrics -> mean and 95% interval over the files (seeds) ->
scores.json (+ predictions_verified.jsonl) in the run dir -> rich tables.
Nothing is written until every input has been read and found valid.
Or `runs=`: gather a sweep of finetune runs (their eval/*/scores.json) into summary.csv,
runs.csv, PNG plots and a table, mean and 95% interval over seeds.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from halluc_cli.commands.common import console, start_run
from halluc_cli.commands.generate import PREDICTIONS_FILE
from halluc_cli.data.kb import load_kb
from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from halluc_cli.scoring import aggregate
from halluc_cli.scoring.metrics import aggregate_seeds, classification_metrics, score_predictions
from halluc_cli.scoring.verify import KBVerifier, verification_summary

MITIGATIONS = ("none", "kb_verify")
# The fields each task reads, with the JSON types they may hold.
FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "qa": {
        "id": (str, int), "question": (str,), "prediction": (str,), "answer": (str,),
        "known": (bool,), "abstained": (bool,),
    },
    "classification": {"id": (str, int), "prediction": (str, int, bool), "label": (str, int, bool)},
    "freetext": {"id": (str, int), "prompt": (str,), "prediction": (str,)},
}
_JSON_TYPE = {str: "a string", int: "a number", bool: "true or false"}
_EXAMPLES = 3  # ids named in an id-mismatch error


def run(cfg: DictConfig) -> None:
    """Score the configured prediction files (or gather `runs`); results land in the run dir."""
    _check_settings(cfg)
    if cfg.runs is not None:
        _gather_runs(cfg)
        return
    files = _read_inputs(cfg)
    verifier = None if cfg.task == "classification" else _kb_verifier(cfg)

    run_dir = start_run(cfg)
    per_file = []
    for index, (path, records) in enumerate(files.items()):
        metrics, verified = _score_file(records, cfg, verifier)
        entry: dict[str, Any] = {"file": str(path), "metrics": metrics}
        if verified is not None:
            name = "predictions_verified.jsonl" if len(files) == 1 else f"predictions_verified_{index}.jsonl"
            atomic_write_jsonl(run_dir / name, verified)
            entry["verified_predictions"] = name
        per_file.append(entry)
    scores = {
        "task": cfg.task,
        "mitigation": OmegaConf.to_container(cfg.mitigation, resolve=True),
        "seeds": len(per_file),
        "interval": _interval_note(len(per_file)),
        "mean": aggregate_seeds([entry["metrics"] for entry in per_file]),
        "files": per_file,
    }
    atomic_write_json(run_dir / "scores.json", scores)
    _print_scores(scores, cfg)


def _check_settings(cfg: DictConfig) -> None:
    """Reject settings that cannot work together before reading any file."""
    if cfg.predictions is None and cfg.runs is None:
        raise UserError("give predictions=<file.jsonl> or runs=<multirun dir>")
    if cfg.predictions is not None and cfg.runs is not None:
        raise UserError("give predictions=<file.jsonl> or runs=<multirun dir>, not both")
    if cfg.runs is not None and cfg.task != "qa":
        raise UserError("runs= gathers the QA scores finetune wrote; drop task= (it applies to predictions=)")
    if cfg.task not in FIELDS:
        raise UserError(f"task={cfg.task} is not a scoring task; use task=qa, classification or freetext")
    name = cfg.mitigation.name
    if name not in MITIGATIONS:
        raise UserError(f"mitigation={name} does not apply to halluc score; use mitigation=none or kb_verify")
    if name == "kb_verify" and cfg.task == "classification":
        raise UserError(
            "mitigation=kb_verify checks answers against the KB; with task=classification use mitigation=none"
        )


# --- reading and checking inputs ---------------------------------------------------------


def _read_inputs(cfg: DictConfig) -> dict[Path, list[dict[str, Any]]]:
    """Every prediction file's records, checked, and their ids against `questions` when given."""
    files = {path: read_predictions(path, cfg.task) for path in prediction_files(cfg.predictions)}
    if cfg.questions is not None:
        ids = question_ids(Path(cfg.questions))
        for path, records in files.items():
            check_ids(records, ids, path, Path(cfg.questions))
    return files


def prediction_files(spec: Any) -> list[Path]:
    """The files `predictions=` names: one path or glob, or a list of them, in sorted order per glob."""
    patterns = [spec] if isinstance(spec, str) else [str(item) for item in spec]
    if not patterns:
        raise UserError("predictions=[] names no file; give predictions=<file.jsonl> (or a glob, or a list)")
    paths: list[Path] = []
    for pattern in patterns:
        if _is_glob(pattern):
            matches = [Path(match) for match in sorted(glob.glob(pattern, recursive=True))]
        else:
            matches = [Path(pattern)]
        if not matches:
            raise UserError(f"predictions={pattern} matches no file; check the glob")
        paths += matches
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such file (check predictions=)")
    return list(dict.fromkeys(paths))  # a file named twice is one seed, not two


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def read_predictions(path: Path, task: str) -> list[dict[str, Any]]:
    """The prediction records of a JSONL file, each checked for the fields `task` reads."""
    records = []
    seen: dict[str, int] = {}
    for lineno, record in read_jsonl(path):
        where = f"{path} line {lineno}"
        _check_fields(record, task, where)
        key = str(record["id"])
        if key in seen:
            raise UserError(f"{where}: id {key} repeats line {seen[key]}; each prediction needs its own id")
        seen[key] = lineno
        records.append(record)
    if not records:
        raise UserError(f"{path}: the file holds no predictions; run halluc generate first or check the path")
    return records


def _check_fields(record: dict[str, Any], task: str, where: str) -> None:
    """Fail unless `record` has every field `task` reads, each of an accepted JSON type."""
    fields = FIELDS[task]
    for field, types in fields.items():
        if field not in record:
            raise UserError(f"{where}: missing field '{field}' (task={task} predictions need {', '.join(fields)})")
        value = record[field]
        # JSON true/false load as bool, a subclass of int: accepted only where a bool is meant
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            kinds = " or ".join(_JSON_TYPE[kind] for kind in types)
            raise UserError(f"{where}: field '{field}' must be {kinds}, not {type(value).__name__}")
    aliases = record.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(alias, str) for alias in aliases):
        raise UserError(f'{where}: field \'aliases\' must be a list of strings, e.g. ["Brasilia"]')


def question_ids(path: Path) -> list[str]:
    """The ids of a QA JSONL file, as strings."""
    ids = []
    for lineno, record in read_jsonl(path):
        if "id" not in record:
            raise UserError(f"{path} line {lineno}: missing field 'id' (each question needs one)")
        ids.append(str(record["id"]))
    if not ids:
        raise UserError(f"{path}: the questions file holds no questions; check questions=")
    return ids


def check_ids(records: list[dict[str, Any]], ids: list[str], path: Path, questions: Path) -> None:
    """Fail, naming a few ids, unless the predictions answer exactly the questions."""
    predicted = [str(record["id"]) for record in records]
    extra = sorted(set(predicted) - set(ids))
    missing = sorted(set(ids) - set(predicted))
    problems = []
    if extra:
        problems.append(f"{len(extra)} ids not among the questions ({_some(extra)})")
    if missing:
        problems.append(f"{len(missing)} questions without a prediction ({_some(missing)})")
    if problems:
        raise UserError(
            f"{path}: prediction ids do not match {questions}: {'; '.join(problems)}; "
            "score the predictions generated for this questions file"
        )


def _some(ids: list[str]) -> str:
    more = f", ... {len(ids) - _EXAMPLES} more" if len(ids) > _EXAMPLES else ""
    return ", ".join(ids[:_EXAMPLES]) + more


# --- scoring one file --------------------------------------------------------------------


def _score_file(
    records: list[dict[str, Any]], cfg: DictConfig, verifier: KBVerifier | None
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """The metrics of one file and, under kb_verify, its verified records (no verifier:
    classification, which needs no KB)."""
    verify = cfg.mitigation.name == "kb_verify"
    if verifier is None:
        return classification_metrics(records), None
    kb = verifier.kb
    if cfg.task == "freetext":
        if not verify:
            return verifier.factscore(records), None
        verified = verifier.apply_claim_policy(records, cfg.mitigation.policy)
        return {"before": verifier.factscore(records), "after": verifier.factscore(verified)}, verified
    records = _with_subjects(records, verifier)
    if not verify:
        return score_predictions(records, kb), None
    verified = verifier.apply_policy(records, cfg.mitigation.policy)
    metrics = {
        "before": score_predictions(records, kb),
        "after": score_predictions(verified, kb),
        "verification": verification_summary(verified, kb),
    }
    return metrics, verified


def _with_subjects(records: list[dict[str, Any]], verifier: KBVerifier) -> list[dict[str, Any]]:
    """Records given the subject and relation their question names, when they lack them, so
    that free questions count in by_relation and are verified once."""
    located = []
    for record in records:
        found = None if record.get("relation") else verifier.locate(record)
        located.append({**record, "subject": found[0], "relation": found[1]} if found else record)
    return located


def _interval_note(seeds: int) -> str:
    if seeds == 1:
        return "one prediction file: each interval is the value itself (give several files for a 95% interval)"
    return f"mean and 95% t-interval (low, high) over {seeds} prediction files"


# --- gathering finetune runs -------------------------------------------------------------


def _gather_runs(cfg: DictConfig) -> None:
    """Every run `cfg.runs` names -> summary.csv, runs.csv, plots and a table in the run dir."""
    from halluc_cli.scoring.plots import draw_plots  # matplotlib: imported only when plotting

    sweep = aggregate.gather(cfg.runs)
    if cfg.mitigation.name == "kb_verify":
        verify = _eval_point_verifier(cfg)
        sweep = aggregate.with_verified_runs(sweep, verify, f"kb_verify({cfg.mitigation.policy})")
    for path, why in sweep.skipped:
        console.print(f"[yellow]warning[/yellow]: skipped {path}: {why}", highlight=False)
    for note in sweep.notes:
        console.print(f"[yellow]warning[/yellow]: {note}", highlight=False)
    run_dir = start_run(cfg)
    aggregate.write_csv(run_dir / aggregate.SUMMARY_FILE, aggregate.summary_rows(sweep.groups),
                        aggregate.SUMMARY_COLUMNS)
    aggregate.write_csv(run_dir / aggregate.RUNS_FILE, aggregate.run_rows(sweep.runs), aggregate.RUN_COLUMNS)
    _print_sweep(sweep)
    plots, notes = draw_plots(sweep, run_dir)
    for name in (aggregate.SUMMARY_FILE, aggregate.RUNS_FILE):
        console.print(f"[bold]wrote[/bold] {run_dir / name}", highlight=False)
    for path in plots:
        console.print(f"[bold]plot[/bold] {path}", highlight=False)
    for note in notes:
        console.print(f"no plot {note}", highlight=False)


def _kb_verifier(cfg: DictConfig) -> KBVerifier:
    """The verifier of `kb=`: its facts and the templates that locate a question's fact."""
    return KBVerifier(load_kb(cfg.kb.path), OmegaConf.to_container(cfg.kb.relations), cfg.abstain_phrase)


def _eval_point_verifier(cfg: DictConfig) -> Callable[[Path], dict[str, Any]]:
    """Scores of a finetune run's eval/<point>/ test answers after KB verification."""
    verifier = _kb_verifier(cfg)

    def verify(point_dir: Path) -> dict[str, Any]:
        records = read_predictions(point_dir / PREDICTIONS_FILE, "qa")
        verified = verifier.apply_policy(records, cfg.mitigation.policy)
        return {**score_predictions(verified, verifier.kb), "verification": verification_summary(verified, verifier.kb)}

    return verify


# The table's rates (summary.csv has every one, overall abstention too).
_SWEEP_COLUMNS = {
    "known_accuracy": "acc\nknown",
    "unknown_accuracy": "acc\nunknown",
    "known_hallucination_rate": "halluc.\nknown",
    "unknown_hallucination_rate": "halluc.\nunknown",
    "hallucination_rate": "halluc.\nall",
    "unknown_abstention_rate": "abstain\nunknown",
}


def _print_sweep(sweep: aggregate.Sweep) -> None:
    """A row per group and eval point: the choices that vary, seeds, then each rate as
    mean [95% interval] over seeds."""
    varying = sweep.varying()
    fixed = aggregate.describe(sweep.groups[0].choices, [name for name in aggregate.CHOICES if name not in varying])
    trained = len(sweep.runs) - sweep.verified_twins
    twins = f" (+ {sweep.verified_twins} verified against the KB)" if sweep.verified_twins else ""
    table = Table(title=f"{trained} finetune runs{twins} in {len(sweep.groups)} groups, "
                        "mean \\[95% interval] over seeds" + (f"; all runs: {escape(fixed)}" if fixed else ""))
    for name in varying:
        table.add_column(name.replace("_", " "), overflow="fold")  # fold: a narrow terminal hides nothing
    table.add_column("eval", overflow="fold")
    table.add_column("seeds", justify="right")
    columns = dict(_SWEEP_COLUMNS)
    if any("verification" in scores for run in sweep.runs for scores in run.scores.values()):
        columns["verifier_precision"] = "verifier\nprecision"
    for header in columns.values():
        table.add_column(header, justify="right", overflow="fold")
    for group in sweep.groups:
        for point in aggregate.EVAL_POINTS:
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


# --- tables ------------------------------------------------------------------------------

_VERIFIER_ROWS = ("supported", "contradicted", "unverifiable", "abstained", "precision", "recall")
_FACTSCORE_ROWS = ("n", "responses_with_claims", "claims", "supported", "contradicted", "unverifiable", "factscore")
_RATES = ("precision", "recall", "factscore", "error_rate", "accuracy")
_QA_COLUMNS = {
    "accuracy": "accuracy",
    "abstention_rate": "abstention",
    "hallucination_rate": "halluc./all",
    "hallucination_rate_answered": "halluc./answered",
}


def _print_scores(scores: dict[str, Any], cfg: DictConfig) -> None:
    mean, seeds = scores["mean"], scores["seeds"]
    title = f"score {cfg.task}: 1 file" if seeds == 1 else f"score {cfg.task}: {seeds} files, mean ± 95% interval"
    verify = cfg.mitigation.name == "kb_verify"
    if cfg.task == "qa" and verify:
        _print_qa(title, mean["before"], mean["after"])
        _print_rows(f"verifier (policy={cfg.mitigation.policy})", _VERIFIER_ROWS, {"value": mean["verification"]})
    elif cfg.task == "qa":
        _print_qa(title, mean)
    elif cfg.task == "freetext":
        columns = {"before": mean["before"], "after": mean["after"]} if verify else {"value": mean}
        _print_rows(f"{title}: FActScore", _FACTSCORE_ROWS, columns)
    else:
        _print_classification(title, mean)


def _print_qa(title: str, before: Mapping[str, Any], after: Mapping[str, Any] | None = None) -> None:
    """Rows: overall, known, unknown, each relation; with `after`, cells read before -> after."""
    table = Table(title=title + (": before -> after verification" if after else ""))
    for header in ("group", "n", *_QA_COLUMNS.values()):
        table.add_column(header, justify="left" if header == "group" else "right")
    groups = {"overall": ("overall",)}
    groups.update({key: ("by_known", key) for key in before["by_known"]})
    groups.update({f"relation {key}": ("by_relation", key) for key in before["by_relation"]})
    for label, keys in groups.items():
        row = _dig(before, keys)
        cells = [_cell(row.get(column)) for column in _QA_COLUMNS]
        if after is not None:
            row_after = _dig(after, keys)
            cells = [f"{cell} -> {_cell(row_after.get(column))}" for cell, column in zip(cells, _QA_COLUMNS)]
        table.add_row(label, _cell(row.get("n"), count=True), *cells)
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
