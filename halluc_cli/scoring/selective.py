"""Selective answering (`halluc score mitigation=abstain_uncertain`): abstain where the model
is unsure, by a threshold on one uncertainty score chosen on held-out predictions, never on
the predictions it is applied to.

`choose_threshold` reads the calibration predictions (e.g. a finetune run's
`eval/<point>/valid_predictions.jsonl`: its validation questions, answered by the same
weights) and finds the threshold that meets the target there: answer the `level` share of the
questions the model is surest of (`target=coverage`), or keep the `level` share of its right
answers (`target=correct_kept`, the issue's "coverage that keeps >= 90% of the correct
answers"). `abstain_above` turns every answer scored above it into an abstention;
`select_answers` can let the KB decide first the answers it covers (`kb_first`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from halluc_cli.errors import UserError
from halluc_cli.scoring.metrics import is_right
from halluc_cli.scoring.verify import UNVERIFIABLE, KBVerifier


def estimator_scores(records: Sequence[Mapping[str, Any]], estimator: str, where: str) -> list[float]:
    """Each record's `estimator` score; a record without it is a UserError naming `where`."""
    scores = []
    for record in records:
        value = (record.get("uncertainty") or {}).get(estimator)
        if not isinstance(value, (int, float)) or math.isnan(value):
            known = sorted((record.get("uncertainty") or {}).keys())
            raise UserError(
                f"{where}: prediction {record.get('id')!r} has no uncertainty score {estimator!r} "
                f"(it has {', '.join(known) or 'none'}); choose mitigation.estimator among them, "
                "or generate the predictions again with this version"
            )
        scores.append(float(value))
    return scores


def choose_threshold(
    records: Sequence[Mapping[str, Any]], estimator: str, target: str, level: float, where: str
) -> float:
    """The largest score an answer may have and still be given, chosen on `records`; -inf (every
    answer withheld) where there is no right answer to keep (a model that got every held-out
    question wrong should not answer)."""
    answered = [record for record in records if not record["abstained"]]
    scores = estimator_scores(answered, estimator, where)
    if target == "correct_kept":
        right = [score for score, record in zip(scores, answered) if is_right(record)]
        if not right:
            return -math.inf
        scores = right
    if not scores:
        raise UserError(f"{where}: every calibration prediction abstained; no threshold can be chosen from them")
    ranked = sorted(scores)
    # The smallest threshold under which at least `level` of the scores fall.
    return ranked[max(math.ceil(level * len(ranked)) - 1, 0)]


def abstain_above(
    records: Sequence[Mapping[str, Any]], estimator: str, threshold: float, abstain_phrase: str, where: str
) -> list[dict[str, Any]]:
    """The records, each answer scored above `threshold` replaced by the abstain phrase."""
    scores = estimator_scores(records, estimator, where)
    selected = []
    for record, score in zip(records, scores):
        unsure = not record["abstained"] and score > threshold
        selected.append(
            {**record, "prediction": abstain_phrase, "abstained": True, "abstained_uncertain": True}
            if unsure else dict(record)
        )
    return selected


def select_answers(
    records: Sequence[Mapping[str, Any]], estimator: str, kb_first: bool, threshold: float, abstain_phrase: str,
    verifier: KBVerifier, where: str,
) -> list[dict[str, Any]]:
    """The records under the uncertainty rule (`estimator` above `threshold`: withheld) on every
    answer, or with `kb_first` on the answers the KB does not cover, the KB deciding the others
    (it withholds what it contradicts)."""
    if not kb_first:
        return abstain_above(records, estimator, threshold, abstain_phrase, where)
    checked = verifier.apply_policy(records, "abstain")
    unsure = abstain_above(checked, estimator, threshold, abstain_phrase, where)
    return [by_rule if kb["verified"] == UNVERIFIABLE else kb for kb, by_rule in zip(checked, unsure)]


def selection_summary(
    before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]], threshold: float
) -> dict[str, Any]:
    """The threshold (None: every answer withheld), how many answers the rule withheld, how
    many of those were wrong, and the share of the answers it kept."""
    withheld = [old for old, new in zip(before, after) if new.get("abstained_uncertain")]
    wrong = sum(not is_right(record) for record in withheld)
    answered = sum(not r["abstained"] for r in before)
    return {
        "threshold": threshold if math.isfinite(threshold) else None,  # JSON has no -inf
        "withheld": len(withheld),
        "withheld_wrong": wrong,
        "coverage": (answered - len(withheld)) / answered if answered else None,
    }
