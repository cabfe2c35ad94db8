"""Gather a sweep of finetune runs: each run's settings and test scores, grouped by every
setting the sweep varied but the seeds, as mean and 95% interval (`halluc score runs=...`),
and each setting's effect as paired differences from its baseline value.

find the run dirs (a multirun dir, a glob, or a list) -> read each run (config.yaml,
.hydra/overrides.yaml, summary.json, metrics.jsonl, eval/<point>/scores.json; an unreadable
one is skipped with its reason) -> (each run again, its predictions verified against the KB)
-> groups -> summary rows (one per group and eval point), effect rows and run rows -> CSV.

Two kinds of seed tell apart the runs of a group: the pretraining replicate (the checkpoint
the run started from: its own split of the KB and its own pretrained model) and the
fine-tuning seed (`seed`). Intervals are over replicates when there are several
(`metrics.nested_interval`), else over seeds.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from halluc_cli.config import SLICK_CATEGORIES
from halluc_cli.errors import UserError
from halluc_cli.ledger import SHARES as LEDGER_SHARES
from halluc_cli.uncertainty import ESTIMATORS
from halluc_cli.io import atomic_path, complete_dir
from halluc_cli.models.base import FAMILY_FILE
from halluc_cli.rundir import (
    BEST_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    EVAL_DIR,
    EVAL_POINTS,
    HYDRA_DIR,
    METRICS_FILE,
    OVERRIDES_FILE,
    SCORES_FILE,
    SUMMARY_FILE,
)
from halluc_cli.scoring.metrics import DIFFERENCE, SHARE, is_number, nested_interval

# Settings read from every run's config (and its pretraining run's), in table order, whether
# or not the sweep named them: the model family and the paraphrases come from the pretrained
# checkpoint, which a finetune sweep does not override.
CHOICES = (
    "model", "paraphrases", "freeze", "mitigation", "unknown_label", "known_from", "finetune_category",
    "unknown_fraction",
)
# Overrides read as those choices (a freeze=lora sweep is the `freeze` choice).
DERIVED = {
    "freeze": "freeze", "mitigation": "mitigation", "data.unknown_fraction": "unknown_fraction",
    "data.unknown_label": "unknown_label", "data.known_from": "known_from",
    "data.finetune_category": "finetune_category", "data.paraphrases": "paraphrases",
}
# Overrides that are seeds, not conditions: runs that differ only in these are repeats of one
# group. `ckpt` is the pretraining replicate; a labelled run's data.split_seed draws its split.
SEEDS = ("seed", "probe.seed", "ckpt", "data.split_seed")
# Overrides of how a run runs, not of what it measures (a key or a section of keys).
RUNNING = ("hydra", "device", "resume", "train.progress", "experiment", "summary_table", "eval_after")
NOT_A_CHOICE = "-"  # a QA choice of a run that has no QA sets (data=labelled)
UNSET = "?"  # a choice a run's config does not set (mitigation.inputs of mitigation=none)


@dataclass(frozen=True)
class Metric:
    """A number of every run's eval/<point>/scores.json, gathered over a sweep."""

    path: tuple[str, ...]  # where it sits in a scores.json (score_predictions, classification_metrics)
    header: str = ""  # its column in the sweep's table, in priority order; "": the CSV and report only
    bounds: tuple[float, float] | None = SHARE  # a rate's interval stays in [0, 1]
    effect: bool = False  # a key figure: compared as paired differences (effects.csv)
    # over-refusal: a column of the console table only for sweeps whose models abstain
    abstaining: bool = False


def _rates(group: str, name: str) -> tuple[str, ...]:
    return ("overall", name) if group == "all" else ("by_known", group, name)


LEDGER_HEADERS = {"retained": "retained\nledger", "lost": "lost\nledger",
                  "stored_not_extracted": "not extr.\nledger", "confident_wrong": "conf. wrong\nledger"}

