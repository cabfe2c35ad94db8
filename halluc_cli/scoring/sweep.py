"""A sweep of finetune runs (`halluc score runs=...`): gathered, verified, written, drawn.

find and read the runs (`aggregate.gather`) -> under kb_verify, each run again with its eval
points' answers verified against the KB (under abstain_uncertain, withheld where unsure, by a
threshold chosen on the point's validation answers) -> warnings for what was skipped -> (the command
claims its run dir) -> summary.csv, effects.csv and runs.csv, the tables, PNG plots, and report.md
with all of them on one page.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from halluc_cli.console import console, print_note, print_warning
from halluc_cli.predictions import read_predictions
from halluc_cli.errors import UserError
from halluc_cli.rundir import (
    PREDICTIONS_FILE,
    SWEEP_EFFECTS_FILE,
    SWEEP_REPORT_FILE,
    SWEEP_RUNS_FILE,
    SWEEP_SUMMARY_FILE,
    VALID_PREDICTIONS_FILE,
)
from halluc_cli.scoring import aggregate
from halluc_cli.scoring.files import kb_verifier
from halluc_cli.scoring.metrics import score_predictions
from halluc_cli.scoring.report import write_report
from halluc_cli.scoring.selective import choose_threshold, select_answers, selection_summary
from halluc_cli.scoring.tables import print_effects, print_sweep
from halluc_cli.scoring.verify import KBVerifier, verification_summary


def gather_sweep(cfg: DictConfig) -> aggregate.Sweep:
    """Every run `cfg.runs` names, read and grouped (and, under kb_verify, its verified twin);
    what was skipped, and why, printed as warnings."""
    sweep = aggregate.gather(cfg.runs)
    if cfg.mitigation.name == "kb_verify":
        policy = str(cfg.mitigation.policy)
        sweep = aggregate.with_verified_runs(sweep, {_verify_label(cfg, policy): _eval_point_verifier(kb_verifier(cfg), policy)})
    elif cfg.mitigation.name == "abstain_uncertain":
        sweep = aggregate.with_verified_runs(sweep, _selective_mitigations(cfg))
    for path, why in sweep.skipped:
        print_warning(f"skipped {path}: {why}")
    for note in sweep.notes:
        print_warning(note)
    return sweep


def write_sweep(sweep: aggregate.Sweep, run_dir: Path) -> Path:
    """summary.csv, effects.csv, runs.csv, the plots and report.md in `run_dir`, and the
    tables on the console; returns the report's path."""
    from halluc_cli.scoring.plots import draw_plots  # matplotlib: imported only when plotting

    summary, effects = aggregate.summary_rows(sweep), aggregate.effect_rows(sweep)
    aggregate.write_csv(run_dir / SWEEP_SUMMARY_FILE, summary, aggregate.summary_columns(sweep))
    aggregate.write_csv(run_dir / SWEEP_EFFECTS_FILE, effects, aggregate.effect_columns(sweep))
    aggregate.write_csv(run_dir / SWEEP_RUNS_FILE, aggregate.run_rows(sweep.runs), aggregate.run_columns(sweep))
    print_sweep(sweep, summary)
    print_effects(sweep, effects)
    plots, notes = draw_plots(sweep, run_dir)
    for name in (SWEEP_SUMMARY_FILE, SWEEP_EFFECTS_FILE, SWEEP_RUNS_FILE):
        console.print(f"[bold]wrote[/bold] {run_dir / name}", highlight=False)
    for path in plots:
        console.print(f"[bold]plot[/bold] {path}", highlight=False)
    for note in notes:
        print_note(f"no plot {note}")
    return write_report(run_dir / SWEEP_REPORT_FILE, sweep, summary, effects, plots)


def _coverage(cfg: DictConfig) -> str:
    """The label part that says the verifier consults part of the KB (kb_coverage)."""
    return f",kb_coverage={cfg.kb_coverage:g}" if cfg.kb_coverage < 1 else ""


def _verify_label(cfg: DictConfig, policy: Any) -> str:
    return f"kb_verify({policy}{_coverage(cfg)})"


def _selective_mitigations(cfg: DictConfig) -> dict[str, Callable[[Path], dict[str, Any]]]:
    """Selective answering as configured; with `beside_kb`, also the rule alone, KB
    verification alone (withholding what the KB contradicts) and the two combined (kb_first),
    each a row of the one table."""
    rule, verifier = cfg.mitigation, kb_verifier(cfg)  # one KB for every row
    variants = [rule.kb_first] if not rule.beside_kb else [False, True]
    mitigations = {}
    for kb_first in variants:
        kb = f",kb_first{_coverage(cfg)}" if kb_first else ""
        label = f"abstain_uncertain({rule.estimator},{rule.target}={rule.level:g}{kb})"
        mitigations[label] = _eval_point_selector(cfg, verifier, kb_first)
    if rule.beside_kb:
        mitigations = {_verify_label(cfg, "abstain"): _eval_point_verifier(verifier, "abstain"), **mitigations}
    return mitigations


def _eval_point_selector(cfg: DictConfig, verifier: KBVerifier, kb_first: bool) -> Callable[[Path], dict[str, Any]]:
    """Scores of a finetune run's eval/<point>/ test answers after selective answering (the KB
    deciding first the answers it covers if `kb_first`), its threshold chosen on that point's
    validation answers."""
    rule = cfg.mitigation

    def select(point_dir: Path) -> dict[str, Any]:
        calibration = point_dir / VALID_PREDICTIONS_FILE
        if not calibration.is_file():
            raise UserError(f"{point_dir} has no {VALID_PREDICTIONS_FILE} to calibrate on (fine-tuned before halluc "
                            "wrote it); fine-tune it again, or score it without mitigation=abstain_uncertain")
        where = str(point_dir / PREDICTIONS_FILE)
        held_out = read_predictions(calibration, "qa")
        if not any(rule.estimator in (record.get("uncertainty") or {}) for record in held_out):
            # finetune carries on without a probe its validation set cannot train: that run alone is left out
            raise aggregate.Unscorable(f"its validation answers carry no {rule.estimator} score")
        threshold = choose_threshold(held_out, rule.estimator, str(rule.target), rule.level, str(calibration))
        records = read_predictions(point_dir / PREDICTIONS_FILE, "qa")
        selected = select_answers(records, rule.estimator, kb_first, threshold, cfg.abstain_phrase, verifier, where)
        return {**score_predictions(selected, verifier.kb),
                "selection": selection_summary(records, selected, threshold)}

    return select


def _eval_point_verifier(verifier: KBVerifier, policy: str) -> Callable[[Path], dict[str, Any]]:
    """Scores of a finetune run's eval/<point>/ test answers after KB verification under `policy`."""

    def verify(point_dir: Path) -> dict[str, Any]:
        records = read_predictions(point_dir / PREDICTIONS_FILE, "qa")
        verified = verifier.apply_policy(records, policy)
        return {**score_predictions(verified, verifier.kb), "verification": verification_summary(verified, verifier.kb)}

    return verify
