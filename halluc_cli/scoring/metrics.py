"""Hallucination metrics of predictions (DESIGN.md, "Metric definitions").

QA predictions, each judged correct (normalized exact match against the answer and its
aliases), abstained, or wrong (answered and not correct):
- accuracy: correct / all
- abstention rate: abstained / all
- hallucination rate: wrong / all, and wrong / answered
- answered accuracy: correct / answered (Gekhman et al. report R-Tuning's IDK model by it,
  beside the share answered, 1 - abstention rate)
each overall, by known vs unknown fact, by relation, and by SliCK category where the
examples carry one (data.known_from=probe). Classification predictions: the
error rate mean(prediction != label) of the seed articles, with a confusion matrix. Several
prediction files (seeds) give a mean with a 95% t-interval for every number, a rate's
kept inside [0, 1].

Over-refusal (data.unknown_label=idk, CRaFT): the known group's abstention rate is the false
abstention rate, the share of questions about facts the model read that it now refuses.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from halluc_cli.config import SLICK_CATEGORIES
from halluc_cli.data.kb import KnowledgeBase
from halluc_cli.data.normalize import normalize_text

NO_RELATION = "(none)"  # the by_relation group of records whose relation is unknown

SHARE = (0.0, 1.0)  # the bounds of a rate or probability
DIFFERENCE = (-1.0, 1.0)  # the bounds of a difference of two shares
# The numbers of a scores.json that are shares of questions, answers or claims, or
# probabilities (ROC-AUC, calibration error): their intervals stay inside SHARE. Counts,
# thresholds and PRR (which can be negative) are not bounded.
SHARES = frozenset({
    "accuracy", "abstention_rate", "hallucination_rate", "hallucination_rate_answered", "answered_accuracy",
    "error_rate", "coverage",
    "precision", "recall", "factscore", "roc_auc", "known_vs_unknown_roc_auc", "ece",
})


def is_correct(prediction: str, answers: Iterable[str]) -> bool:
    """Whether `prediction` equals one of `answers` after `normalize_text` (case, accents,
    punctuation, articles): "the Brasília." matches "Brasilia"; "Paris, France" does not
    match "Paris" (exact match, never substring)."""
    predicted = normalize_text(prediction)
    return bool(predicted) and any(predicted == normalize_text(answer) for answer in answers)


def kb_aliases(kb: KnowledgeBase) -> dict[str, set[str]]:
    """Normalized object -> normalized surface forms (object and aliases) of KB facts with that
    object, so that a gold answer "Brasília" also accepts the KB's alias "Brasilia"."""
    forms: dict[str, set[str]] = defaultdict(set)
    for fact in kb.facts:
        forms[normalize_text(fact.object)].update(normalize_text(form) for form in fact.surface_forms)
    return dict(forms)


def accepted_answers(record: Mapping[str, Any], aliases: Mapping[str, set[str]] | None = None) -> set[str]:
    """Normalized answers that count as correct for a QA record: its answer, its aliases and,
    given `kb_aliases`, the KB's aliases of its answer."""
    accepted = {normalize_text(form) for form in (record["answer"], *record.get("aliases", ()))}
    if aliases is not None:
        accepted |= aliases.get(normalize_text(record["answer"]), set())
    return accepted


def is_right(record: Mapping[str, Any], aliases: Mapping[str, set[str]] | None = None) -> bool:
    """Whether a QA record's prediction is one of its accepted answers (`accepted_answers`):
    the one judgement every score of right and wrong answers uses."""
    return normalize_text(record["prediction"]) in accepted_answers(record, aliases)


@dataclass
class _Tally:
    """Counts of one group of QA predictions."""

    n: int = 0
    correct: int = 0
    abstained: int = 0
    wrong: int = 0  # answered and not correct: a hallucination

    def add(self, abstained: bool, correct: bool) -> None:
        self.n += 1
        self.abstained += abstained
        self.correct += correct
        self.wrong += not abstained and not correct

    def rates(self) -> dict[str, Any]:
        answered = self.n - self.abstained
        return {
            "n": self.n,
            "accuracy": self.correct / self.n,
            "abstention_rate": self.abstained / self.n,
            "hallucination_rate": self.wrong / self.n,
            # None, not 0: with nothing answered there is no rate to report
            "hallucination_rate_answered": self.wrong / answered if answered else None,
            "answered_accuracy": self.correct / answered if answered else None,
        }


