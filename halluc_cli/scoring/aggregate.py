"""Gather a sweep of finetune runs: each run's config choices and test scores, grouped by
every choice but the seed, as mean and 95% interval over seeds (`halluc score runs=...`).

find the run dirs (a multirun dir, a glob, or a list) -> read each run (config.yaml,
summary.json, metrics.jsonl, eval/<point>/scores.json; an unreadable one is skipped with its
reason) -> (each run again, its predictions verified against the KB) -> groups -> summary
rows (one per group and eval point) and run rows -> CSV.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from halluc_cli.config import SLICK_CATEGORIES
from halluc_cli.errors import UserError
from halluc_cli.uncertainty import ESTIMATORS
from halluc_cli.io import atomic_path, complete_dir
from halluc_cli.models.base import FAMILY_FILE
from halluc_cli.rundir import (
    BEST_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    EVAL_DIR,
    EVAL_POINTS,
    METRICS_FILE,
    SCORES_FILE,
    SUMMARY_FILE,
)
from halluc_cli.scoring.metrics import is_number, mean_interval

# What tells runs apart, in table order; runs equal in all of these are seeds of one group.
CHOICES = (
    "model", "paraphrases", "freeze", "mitigation", "unknown_label", "known_from", "finetune_category",
    "unknown_fraction",
)
# Column name -> where the number sits in a scores.json (score_predictions output).
METRICS: dict[str, tuple[str, ...]] = {
    "known_accuracy": ("by_known", "known", "accuracy"),
    "unknown_accuracy": ("by_known", "unknown", "accuracy"),
    "known_hallucination_rate": ("by_known", "known", "hallucination_rate"),
    "unknown_hallucination_rate": ("by_known", "unknown", "hallucination_rate"),
    "hallucination_rate": ("overall", "hallucination_rate"),
    "abstention_rate": ("overall", "abstention_rate"),
    "unknown_abstention_rate": ("by_known", "unknown", "abstention_rate"),
    # runs verified against the KB: the share of answers marked contradicted that were wrong
    "verifier_precision": ("verification", "precision"),
    # runs under selective answering: the share of the answered test questions still answered
    "selection_coverage": ("selection", "coverage"),
    # each uncertainty score as a detector (scoring/detection.py): of wrong vs right answers,
    # and of unknown-fact vs known-fact questions
    **{
        f"{estimator}_{name}": ("detection", "estimators", estimator, *path)
        for estimator in ESTIMATORS
        for name, path in (("roc_auc", ("overall", "roc_auc")), ("unknown_roc_auc", ("known_vs_unknown_roc_auc",)))
    },
    # data.known_from=probe: each SliCK category's test set (Gekhman et al. 2024, Table 2)
    **{
        f"{category}_{rate}": ("by_category", category, rate)
        for category in SLICK_CATEGORIES
        for rate in ("accuracy", "hallucination_rate")
    },
}
# Costs from summary.json, averaged over seeds like the metrics.
COSTS = ("seconds", "trainable_parameters")
STATS = ("mean", "low", "high")


@dataclass
class Run:
    """One finetune run dir, read."""

    path: Path
    seed: int
    choices: dict[str, Any]  # CHOICES -> value
    scores: dict[str, dict[str, Any]]  # eval point -> its scores.json
    summary: dict[str, Any]  # summary.json ({} when absent)
    curve: list[dict[str, Any]]  # metrics.jsonl, one dict per evaluation
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # freeze/mitigation configs


@dataclass
class Group:
    """The runs (seeds) that share every choice."""

    choices: dict[str, Any]
    runs: list[Run]


@dataclass
class Sweep:
    """What `gather` found: the runs read, their groups, and the dirs skipped with why."""

    runs: list[Run]
    groups: list[Group]
    skipped: list[tuple[Path, str]]
    notes: list[str]  # e.g. a seed that appears twice in a group
    verified_twins: int = 0  # of `runs`, the KB-verified copies of the others (with_verified_runs)

    def varying(self) -> list[str]:
        """The choices that take more than one value across the runs."""
        return [name for name in CHOICES if len({choice_key(run.choices[name]) for run in self.runs}) > 1]


class _Unreadable(Exception):
    """A run dir that cannot be read; the message says why."""


def gather(spec: Any) -> Sweep:
    """Every finetune run `spec` names (a dir of run dirs, a run dir, a glob, or a list of
    them), read and grouped. No readable run is a UserError."""
    runs, skipped = [], []
    for path in find_run_dirs(spec):
        try:
            runs.append(read_run(path))
        except _Unreadable as error:
            skipped.append((path, str(error)))
    if not runs:
        reasons = "; ".join(f"{path}: {why}" for path, why in skipped[:3])
        raise UserError(f"runs={_spec_text(spec)}: no readable finetune run ({reasons}); "
                        "point runs= at a halluc finetune run or multirun dir")
    _label_variants(runs, "freeze")
    _label_variants(runs, "mitigation")
    groups = group_runs(runs)
    notes = []
    for group in groups:
        seeds = [run.seed for run in group.runs]
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if repeated:
            notes.append(f"{describe(group.choices)} holds seed(s) {repeated} more than once; "
                         "each run counts as a seed")
    return Sweep(runs, groups, skipped, notes)


def with_verified_runs(sweep: Sweep, mitigations: Mapping[str, Callable[[Path], dict[str, Any]]]) -> Sweep:
    """The sweep plus each run again under each score mitigation (label -> how it scores an
    eval point's answers): same seed and choices but mitigation "<its own>+<label>", each eval
    point scored by `verify(eval/<point>)`.

    Verification needs no training, so every fine-tuning variant gets a twin per mitigation,
    and a plot shows each as one more line per fine-tuning mitigation.
    """
    verified = []
    for label, verify in mitigations.items():
        for run in sweep.runs:
            scores = {point: verify(run.path / EVAL_DIR / point) for point in EVAL_POINTS if point in run.scores}
            if scores:
                mitigation = f"{run.choices['mitigation']}+{label}"
                # the training curve is its twin's: drawn once
                verified.append(replace(run, choices={**run.choices, "mitigation": mitigation}, scores=scores, curve=[]))
    runs = sweep.runs + verified
    return Sweep(runs, group_runs(runs), sweep.skipped, sweep.notes, len(verified))


# --- finding run dirs --------------------------------------------------------------------


def find_run_dirs(spec: Any) -> list[Path]:
    """Run dirs under each path or glob of `spec`, sorted per pattern, each once.

    A run dir holds config.yaml and summary.json or eval/; a dir with config.yaml and
    metrics.jsonl only (a run still going, or killed) is returned too, to be skipped with a
    warning. Hidden dirs (.hydra) and the insides of run dirs are not searched.
    """
    if spec is None or isinstance(spec, (str, Path)):
        patterns = [] if spec is None else [str(spec)]
    else:
        patterns = [str(item) for item in spec]
    if not patterns:
        raise UserError("runs=[] names no dir; give runs=<multirun dir> (or a glob, or a list)")
    found: list[Path] = []
    for pattern in patterns:
        if any(char in pattern for char in "*?["):
            roots = [Path(match) for match in sorted(glob.glob(pattern, recursive=True))]
            if not roots:
                raise UserError(f"runs={pattern} matches nothing; check the glob")
        else:
            roots = [Path(pattern)]
            if not roots[0].is_dir():
                raise UserError(f"runs={pattern}: no such directory; give a finetune run or multirun dir")
        for root in roots:
            found += _run_dirs_under(root)
    found = list(dict.fromkeys(found))
    if not found:
        raise UserError(
            f"runs={_spec_text(spec)} holds no finetune run dir (one with config.yaml and summary.json or "
            "eval/); point it at outputs/finetune/multirun_<time> or a run dir"
        )
    return found


def _is_run_dir(path: Path, started: bool = False) -> bool:
    if not (path / CONFIG_FILE).is_file():
        return False
    marks = (SUMMARY_FILE, EVAL_DIR) + ((METRICS_FILE,) if started else ())
    return any((path / mark).exists() for mark in marks)


def _run_dirs_under(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    if _is_run_dir(root, started=True):
        return [root]
    found = []
    for current, dirs, _ in os.walk(root):
        dirs.sort()
        here = Path(current)
        if here != root and _is_run_dir(here, started=True):
            found.append(here)
            dirs.clear()  # checkpoint/, eval/... are parts of the run, not runs
            continue
        dirs[:] = [name for name in dirs if not name.startswith(".")]
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> list[Any]:
    """Multirun job dirs 0, 1, ..., 10 in numeric order."""
    return [int(part) if part.isdigit() else part for part in path.parts]


def _spec_text(spec: Any) -> str:
    return str(spec) if isinstance(spec, (str, Path)) else str([str(item) for item in spec])


# --- reading one run ---------------------------------------------------------------------


def read_run(path: Path) -> Run:
    """A finetune run dir's choices, scores, summary and training curve; `_Unreadable` when
    a file is malformed or the run is not a finished data=kbqa finetune run."""
    config = _read_config(path / CONFIG_FILE)
    if "ckpt" not in config:
        raise _Unreadable("config.yaml has no ckpt (a pretrain run, not a finetune run)")
    data = config.get("data")
    if not isinstance(data, Mapping) or "unknown_fraction" not in data:
        raise _Unreadable("config.yaml has no data.unknown_fraction (not a data=kbqa finetune run)")
    summary = _read_json(path / SUMMARY_FILE) if (path / SUMMARY_FILE).is_file() else {}
    scores = {}
    for point in EVAL_POINTS:
        file = path / EVAL_DIR / point / SCORES_FILE
        if file.is_file():
            scores[point] = _read_json(file)
    if not summary and not scores:
        raise _Unreadable("no summary.json or eval/*/scores.json yet (unfinished or failed run?)")
    freeze = _mapping(config.get("freeze"), {"name": "none"})
    mitigation = _mapping(config.get("mitigation"), {"name": "none"})  # older runs have none
    choices = {
        "model": _model_family(path, config),
        "paraphrases": _paraphrases(config),
        "freeze": str(freeze.get("name", "none")),
        "mitigation": str(mitigation.get("name", "none")),
        "unknown_label": str(data.get("unknown_label", "answer")),
        "known_from": str(data.get("known_from", "split")),
        "finetune_category": str(data.get("finetune_category") or "mixed"),
        "unknown_fraction": _number(data["unknown_fraction"], "data.unknown_fraction"),
    }
    seed = config.get("seed", 0)
    return Run(path, int(seed) if isinstance(seed, int) else 0, choices, scores, summary,
               _read_curve(path / METRICS_FILE), {"freeze": freeze, "mitigation": mitigation})


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as error:  # yaml and omegaconf errors alike: the file is not a config
        raise _Unreadable(f"config.yaml does not parse ({type(error).__name__})") from error
    if not isinstance(config, dict):
        raise _Unreadable("config.yaml is not a mapping")
    return config


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _Unreadable(f"{path.name} is not valid JSON") from error
    if not isinstance(value, dict):
        raise _Unreadable(f"{path.name} is not a JSON object")
    return value


def _read_curve(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    curve = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise _Unreadable(f"metrics.jsonl line {lineno} is not valid JSON") from error
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            curve.append(record)
    return curve


def _mapping(value: Any, default: dict[str, Any]) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else default


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Unreadable(f"config.yaml {key}={value!r} is not a number")
    return float(value)


def _model_family(path: Path, config: Mapping[str, Any]) -> str:
    """The family the run's checkpoint records, else its pretraining run's model.name."""
    for weights in (CHECKPOINT_DIR, BEST_DIR):
        found = complete_dir(path / weights)
        if found is not None and (found / FAMILY_FILE).is_file():
            try:
                return str(json.loads((found / FAMILY_FILE).read_text(encoding="utf-8"))["family"])
            except (json.JSONDecodeError, KeyError, TypeError):
                pass
    model = _pretrain_config(config).get("model")
    return str(model.get("name", "?")) if isinstance(model, Mapping) else "?"


def _paraphrases(config: Mapping[str, Any]) -> Any:
    """Statement templates per fact in pretraining: what the pretraining run (the ckpt) used,
    when its config.yaml can be found, else this run's data.paraphrases."""
    for data in (_pretrain_config(config).get("data"), config.get("data")):
        if isinstance(data, Mapping) and data.get("paraphrases") is not None:
            return data["paraphrases"]
    return "?"


def _pretrain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config.yaml of the run `ckpt` points at (a run dir or its model dir), or {}."""
    ckpt = config.get("ckpt")
    if not isinstance(ckpt, str):
        return {}
    given = Path(ckpt)
    for candidate in (given / CONFIG_FILE, given.parent / CONFIG_FILE):
        if candidate.is_file():
            try:
                return _read_config(candidate)
            except _Unreadable:
                return {}
    return {}


def _label_variants(runs: list[Run], setting: str) -> None:
    """Tell apart runs of one freeze strategy or mitigation whose other keys differ
    (freeze=layers with 1 or 2 trainable layers): their choice becomes
    "layers (trainable_layers=2)"."""
    by_name: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_name[run.choices[setting]].append(run)
    for name, named in by_name.items():
        keys = dict.fromkeys(key for run in named for key in run.settings[setting] if key != "name")
        differing = [key for key in keys
                     if len({choice_key(run.settings[setting].get(key)) for run in named}) > 1]
        if not differing:
            continue
        for run in named:
            values = ", ".join(f"{key}={_compact(run.settings[setting].get(key))}" for key in differing)
            run.choices[setting] = f"{name} ({values})"


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def choice_key(value: Any) -> str:
    """A hashable, comparable form of a choice's value."""
    return json.dumps(value, sort_keys=True, default=str)


# --- groups and rows ---------------------------------------------------------------------


def group_runs(runs: Iterable[Run]) -> list[Group]:
    """Runs grouped by every choice but the seed, in sorted order of the choices."""
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        key = tuple(choice_key(run.choices[name]) for name in CHOICES)
        groups.setdefault(key, Group(dict(run.choices), [])).runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda run: run.seed)
    return sorted(groups.values(), key=lambda group: sort_key(group.choices))


