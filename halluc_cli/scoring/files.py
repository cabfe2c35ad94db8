"""Scores of prediction files (`halluc score predictions=...`).

per file: (locate each question's fact; under kb_verify, verify the answers against the KB
by the policy) -> metrics (and, where the records carry uncertainty scores, how well each
detects the wrong answers: `detection.py`) -> the scores.json record: each file's metrics and their mean
and 95% interval over the files (seeds).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from halluc_cli.data.kb import KnowledgeBase, load_kb
from halluc_cli.data.normalize import normalize_text
from halluc_cli.scoring.detection import judge_detectors, risk_coverage_curves
from halluc_cli.scoring.selective import select_answers, selection_summary
from halluc_cli.scoring.metrics import aggregate_seeds, classification_metrics, is_right, kb_aliases, score_predictions
from halluc_cli.scoring.verify import KBVerifier, verification_summary


def kb_verifier(cfg: DictConfig) -> KBVerifier:
    """The verifier of `kb=`: its facts, the templates that locate a question's fact, and the
    subjects it may consult (`kb_coverage`)."""
    kb = load_kb(cfg.kb.path)
    covered = covered_subjects(kb, cfg.kb_coverage, cfg.kb_coverage_seed) if cfg.kb_coverage < 1 else None
    return KBVerifier(kb, OmegaConf.to_container(cfg.kb.relations), cfg.abstain_phrase, covered)


def covered_subjects(kb: KnowledgeBase, coverage: float, seed: int) -> frozenset[str]:
    """`coverage` of the KB's subjects (rounded, at least one), drawn by `seed`, normalized as
    the KB matches them."""
    subjects = kb.subjects()
    count = max(1, round(coverage * len(subjects)))
    return frozenset(normalize_text(subject) for subject in random.Random(seed).sample(subjects, count))


def score_file(
    records: list[dict[str, Any]], cfg: DictConfig, verifier: KBVerifier | None, threshold: float | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """The metrics of one file and, under kb_verify (abstain_uncertain, at `threshold`), its
    verified (selected) records (no verifier: classification, which needs no KB)."""
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
    # How well each uncertainty score tells wrong answers from right ones (generate writes them).
    detection = {"detection": judge_detectors(records, kb)} if any("uncertainty" in r for r in records) else {}
    if cfg.mitigation.name == "abstain_uncertain":
        selected = select_answers(records, cfg.mitigation.estimator, cfg.mitigation.kb_first, threshold, cfg.abstain_phrase, verifier, "predictions")
        metrics = {
            "before": score_predictions(records, kb),
            "after": score_predictions(selected, kb),
            "selection": {"estimator": cfg.mitigation.estimator, **selection_summary(records, selected, threshold)},
            **detection,
        }
        return metrics, selected
    if not verify:
        return {**score_predictions(records, kb), **detection}, None
    verified = verifier.apply_policy(records, cfg.mitigation.policy)
    metrics = {
        "before": score_predictions(records, kb),
        "after": score_predictions(verified, kb),
        "verification": verification_summary(verified, kb),
        **detection,
    }
    return metrics, verified


def draw_risk_coverage(records: list[dict[str, Any]], verifier: KBVerifier, path: Path) -> Path:
    """The risk-coverage plot of the records (every file's, pooled): a line per uncertainty
    score, and the point the KB verifier reaches when it abstains on what the KB contradicts."""
    from halluc_cli.scoring.plots import plot_risk_coverage  # matplotlib: imported only when plotting

    located = _with_subjects(records, verifier)
    curves = risk_coverage_curves(located, verifier.kb)
    verified = verifier.apply_policy(located, "abstain")
    answered = sum(not record["abstained"] for record in located)
    kept = [record for record in verified if not record["abstained"]]
    aliases = kb_aliases(verifier.kb)
    wrong = sum(not is_right(record, aliases) for record in kept)
    kb_point = (len(kept) / answered, wrong / len(kept)) if answered and kept else None
    return plot_risk_coverage(curves, kb_point, path)


def _with_subjects(records: list[dict[str, Any]], verifier: KBVerifier) -> list[dict[str, Any]]:
    """Records given the subject and relation their question names, when they lack them, so
    that free questions count in by_relation and are verified once."""
    located = []
    for record in records:
        found = None if record.get("relation") else verifier.locate(record)
        located.append({**record, "subject": found[0], "relation": found[1]} if found else record)
    return located


def scores_record(cfg: DictConfig, per_file: list[dict[str, Any]]) -> dict[str, Any]:
    """What scores.json holds: the task and mitigation, each file's entry, and the mean and
    95% interval of every metric over the files."""
    return {
        "task": cfg.task,
        "mitigation": OmegaConf.to_container(cfg.mitigation, resolve=True),
        "seeds": len(per_file),
        "interval": _interval_note(len(per_file)),
        "mean": aggregate_seeds([entry["metrics"] for entry in per_file]),
        "files": per_file,
    }


def _interval_note(seeds: int) -> str:
    if seeds == 1:
        return "one prediction file: each interval is the value itself (give several files for a 95% interval)"
    return f"mean and 95% t-interval (low, high) over {seeds} prediction files, a rate's clipped to [0, 1]"