# Column name -> its metric, the table's first (the sweep's table shows as many as fit).
METRICS: dict[str, Metric] = {
    "known_accuracy": Metric(_rates("known", "accuracy"), "acc\nknown", effect=True),
    # over-refusal of a model taught to abstain (data.unknown_label=idk; Gekhman et al., CRaFT):
    # the share of known-fact questions it refuses, and its accuracy among those it answers
    "false_abstention_rate": Metric(_rates("known", "abstention_rate"), "abstain\nknown", effect=True,
                                    abstaining=True),
    "answered_accuracy": Metric(_rates("all", "answered_accuracy"), "acc\nanswered", abstaining=True),
    "known_hallucination_rate": Metric(_rates("known", "hallucination_rate"), "halluc.\nknown", effect=True),
    "hallucination_rate": Metric(_rates("all", "hallucination_rate"), "halluc.\nall", effect=True),
    "unknown_hallucination_rate": Metric(_rates("unknown", "hallucination_rate"), "halluc.\nunknown", effect=True),
    "unknown_abstention_rate": Metric(_rates("unknown", "abstention_rate"), "abstain\nunknown", effect=True),
    "unknown_accuracy": Metric(_rates("unknown", "accuracy"), "acc\nunknown"),
    "abstention_rate": Metric(_rates("all", "abstention_rate")),
    # data=labelled: the seed articles' error rate mean(prediction != label)
    "error_rate": Metric(("error_rate",), "error\nrate", effect=True),
    "label_accuracy": Metric(("accuracy",)),
    # runs verified against the KB: the share of answers marked contradicted that were wrong
    "verifier_precision": Metric(("verification", "precision"), "verifier\nprecision"),
    # runs under selective answering: the share of the answered test questions still answered
    "selection_coverage": Metric(("selection", "coverage"), "coverage"),
    # data.known_from=probe: each SliCK category's test set (Gekhman et al. 2024, Table 2)
    **{
        f"{category}_{rate}": Metric(("by_category", category, rate), f"acc\n{category}" if rate == "accuracy" else "")
        for category in SLICK_CATEGORIES
        for rate in ("accuracy", "hallucination_rate")
    },
    # finetune ledger=true (halluc_cli/ledger.py): each category's share of the held-out known
    # (unknown) facts, and the spill-over rate over all of them; the split of known accuracy's
    # drop into lost storage and failed extraction is read off the paired differences
    **{f"ledger_{name}": Metric(("ledger", name), LEDGER_HEADERS.get(name, ""), effect=name in LEDGER_HEADERS)
       for name in LEDGER_SHARES},
    # each uncertainty score as a detector (scoring/detection.py): of wrong vs right answers,
    # and of unknown-fact vs known-fact questions
    **{
        f"{estimator}_{name}": Metric(("detection", "estimators", estimator, *path))
        for estimator in ESTIMATORS
        for name, path in (("roc_auc", ("overall", "roc_auc")), ("unknown_roc_auc", ("known_vs_unknown_roc_auc",)))
    },
}
# Costs from summary.json, averaged like the metrics.
COSTS = ("seconds", "trainable_parameters")
STATS = ("mean", "low", "high")
COUNTS = ("n_replicates", "n_seeds", "n_runs")  # what a row's interval rests on


@dataclass
class Run:
    """One finetune run dir, read."""

    path: Path
    seed: int  # the fine-tuning seed
    replicate: str  # the pretraining replicate: the checkpoint it started from (and its data split)
    choices: dict[str, Any]  # CHOICES and the sweep's own overrides -> value
    scores: dict[str, dict[str, Any]]  # eval point -> its scores.json
    summary: dict[str, Any]  # summary.json ({} when absent)
    curve: list[dict[str, Any]]  # metrics.jsonl, one dict per evaluation
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # freeze/mitigation configs
    overrides: dict[str, str] = field(default_factory=dict)  # .hydra/overrides.yaml, seeds and running keys out
    config: dict[str, Any] = field(default_factory=dict)  # config.yaml


@dataclass
class Group:
    """The runs (replicates x seeds) that share every choice."""

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
    names: tuple[str, ...] = CHOICES  # the choices, in table order: CHOICES, then the sweep's own overrides

    def varying(self) -> list[str]:
        """The choices that take more than one value across the runs."""
        return [name for name in self.names if len({choice_key(run.choices[name]) for run in self.runs}) > 1]


