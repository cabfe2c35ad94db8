"""Metrics that judge hallucination detectors: per-answer uncertainty scores against correctness.

QA prediction records may carry `"uncertainty"`: {estimator name: score}, where a HIGHER score
means MORE uncertain. A detector is good when its score ranks wrong answers (hallucinations)
above right ones, the way LM-Polygraph benchmarks uncertainty estimators:
- `roc_auc`: the chance that a wrong answer scores above a right one (0.5 is chance)
- `prediction_rejection_ratio` (PRR): how much of the oracle's gain in risk the detector gets
  when the most uncertain answers are rejected (1 oracle, 0 random, below 0 worse than random)
- `risk_coverage`: the hallucination rate among the answers kept, for every coverage
- `expected_calibration_error`: for scores that read as a probability of being right
`judge_detectors` applies them to every estimator the records carry, overall, by known vs
unknown fact and by SliCK category.

Tied scores never favour a detector: AUROC counts a tie as half a pair, and the rejection
curves take the expected risk over a random order within each tie.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, groupby
from typing import Any

from halluc_cli.config import SLICK_CATEGORIES
from halluc_cli.data.kb import KnowledgeBase
from halluc_cli.errors import UserError
from halluc_cli.scoring.metrics import is_right, kb_aliases

# Estimators whose score turns into a probability that the answer is right, for the ECE. The
# others (entropies) have no probability scale to be calibrated against and get no ECE.
CONFIDENCE: dict[str, Callable[[float], float]] = {
    "neg_logprob": lambda score: math.exp(-score),  # the probability of the whole answer
    "neg_mean_logprob": lambda score: math.exp(-score),  # the geometric mean token probability
    "sample_disagreement": lambda score: 1 - score,  # the share of samples agreeing with it
    "hidden_probe": lambda score: 1 - score,  # the probe's P(right)
}


# --- metrics of one detector ---------------------------------------------------------------


def roc_auc(scores: Sequence[float], wrong: Sequence[bool]) -> float | None:
    """How well uncertainty `scores` rank the wrong answers above the right ones: the share of
    (wrong, right) pairs where the wrong one scores higher, a tie counting half (1.0 perfect,
    0.5 chance, 0.0 reversed). None when only one class is present.

    Computed exactly by the Mann-Whitney rank formula, tied scores sharing their mean rank.
    """
    _check_lengths(scores, wrong)
    n_wrong = sum(1 for is_wrong in wrong if is_wrong)
    n_right = len(wrong) - n_wrong
    if n_wrong == 0 or n_right == 0:
        return None
    rank_sum = sum(rank for rank, is_wrong in zip(_ranks(scores), wrong) if is_wrong)
    return (rank_sum - n_wrong * (n_wrong + 1) / 2) / (n_wrong * n_right)


def prediction_rejection_ratio(
    scores: Sequence[float], errors: Sequence[float], max_rejection: float = 1.0
) -> float | None:
    """Prediction rejection ratio (PRR) of uncertainty `scores` for per-answer losses `errors`
    in [0, 1] (1 = wrong), as LM-Polygraph defines it.

    Answers are rejected most uncertain first. With j of the n answers rejected, the risk is
    the mean loss of the n - j kept. Over the rejection levels j = 0 .. m - 1, with
    m = floor(max_rejection * n) (LM-Polygraph's levels: rates 0, 1/n, .., (m - 1)/n),

        PRR = sum_j (base - risk_detector(j)) / sum_j (base - risk_oracle(j))

    where base, the mean loss of all answers, is the risk of rejecting at random at every
    level (its exact expectation; LM-Polygraph averages 1000 shuffles), and the oracle rejects
    the largest losses first. The sums are the areas between the random curve and each
    other curve (the step 1/n cancels); with quality = 1 - loss this is LM-Polygraph's
    (PRA_detector - PRA_random) / (PRA_oracle - PRA_random). Rejecting all n answers leaves
    no risk to measure and is not a level. 1 is the oracle, 0 random, below 0 worse than
    random. None when the oracle gains nothing: every loss equal (no errors or all errors),
    or fewer than two levels.
    """
    _check_lengths(scores, errors)
    if not 0 < max_rejection <= 1:
        raise ValueError(f"max_rejection must be in (0, 1], got {max_rejection}")
    n = len(errors)
    kept = range(n - math.floor(max_rejection * n) + 1, n + 1)  # answers kept at each level
    if len(set(errors)) == 1 or len(kept) < 2:
        return None
    base = sum(errors) / n
    detector = _kept_risks(scores, errors)
    oracle = _kept_risks(errors, errors)  # the smallest losses kept
    detector_gain = sum(base - detector[k - 1] for k in kept)
    oracle_gain = sum(base - oracle[k - 1] for k in kept)
    return detector_gain / oracle_gain


def risk_coverage(scores: Sequence[float], wrong: Sequence[float]) -> list[tuple[float, float]]:
    """(coverage k/n, hallucination rate among the k answered) when only the k least uncertain
    answers are answered, for k = 1 .. n: the points of a risk-coverage plot. Within tied
    scores the rate is its expectation over a random order."""
    _check_lengths(scores, wrong)
    n = len(wrong)
    return [(k / n, risk) for k, risk in enumerate(_kept_risks(scores, wrong), start=1)]


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Expected calibration error of `confidences` (probabilities of being right, in [0, 1]):
    sum over equal-width bins of (bin size / n) * |accuracy in bin - mean confidence in bin|.

    Bin b holds confidences in [b/bins, (b+1)/bins), the last bin also holding 1.0.
    """
    _check_lengths(confidences, correct)
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if not all(0 <= confidence <= 1 for confidence in confidences):
        raise ValueError("confidences must lie in [0, 1]")
    binned: dict[int, list[tuple[float, bool]]] = defaultdict(list)
    for confidence, is_correct in zip(confidences, correct):
        binned[min(int(confidence * bins), bins - 1)].append((confidence, is_correct))
    # (size / n) * |accuracy - confidence| = |right answers - summed confidence| / n
    gaps = (abs(sum(ok for _, ok in members) - sum(c for c, _ in members)) for members in binned.values())
    return sum(gaps) / len(confidences)


def _check_lengths(values: Sequence[Any], labels: Sequence[Any]) -> None:
    if len(values) != len(labels):
        raise ValueError(f"{len(values)} scores but {len(labels)} labels")
    if not values:
        raise ValueError("no answers to judge")


def _tie_groups(scores: Sequence[float]) -> list[list[int]]:
    """Indices of `scores` in increasing order of score, grouped where the scores tie."""
    order = sorted(range(len(scores)), key=scores.__getitem__)
    return [list(group) for _, group in groupby(order, key=scores.__getitem__)]


def _ranks(scores: Sequence[float]) -> list[float]:
    """1-based ranks of `scores`; tied scores share the mean of their ranks."""
    ranks = [0.0] * len(scores)
    below = 0
    for group in _tie_groups(scores):
        for index in group:
            ranks[index] = below + (len(group) + 1) / 2
        below += len(group)
    return ranks


def _kept_risks(scores: Sequence[float], losses: Sequence[float]) -> list[float]:
    """Mean loss of the k least uncertain answers, for k = 1 .. n.

    Each answer counts with the mean loss of its tie group: that makes the result the
    expected risk over a random order within ties, so a tie neither helps nor hurts.
    """
    ordered: list[float] = []
    for group in _tie_groups(scores):
        ordered += [sum(losses[i] for i in group) / len(group)] * len(group)
    return [total / k for k, total in enumerate(accumulate(ordered), start=1)]


# --- judging the detectors of prediction records -------------------------------------------


@dataclass
class _Answer:
    """What judging needs of one answered QA record."""

    wrong: bool
    known: bool
    category: str | None
    uncertainty: Mapping[str, Any]


def judge_detectors(records: Iterable[Mapping[str, Any]], kb: KnowledgeBase | None = None) -> dict[str, Any]:
    """How well each uncertainty estimator in QA prediction records flags hallucinations.

    A record is wrong when answered and not correct (normalized exact match, as in
    `score_predictions`; with `kb`, the KB's aliases are accepted too). Abstained records
    make no claim and are left out. Estimators are the keys the records' "uncertainty" dicts
    carry; a record whose score for one is missing, None or NaN is left out of that one.

    Returns {"n": answered records, "abstained": records left out, "estimators": {name: {
    "overall": group, "by_known": {"known": group, "unknown": group}, "by_category":
    {category: group} (records with a category only), "known_vs_unknown_roc_auc": how well
    the score ranks unknown-fact questions above known-fact ones whatever the correctness,
    "ece" (estimators in CONFIDENCE only)}}}, each group {"n", "wrong", "roc_auc", "prr"};
    empty groups are left out. Raises UserError when records carry no uncertainty scores.
    """
    records = list(records)
    _check_uncertainty(records)
    aliases = kb_aliases(kb) if kb is not None else None
    answers = [_answer(record, aliases) for record in records if not record["abstained"]]
    if not answers:  # a model that abstains on everything: nothing to judge, not a mistake
        return {"n": 0, "abstained": len(records), "estimators": {}}
    names = dict.fromkeys(  # first-seen order
        name for answer in answers for name, score in answer.uncertainty.items() if _is_score(score)
    )
    return {
        "n": len(answers),
        "abstained": len(records) - len(answers),
        "estimators": {name: _judge_estimator(name, answers) for name in names},
    }


def _check_uncertainty(records: list[Mapping[str, Any]]) -> None:
    lacking = [record for record in records if not isinstance(record.get("uncertainty"), Mapping)]
    if len(lacking) == len(records):
        raise UserError(
            'the predictions carry no uncertainty scores; judging detectors needs records with an "uncertainty" '
            "field of estimator name -> score (higher = more uncertain)"
        )
    if lacking:
        raise UserError(
            f'{len(lacking)} of {len(records)} predictions carry no uncertainty scores (the first: id '
            f'{lacking[0].get("id")!r}); every record needs its "uncertainty" field to judge the detectors'
        )


def risk_coverage_curves(
    records: Iterable[Mapping[str, Any]], kb: KnowledgeBase | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Each estimator's risk-coverage points over the answered records (see `risk_coverage`)."""
    aliases = kb_aliases(kb) if kb is not None else None
    answers = [_answer(record, aliases) for record in records if not record["abstained"] and "uncertainty" in record]
    names = dict.fromkeys(name for answer in answers for name, score in answer.uncertainty.items() if _is_score(score))
    curves = {}
    for name in names:
        scored = [(float(a.uncertainty[name]), a.wrong) for a in answers if _is_score(a.uncertainty.get(name))]
        curves[name] = risk_coverage([score for score, _ in scored], [float(wrong) for _, wrong in scored])
    return curves


def _answer(record: Mapping[str, Any], aliases: Mapping[str, set[str]] | None) -> _Answer:
    # the same judgement as score_predictions, so `wrong` counts its hallucinations
    return _Answer(
        wrong=not is_right(record, aliases),
        known=bool(record["known"]),
        category=record.get("category") or None,
        uncertainty=record["uncertainty"],
    )


def _judge_estimator(name: str, answers: list[_Answer]) -> dict[str, Any]:
    """The judgement of one estimator (see `judge_detectors`), over the answers it scored."""
    scored = [
        (float(answer.uncertainty[name]), answer) for answer in answers if _is_score(answer.uncertainty.get(name))
    ]
    by_known: dict[str, list[tuple[float, _Answer]]] = defaultdict(list)
    by_category: dict[str, list[tuple[float, _Answer]]] = defaultdict(list)
    for score, answer in scored:
        by_known["known" if answer.known else "unknown"].append((score, answer))
        if answer.category:
            by_category[answer.category].append((score, answer))
    scores = [score for score, _ in scored]
    judgement: dict[str, Any] = {
        "overall": _group(scored),
        "by_known": {key: _group(by_known[key]) for key in ("known", "unknown") if key in by_known},
    }
    if by_category:
        judgement["by_category"] = {key: _group(by_category[key]) for key in sorted(by_category, key=_category_rank)}
    judgement["known_vs_unknown_roc_auc"] = roc_auc(scores, [not answer.known for _, answer in scored])
    if name in CONFIDENCE:
        confidences = [CONFIDENCE[name](score) for score in scores]
        if not all(0 <= confidence <= 1 for confidence in confidences):
            raise UserError(
                f"uncertainty score {name!r} gives a probability outside [0, 1] for some answers; "
                "a hand-made predictions file must keep each score in its range (see halluc_cli/uncertainty.py)"
            )
        judgement["ece"] = expected_calibration_error(confidences, [not answer.wrong for _, answer in scored])
    return judgement


def _is_score(value: Any) -> bool:
    # An estimator can fail on one answer (say, an entropy over a single sample): None or NaN.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _group(scored: list[tuple[float, _Answer]]) -> dict[str, Any]:
    scores = [score for score, _ in scored]
    wrong = [answer.wrong for _, answer in scored]
    return {
        "n": len(scored),
        "wrong": sum(wrong),
        "roc_auc": roc_auc(scores, wrong),
        "prr": prediction_rejection_ratio(scores, [float(is_wrong) for is_wrong in wrong]),
    }


def _category_rank(category: str) -> tuple[int, str]:
    """SliCK's order, most known first; a name of another scheme after them."""
    known_order = SLICK_CATEGORIES.index(category) if category in SLICK_CATEGORIES else len(SLICK_CATEGORIES)
    return known_order, category