def score_predictions(records: Iterable[Mapping[str, Any]], kb: KnowledgeBase | None = None) -> dict[str, Any]:
    """Accuracy, abstention rate and hallucination rates of QA prediction records.

    Returns {"overall": group, "by_known": {"known": group, "unknown": group},
    "by_relation": {relation: group}, and for records with a SliCK category (data.known_from=probe)
    "by_category": {category: group}}, each group {n, accuracy, abstention_rate,
    hallucination_rate, hallucination_rate_answered, answered_accuracy}; empty groups are left out. An
    abstained record is never correct, whatever its prediction says. With `kb`, the KB's
    aliases of each gold answer are accepted too.
    """
    aliases = kb_aliases(kb) if kb is not None else None
    overall = _Tally()
    by_known: dict[str, _Tally] = defaultdict(_Tally)
    by_relation: dict[str, _Tally] = defaultdict(_Tally)
    by_category: dict[str, _Tally] = defaultdict(_Tally)
    for record in records:
        abstained = bool(record["abstained"])
        correct = not abstained and is_right(record, aliases)
        for tally in (
            overall,
            by_known["known" if record["known"] else "unknown"],
            by_relation[record.get("relation") or NO_RELATION],
        ):
            tally.add(abstained, correct)
        if record.get("category"):
            by_category[record["category"]].add(abstained, correct)
    if overall.n == 0:
        raise ValueError("no predictions to score")
    scores = {
        "overall": overall.rates(),
        "by_known": {key: by_known[key].rates() for key in ("known", "unknown") if key in by_known},
        "by_relation": {key: by_relation[key].rates() for key in sorted(by_relation)},
    }
    if by_category:  # SliCK's order, most known first; a name of another scheme after them
        rank = lambda key: (SLICK_CATEGORIES.index(key) if key in SLICK_CATEGORIES else len(SLICK_CATEGORIES), key)  # noqa: E731
        scores["by_category"] = {key: by_category[key].rates() for key in sorted(by_category, key=rank)}
    return scores


def classification_metrics(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Error rate mean(prediction != label) of labelled predictions, the seed articles'
    hallucination measure, with accuracy, per-class error rates and the confusion matrix
    (`confusion[label][prediction]` = count). Labels compare as strings, so 1 and "1" agree.
    """
    confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for record in records:
        confusion[str(record["label"])][str(record["prediction"])] += 1
    totals = {label: sum(row.values()) for label, row in confusion.items()}
    n = sum(totals.values())
    if n == 0:
        raise ValueError("no predictions to score")
    errors = {label: totals[label] - row.get(label, 0) for label, row in confusion.items()}
    return {
        "n": n,
        "error_rate": sum(errors.values()) / n,
        "accuracy": 1 - sum(errors.values()) / n,
        "by_class": {
            label: {"n": totals[label], "error_rate": errors[label] / totals[label]} for label in sorted(confusion)
        },
        "confusion": {label: dict(sorted(confusion[label].items())) for label in sorted(confusion)},
    }


def mean_interval(values: Sequence[float], bounds: tuple[float, float] | None = None) -> dict[str, float | int]:
    """Mean of `values` with its 95% t-interval (scipy's Student t quantile), clipped to
    `bounds`: {mean, low, high, n}.

    Clipping keeps the interval's coverage (the true mean of a rate lies in [0, 1]) while two
    seeds' t-interval, 12.7 standard errors to each side, would otherwise leave it. With
    one value, or all values equal, there is no spread to estimate: the interval is the mean.
    """
    if not values:
        raise ValueError("no values to average")
    mean = statistics.fmean(values)
    half = 0.0
    if len(values) > 1:
        from scipy import stats  # a second to import: only several seeds need it

        half = float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "low": low, "high": high, "n": len(values)}


def nested_interval(
    by_replicate: Sequence[Sequence[float]], bounds: tuple[float, float] | None = None
) -> dict[str, float | int]:
    """Mean and 95% interval of values nested as fine-tuning seeds within pretraining replicates.

    Seeds of one pretrained model share its split and weights, so they are not independent
    draws of the experiment: with two replicates or more, each replicate's seeds are averaged
    and the t-interval is over the replicate means (n = replicates). With one replicate the
    interval is over its seeds (n = seeds) and holds for that pretrained model only.
    """
    filled = [list(values) for values in by_replicate if values]
    if len(filled) == 1:
        return mean_interval(filled[0], bounds)
    return mean_interval([statistics.fmean(values) for values in filled], bounds)


def aggregate_seeds(scores: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and 95% interval of every number across the score dicts of several seeds.

    The dicts share a nested shape (e.g. from `score_predictions`); each numeric leaf becomes
    `mean_interval` over the seeds that have it (a relation missing from one file, or a rate
    that is None there, is averaged over the others; `n` in the result says over how many),
    a share's (SHARES) kept inside [0, 1]. Strings and lists are left out. With one seed the
    interval is the value itself.
    """
    if not scores:
        raise ValueError("no scores to aggregate")
    merged: dict[str, Any] = {}
    keys = dict.fromkeys(key for score in scores for key in score)  # first-seen order
    for key in keys:
        values = [score[key] for score in scores if score.get(key) is not None]
        if values and all(isinstance(value, Mapping) for value in values):
            merged[key] = aggregate_seeds(values)
        elif values and all(is_number(value) for value in values):
            merged[key] = mean_interval([float(value) for value in values], SHARE if key in SHARES else None)
    return merged


def is_number(value: Any) -> bool:
    """A number and not a bool (JSON true is no count)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