class Unscorable(Exception):
    """An eval point a score mitigation cannot score (its twin is left out, with why)."""


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
    names = _add_overridden(runs)
    _label_variants(runs, "freeze", names)
    _label_variants(runs, "mitigation", names)
    groups = group_runs(runs, names)
    notes = []
    for group in groups:
        seeds = [(run.replicate, run.seed) for run in group.runs]
        repeated = sorted({seed for replicate, seed in seeds if seeds.count((replicate, seed)) > 1})
        if repeated:
            notes.append(f"{describe(group.choices, names)} holds seed(s) {repeated} of one pretrained model more "
                         "than once; each run counts as a seed")
    return Sweep(runs, groups, skipped, notes, names=names)


def with_verified_runs(sweep: Sweep, mitigations: Mapping[str, Callable[[Path], dict[str, Any]]]) -> Sweep:
    """The sweep plus each run again under each score mitigation (label -> how it scores an
    eval point's answers): same seed and choices but mitigation "<its own>+<label>", each eval
    point scored by `verify(eval/<point>)`.

    Verification needs no training, so every fine-tuning variant gets a twin per mitigation,
    and a plot shows each as one more line per fine-tuning mitigation.
    """
    verified, skipped = [], list(sweep.skipped)
    for label, verify in mitigations.items():
        unscorable = []
        for run in sweep.runs:
            try:
                scores = {point: verify(run.path / EVAL_DIR / point) for point in EVAL_POINTS if point in run.scores}
            except Unscorable as why:  # e.g. a run whose validation set trained no probe
                unscorable.append((run.path, f"not under {label}: {why}"))
                continue
            if scores:
                mitigation = f"{run.choices['mitigation']}+{label}"
                # the training curve is its twin's: drawn once
                verified.append(replace(run, choices={**run.choices, "mitigation": mitigation}, scores=scores, curve=[]))
        if unscorable and len(unscorable) == len(sweep.runs):
            raise UserError(f"{unscorable[0][0]}: {unscorable[0][1]}, nor is any other run; check the mitigation's settings")
        skipped += unscorable
    runs = sweep.runs + verified
    return Sweep(runs, group_runs(runs, sweep.names), skipped, sweep.notes, len(verified), sweep.names)


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
    """A finetune run dir's choices, seeds, scores, summary and training curve; `_Unreadable`
    when a file is malformed or the run is not a finished finetune run."""
    config = _read_config(path / CONFIG_FILE)
    if "ckpt" not in config:
        raise _Unreadable("config.yaml has no ckpt (a pretrain run, not a finetune run)")
    data = config.get("data")
    if not isinstance(data, Mapping):
        raise _Unreadable("config.yaml has no data section (not a finetune run)")
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
        **_qa_choices(data),
    }
    seed = config.get("seed", 0)
    return Run(path, int(seed) if isinstance(seed, int) else 0, _replicate(config), choices, scores, summary,
               _read_curve(path / METRICS_FILE), {"freeze": freeze, "mitigation": mitigation},
               _read_overrides(path / HYDRA_DIR / OVERRIDES_FILE), config)


def _qa_choices(data: Mapping[str, Any]) -> dict[str, Any]:
    """The choices of QA fine-tuning (data=kbqa, qa_file); NOT_A_CHOICE for a run without QA
    sets (data=labelled), where they mean nothing."""
    if "unknown_fraction" not in data:
        return dict.fromkeys(("unknown_label", "known_from", "finetune_category", "unknown_fraction"), NOT_A_CHOICE)
    return {
        "unknown_label": str(data.get("unknown_label", "answer")),
        "known_from": str(data.get("known_from", "split")),
        "finetune_category": str(data.get("finetune_category") or "mixed"),
        "unknown_fraction": _number(data["unknown_fraction"], "data.unknown_fraction"),
    }


def _replicate(config: Mapping[str, Any]) -> str:
    """The pretraining replicate a run belongs to: the checkpoint it started from (its dir
    as the pretraining run's config.yaml places it), with the data split it drew when it
    drew one itself (data.split_seed of data=labelled; data=kbqa reads its pretraining split)."""
    ckpt = str(config.get("ckpt"))
    found = _pretrain_config_file(config)
    replicate = os.path.normpath(found.parent if found is not None else ckpt)
    data = config.get("data")
    if isinstance(data, Mapping) and "unknown_fraction" not in data and data.get("split_seed") is not None:
        replicate += f" (data.split_seed={data['split_seed']})"
    return replicate


