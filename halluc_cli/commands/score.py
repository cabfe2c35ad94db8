"""`halluc score`: hallucination metrics of prediction files, optionally verified against a KB.

check settings -> read and check every prediction file (and its ids against `questions`) ->
claim the run dir -> per file: (KB verification) -> metrics (`scoring/files.py`) -> scores.json
(+ predictions_verified.jsonl) in the run dir -> rich tables (`scoring/tables.py`).
Nothing is written until every input has been read and found valid.
Or `runs=`: gather a sweep of finetune runs (their eval/*/scores.json, `scoring/sweep.py`)
into summary.csv, effects.csv, runs.csv, PNG plots, tables and report.md: mean and 95% interval
over seeds (over pretraining replicates when there are several), and paired differences.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from halluc_cli import rundir
from halluc_cli.commands.common import start_run
from halluc_cli.console import console
from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_json, atomic_write_jsonl
from halluc_cli.predictions import FIELDS, read_prediction_files, read_predictions
from halluc_cli.scoring.files import draw_risk_coverage, kb_verifier, score_file, scores_record
from halluc_cli.scoring.selective import choose_threshold, estimator_scores
from halluc_cli.scoring.sweep import gather_sweep, write_sweep
from halluc_cli.scoring.tables import print_scores

MITIGATIONS = ("none", "kb_verify", "abstain_uncertain")


def run(cfg: DictConfig) -> None:
    """Score the configured prediction files (or gather `runs`); results land in the run dir."""
    _check_settings(cfg)
    if cfg.runs is not None:
        sweep = gather_sweep(cfg)
        run_dir = start_run(cfg)
        report = write_sweep(sweep, run_dir)
        console.print(f"[bold]report[/bold] {report}", highlight=False)
        return
    files = read_prediction_files(cfg.predictions, cfg.task, cfg.questions)
    verifier = None if cfg.task == "classification" else kb_verifier(cfg)
    threshold = _selection_threshold(cfg, files) if cfg.mitigation.name == "abstain_uncertain" else None

    run_dir = start_run(cfg)
    per_file = []
    for index, (path, records) in enumerate(files.items()):
        metrics, verified = score_file(records, cfg, verifier, threshold)
        entry: dict[str, Any] = {"file": str(path), "metrics": metrics}
        if verified is not None:
            name = rundir.mitigated_predictions_file(cfg.mitigation.name, index, len(files))
            atomic_write_jsonl(run_dir / name, verified)
            entry["verified_predictions"] = name
        per_file.append(entry)
    scores = scores_record(cfg, per_file)
    atomic_write_json(run_dir / rundir.SCORES_FILE, scores)
    print_scores(scores, cfg)
    pooled = [record for records in files.values() for record in records]
    if cfg.task == "qa" and any("uncertainty" in record for record in pooled):
        plot = draw_risk_coverage(pooled, verifier, run_dir / rundir.RISK_COVERAGE_PLOT)
        console.print(f"[bold]plot[/bold] {plot}", highlight=False)


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
    if name == "abstain_uncertain":
        if cfg.task != "qa":
            raise UserError("mitigation=abstain_uncertain applies to QA predictions (task=qa)")
        if cfg.runs is not None and cfg.mitigation.calibration is not None:
            raise UserError("with runs=, each run calibrates on its own eval/<point>/valid_predictions.jsonl; "
                            "drop mitigation.calibration")
        if cfg.predictions is not None and cfg.mitigation.calibration is None:
            raise UserError("mitigation=abstain_uncertain needs mitigation.calibration=<held-out predictions of the "
                            "same model>, e.g. a finetune run's eval/final/valid_predictions.jsonl")
        if cfg.predictions is not None and cfg.mitigation.beside_kb:
            raise UserError("mitigation.beside_kb adds rows to the table of runs=; with predictions= score "
                            "kb_verify and the rule apart (or mitigation.kb_first=true for the two combined)")
    consults_kb = name == "kb_verify" or (name == "abstain_uncertain" and (cfg.mitigation.kb_first or cfg.mitigation.beside_kb))
    if cfg.kb_coverage < 1 and not consults_kb:
        raise UserError(f"kb_coverage={cfg.kb_coverage:g} limits what the KB verifier consults, and mitigation={name} "
                        "consults none; use it with mitigation=kb_verify or abstain_uncertain's kb_first / beside_kb")


def _selection_threshold(cfg: DictConfig, files: dict[Path, list[dict[str, Any]]]) -> float:
    """The threshold chosen on the calibration predictions; every file is checked for the
    score first, so a mistake writes nothing."""
    mitigation = cfg.mitigation
    calibration = Path(mitigation.calibration)
    records = read_predictions(calibration, "qa")
    if calibration.resolve() in {path.resolve() for path in files}:
        raise UserError(f"mitigation.calibration={calibration} is also scored; calibrate on held-out predictions")
    for path, scored in files.items():
        estimator_scores(scored, mitigation.estimator, str(path))
    return choose_threshold(records, mitigation.estimator, str(mitigation.target), mitigation.level, str(calibration))