def sort_key(choices: Mapping[str, Any], names: Iterable[str] = CHOICES) -> tuple[Any, ...]:
    """Numbers in numeric order, before strings in text order ("none" first among strings)."""
    return tuple(
        (0, choices[name], "") if is_number(choices[name])
        else (1, 0 if choices[name] == "none" else 1, str(choices[name]))
        for name in names
    )


def metric_value(scores: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    """The number at `path` in a scores.json, or None where it is absent (no such group)."""
    value: Any = scores
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return float(value) if is_number(value) else None


def group_stats(group: Group, point: str) -> dict[str, Any]:
    """{metric: mean_interval or None} over the group's runs that have `point`, plus the
    costs over all its runs, and n_seeds."""
    scored = [run for run in group.runs if point in run.scores]
    stats: dict[str, Any] = {"n_seeds": len(scored)}
    for metric, path in METRICS.items():
        values = [value for run in scored if (value := metric_value(run.scores[point], path)) is not None]
        stats[metric] = mean_interval(values) if values else None
    for cost in COSTS:
        values = [float(run.summary[cost]) for run in group.runs if is_number(run.summary.get(cost))]
        stats[cost] = mean_interval(values) if values else None
    return stats


def summary_rows(groups: Iterable[Group]) -> list[dict[str, Any]]:
    """One row per group and eval point it has: the choices, n_seeds, and mean/low/high of
    every metric and cost."""
    rows = []
    for group in groups:
        for point in EVAL_POINTS:
            if not any(point in run.scores for run in group.runs):
                continue
            stats = group_stats(group, point)
            row: dict[str, Any] = {**group.choices, "eval": point, "n_seeds": stats["n_seeds"]}
            for name in (*METRICS, *COSTS):
                for stat in STATS:
                    row[f"{name}_{stat}"] = stats[name][stat] if stats[name] else None
            rows.append(row)
    return rows


SUMMARY_COLUMNS = (*CHOICES, "eval", "n_seeds", *(f"{name}_{stat}" for name in (*METRICS, *COSTS) for stat in STATS))
RUN_COLUMNS = (
    "run", *CHOICES, "seed", "steps", "seconds", "trainable_parameters", "total_parameters",
    *(f"{point}_{metric}" for point in EVAL_POINTS for metric in METRICS),
)


def run_rows(runs: Iterable[Run]) -> list[dict[str, Any]]:
    """One row per run: its dir, choices, seed, costs and every metric at each eval point."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": str(run.path), **run.choices, "seed": run.seed}
        row.update({key: run.summary.get(key) for key in ("steps", "seconds", "trainable_parameters",
                                                          "total_parameters")})
        for point in EVAL_POINTS:
            for metric, path in METRICS.items():
                row[f"{point}_{metric}"] = metric_value(run.scores[point], path) if point in run.scores else None
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]], columns: Iterable[str]) -> None:
    """`rows` as CSV (atomically); floats to 6 decimals, None as an empty cell."""
    columns = list(columns)
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_value(row.get(key)) for key in columns})


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return round(value, 6)
    return value


def describe(choices: Mapping[str, Any], names: Iterable[str] = CHOICES) -> str:
    """"freeze=none, mitigation=clean, ..." for the named choices."""
    return ", ".join(f"{name}={choices[name]:g}" if isinstance(choices[name], float) else f"{name}={choices[name]}"
                     for name in names)