def _read_overrides(path: Path) -> dict[str, str]:
    """The command line a run was launched with (.hydra/overrides.yaml: ["train.lr=0.001",
    ...]) as {key: value}; {} when the file is absent (runs made by hand) or unreadable."""
    if not path.is_file():
        return {}
    try:
        lines = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:  # yaml and omegaconf errors alike: no overrides to group by
        return {}
    overrides = {}
    for line in lines if isinstance(lines, list) else []:
        key, sign, value = str(line).partition("=")
        if sign:
            overrides[key.lstrip("+~")] = value
    return overrides


def _add_overridden(runs: list[Run]) -> tuple[str, ...]:
    """The choice names of the sweep: CHOICES, then every override of any run that is neither
    a seed, nor how the run ran, nor read as one of CHOICES (DERIVED), sorted; each run's
    value of each is set in its choices, read from its config.yaml."""
    keys = {key for run in runs for key in run.overrides}
    own = sorted(key for key in keys if key not in DERIVED and not _is_seed_or_running(key))
    for run in runs:
        for key in own:
            run.choices[key] = _setting(run.config, key, run.overrides.get(key))
    return (*CHOICES, *own)


def _is_seed_or_running(key: str) -> bool:
    return any(key == name or key.startswith(name + ".") for name in (*SEEDS, *RUNNING))


def _setting(config: Mapping[str, Any], key: str, given: str | None) -> Any:
    """The value of the dotted `key` in a run's resolved config; a config group's (data=labelled)
    is the name given on the command line."""
    value: Any = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, Mapping):
        return given if given is not None else str(value.get("name", UNSET))
    if isinstance(value, list):
        return _compact(value)
    if value is None:
        return given if given is not None else UNSET
    return value


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
    return str(model.get("name", UNSET)) if isinstance(model, Mapping) else UNSET


def _paraphrases(config: Mapping[str, Any]) -> Any:
    """Statement templates per fact in pretraining: what the pretraining run (the ckpt) used,
    when its config.yaml can be found, else this run's data.paraphrases."""
    for data in (_pretrain_config(config).get("data"), config.get("data")):
        if isinstance(data, Mapping) and data.get("paraphrases") is not None:
            return data["paraphrases"]
    return UNSET


def _pretrain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config.yaml of the run `ckpt` points at (a run dir or its model dir), or {}."""
    found = _pretrain_config_file(config)
    if found is None:
        return {}
    try:
        return _read_config(found)
    except _Unreadable:
        return {}


def _pretrain_config_file(config: Mapping[str, Any]) -> Path | None:
    """The config.yaml of the pretraining run `ckpt` points at (a run dir or its model dir)."""
    ckpt = config.get("ckpt")
    if not isinstance(ckpt, str):
        return None
    given = Path(ckpt)
    for candidate in (given / CONFIG_FILE, given.parent / CONFIG_FILE):
        if candidate.is_file():
            return candidate
    return None


def _label_variants(runs: list[Run], setting: str, names: Iterable[str]) -> None:
    """Tell apart runs of one freeze strategy or mitigation whose other keys differ
    (freeze=layers with 1 or 2 trainable layers): their choice becomes
    "layers (trainable_layers=2)". A key the sweep overrode (freeze.rank) is a choice of its own
    (`names`), not repeated here."""
    own = set(names)
    by_name: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_name[run.choices[setting]].append(run)
    for name, named in by_name.items():
        keys = dict.fromkeys(key for run in named for key in run.settings[setting] if key != "name")
        differing = [key for key in keys if f"{setting}.{key}" not in own
                     and len({choice_key(run.settings[setting].get(key)) for run in named}) > 1]
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


def group_runs(runs: Iterable[Run], names: tuple[str, ...]) -> list[Group]:
    """Runs grouped by every choice in `names` (not the seeds), in sorted order of the choices."""
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        key = tuple(choice_key(run.choices.get(name)) for name in names)
        groups.setdefault(key, Group(dict(run.choices), [])).runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda run: (run.replicate, run.seed))
    return sorted(groups.values(), key=lambda group: sort_key(group.choices, names))


def sort_key(choices: Mapping[str, Any], names: Iterable[str]) -> tuple[Any, ...]:
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


def _by_replicate(runs: Iterable[Run], value: Callable[[Run], float | None]) -> list[list[float]]:
    """`value` of each run that has one, a list per pretraining replicate."""
    nested: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        if (number := value(run)) is not None:
            nested[run.replicate].append(number)
    return list(nested.values())


def _interval(nested: list[list[float]], bounds: tuple[float, float] | None) -> dict[str, float | int] | None:
    return nested_interval(nested, bounds) if nested else None


def group_stats(group: Group, point: str) -> dict[str, Any]:
    """{metric: nested_interval or None} over the group's runs that have `point`, the costs
    over all its runs, and how many replicates, seeds and runs there are (COUNTS)."""
    scored = [run for run in group.runs if point in run.scores]
    stats: dict[str, Any] = {
        "n_replicates": len({run.replicate for run in scored}),
        "n_seeds": len({run.seed for run in scored}),
        "n_runs": len(scored),
    }
    for name, metric in METRICS.items():
        stats[name] = _interval(_by_replicate(scored, lambda run: metric_value(run.scores[point], metric.path)),
                                metric.bounds)
    for cost in COSTS:
        number = lambda run: float(run.summary[cost]) if is_number(run.summary.get(cost)) else None  # noqa: E731
        stats[cost] = _interval(_by_replicate(group.runs, number), None)
    return stats


def summary_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per group and eval point it has: the choices, COUNTS, and mean/low/high of
    every metric and cost."""
    rows = []
    for group in sweep.groups:
        for point in EVAL_POINTS:
            if not any(point in run.scores for run in group.runs):
                continue
            stats = group_stats(group, point)
            row: dict[str, Any] = {**group.choices, "eval": point, **{count: stats[count] for count in COUNTS}}
            for name in (*METRICS, *COSTS):
                for stat in STATS:
                    row[f"{name}_{stat}"] = stats[name][stat] if stats[name] else None
            rows.append(row)
    return rows


def summary_columns(sweep: Sweep) -> list[str]:
    """summary.csv's columns: the choices, the eval point, COUNTS, each metric and cost's STATS."""
    return [*sweep.names, "eval", *COUNTS, *(f"{name}_{stat}" for name in (*METRICS, *COSTS) for stat in STATS)]


# --- effects: paired differences from a baseline ---------------------------------------------

EFFECTS = tuple(name for name, metric in METRICS.items() if metric.effect)


def effect_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """For each varied choice, each of its values against its baseline (the first value in
    sort order: share 0, mitigation none; a score mitigation's twin: its own fine-tuning
    mitigation), the other choices equal: a row per eval point with
    the mean and 95% interval of the paired differences (value minus baseline) of EFFECTS.

    Runs pair when they share the pretraining replicate and the fine-tuning seed, so what the
    seeds share (the split, the initial weights, the batch order) cancels in each difference.
    Intervals are nested as in `group_stats`; a difference of rates stays in [-1, 1].
    """
    rows = []
    for name in sweep.varying():
        values = [group.choices[name] for group in sweep.groups if group.choices[name] != UNSET]
        if not values:
            continue
        first = min(values, key=lambda value: sort_key({name: value}, [name]))
        for group in sweep.groups:
            if group.choices[name] == UNSET:  # a setting this run does not have is no value to compare
                continue
            baseline = _baseline(name, group.choices[name], first)
            base = _base_group(sweep, name, baseline, group)
            if base is None or base is group:
                continue
            context = {other: group.choices[other] for other in sweep.varying() if other != name}
            for point in EVAL_POINTS:
                row = _paired(group, base, point)
                if row is not None:
                    rows.append({"setting": name, "value": group.choices[name], "baseline": baseline, **context,
                                 "eval": point, **row})
    return rows


def _base_group(sweep: Sweep, name: str, baseline: Any, group: Group) -> Group | None:
    """The group whose `name` is `baseline` and whose other choices are `group`'s. A setting of
    the compared choice's own (mitigation.inputs beside mitigation) must match only where both
    groups have it: distill's inputs say nothing of mitigation=none, which has none (UNSET).
    Where that leaves several groups (distill at two weights against replay, which has no
    weight), the one that matches exactly, else none: no row rather than a guessed pairing."""
    others = [other for other in sweep.names if other != name]
    candidates = [base for base in sweep.groups if choice_key(base.choices[name]) == choice_key(baseline)
                  and all(_same_setting(other, name, base.choices[other], group.choices[other]) for other in others)]
    if len(candidates) > 1:
        candidates = [base for base in candidates
                      if all(choice_key(base.choices[other]) == choice_key(group.choices[other]) for other in others)]
    return candidates[0] if len(candidates) == 1 else None


def _same_setting(other: str, name: str, value: Any, reference: Any) -> bool:
    """Whether choice `other` of two groups compared on `name` agrees (a sub-setting of `name`
    that either group lacks agrees with anything)."""
    if other.startswith(name + ".") and UNSET in (value, reference):
        return True
    return choice_key(value) == choice_key(reference)


def _baseline(name: str, value: Any, first: Any) -> Any:
    """What `value` of choice `name` is compared with: the first value, except for a score
    mitigation's twin ("<fine-tuning mitigation>+<label>"), compared with its own fine-tuning
    mitigation, so the difference is the score mitigation's alone."""
    if name == "mitigation" and "+" in str(value):
        return str(value).partition("+")[0]
    return first


def effect_columns(sweep: Sweep) -> list[str]:
    """effects.csv's columns: what is compared, the other choices, the eval point, the pairs,
    and each EFFECTS metric's difference STATS."""
    return ["setting", "value", "baseline", *sweep.varying(), "eval", "n_replicates", "n_pairs",
            *(f"{name}_diff_{stat}" for name in EFFECTS for stat in STATS)]


def _paired(group: Group, base: Group, point: str) -> dict[str, Any] | None:
    """The differences group minus base at `point` over runs paired by (replicate, seed); None
    when no run pairs."""
    baseline = {(run.replicate, run.seed): run for run in base.runs if point in run.scores}
    pairs = [(run, baseline[(run.replicate, run.seed)]) for run in group.runs
             if point in run.scores and (run.replicate, run.seed) in baseline]
    if not pairs:
        return None
    row: dict[str, Any] = {"n_replicates": len({run.replicate for run, _ in pairs}), "n_pairs": len(pairs)}
    for name in EFFECTS:
        metric = METRICS[name]
        nested: dict[str, list[float]] = defaultdict(list)
        for run, other in pairs:
            value, reference = (metric_value(item.scores[point], metric.path) for item in (run, other))
            if value is not None and reference is not None:
                nested[run.replicate].append(value - reference)
        stat = _interval(list(nested.values()), DIFFERENCE if metric.bounds == SHARE else None)
        row.update({f"{name}_diff_{part}": stat[part] if stat else None for part in STATS})
    return row


# --- runs --------------------------------------------------------------------------------


def run_columns(sweep: Sweep) -> list[str]:
    """runs.csv's columns: the run, its choices and seeds, costs, every metric at each eval point."""
    return ["run", *sweep.names, "replicate", "seed", "steps", "seconds", "trainable_parameters",
            "total_parameters", *(f"{point}_{metric}" for point in EVAL_POINTS for metric in METRICS)]


def run_rows(runs: Iterable[Run]) -> list[dict[str, Any]]:
    """One row per run: its dir, choices, replicate and seed, costs and every metric at each eval point."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": str(run.path), **run.choices, "replicate": run.replicate, "seed": run.seed}
        row.update({key: run.summary.get(key) for key in ("steps", "seconds", "trainable_parameters",
                                                          "total_parameters")})
        for point in EVAL_POINTS:
            for metric, spec in METRICS.items():
                row[f"{point}_{metric}"] = metric_value(run.scores[point], spec.path) if point in run.scores else None
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


def describe(choices: Mapping[str, Any], names: Iterable[str]) -> str:
    """"freeze=none, mitigation=clean, ..." for the named choices; a sub-setting a run does not
    have (mitigation.inputs of mitigation=none: UNSET) is left out, as it says nothing."""
    return ", ".join(f"{name}={choices[name]:g}" if isinstance(choices[name], float) else f"{name}={choices[name]}"
                     for name in names if not ("." in name and choices[name] == UNSET))
