"""Hallucination metrics on hand-computed cases: matching, rates by group, seeds, classification."""

import math

import pytest

from halluc_cli.data.kb import Fact, KnowledgeBase
from halluc_cli.scoring.metrics import (
    NO_RELATION,
    SHARE,
    aggregate_seeds,
    classification_metrics,
    is_correct,
    mean_interval,
    nested_interval,
    score_predictions,
)


def qa(prediction: str, answer: str, known: bool, relation: str | None = "capital", abstained: bool = False,
       aliases: tuple[str, ...] | list[str] = ()) -> dict:
    record = {"id": prediction + answer, "question": "?", "prediction": prediction, "answer": answer,
              "aliases": list(aliases), "known": known, "abstained": abstained}
    if relation is not None:
        record["relation"] = relation
    return record


@pytest.mark.parametrize(
    "prediction, answers, expected",
    [
        ("Paris", ["Paris"], True),
        ("PARIS", ["Paris"], True),  # case
        ("the Brasília.", ["Brasilia"], True),  # article, accent, trailing period
        ("Sao Tome", ["São Tomé"], True),
        ("N'Djamena!", ["N’Djamena"], True),  # punctuation of either kind
        ("Bombay", ["Mumbai", "Bombay"], True),  # an alias
        ("Pari", ["Paris"], False),  # exact match, not substring...
        ("Paris, France", ["Paris"], False),  # ...either way
        ("", ["the"], False),  # nothing left after normalizing is never an answer
        ("Paris", [], False),
    ],
)
def test_is_correct_normalizes_then_matches_exactly(prediction: str, answers: list[str], expected: bool) -> None:
    assert is_correct(prediction, answers) is expected


# Six predictions; by hand:
#   1 known   capital    correct          4 unknown continent  wrong
#   2 known   capital    wrong            5 unknown capital    wrong
#   3 known   continent  abstained        6 unknown continent  correct (by its alias)
SIX = [
    qa("Paris", "Paris", True),
    qa("Lyon", "Madrid", True),
    qa("I don't know", "Europe", True, relation="continent", abstained=True),
    qa("Asia", "Europe", False, relation="continent"),
    qa("Rome", "Lima", False),
    qa("the Americas", "South America", False, relation="continent", aliases=["Americas"]),
]


def rates(accuracy: float, abstention: float, hallucination: float, answered: float | None, n: int) -> dict:
    return {"n": n, "accuracy": accuracy, "abstention_rate": abstention,
            "hallucination_rate": hallucination, "hallucination_rate_answered": answered,
            "answered_accuracy": None if abstention == 1 else accuracy / (1 - abstention)}


def test_score_predictions_hand_computed() -> None:
    scores = score_predictions(SIX)
    assert scores["overall"] == pytest.approx(rates(2 / 6, 1 / 6, 3 / 6, 3 / 5, 6))
    assert scores["by_known"]["known"] == pytest.approx(rates(1 / 3, 1 / 3, 1 / 3, 1 / 2, 3))
    assert scores["by_known"]["unknown"] == pytest.approx(rates(1 / 3, 0, 2 / 3, 2 / 3, 3))
    assert scores["by_relation"]["capital"] == pytest.approx(rates(1 / 3, 0, 2 / 3, 2 / 3, 3))
    assert scores["by_relation"]["continent"] == pytest.approx(rates(1 / 3, 1 / 3, 1 / 3, 1 / 2, 3))


def test_over_refusal_of_a_model_taught_to_abstain() -> None:
    # data.unknown_label=idk, by hand: 4 known questions, 1 refused (false abstention 1/4), 2 of the
    # 3 answered right; 4 unknown, 3 refused, the one answered wrong. Answered: 4 of 8, 2 right.
    idk = "I don't know"
    records = [qa("Paris", "Paris", True), qa("Lima", "Lima", True), qa("Oslo", "Rome", True),
               qa(idk, "Bern", True, abstained=True), qa("Kyiv", "Riga", False),
               *(qa(idk, answer, False, abstained=True) for answer in ("Baku", "Doha", "Male"))]
    scores = score_predictions(records)
    assert scores["by_known"]["known"]["abstention_rate"] == 1 / 4  # the false abstention rate
    assert scores["by_known"]["known"]["answered_accuracy"] == 2 / 3
    assert scores["overall"]["answered_accuracy"] == 2 / 4
    assert scores["overall"]["abstention_rate"] == 4 / 8
    assert scores["by_known"]["unknown"]["answered_accuracy"] == 0.0


def test_abstained_is_never_correct_and_nothing_answered_has_no_rate() -> None:
    scores = score_predictions([qa("Paris", "Paris", True, abstained=True)])
    assert scores["overall"] == rates(0.0, 1.0, 0.0, None, 1)


def test_empty_groups_are_left_out_and_missing_relations_grouped() -> None:
    scores = score_predictions([qa("Paris", "Paris", True, relation=None)])
    assert list(scores["by_known"]) == ["known"]
    assert list(scores["by_relation"]) == [NO_RELATION]


def test_kb_aliases_of_the_gold_answer_are_accepted() -> None:
    kb = KnowledgeBase([Fact("India", "capital", "New Delhi", ("Delhi",))])
    record = qa("Delhi", "New Delhi", True)
    assert score_predictions([record])["overall"]["accuracy"] == 0.0
    assert score_predictions([record], kb)["overall"]["accuracy"] == 1.0


def test_no_predictions_is_an_error() -> None:
    with pytest.raises(ValueError):
        score_predictions([])


def test_classification_error_rate_and_confusion() -> None:
    pairs = [("yes", "yes"), ("yes", "no"), ("no", "no"), ("no", "no"), ("no", "no"), ("no", "yes")]
    scores = classification_metrics([{"id": i, "label": l, "prediction": p} for i, (l, p) in enumerate(pairs)])
    assert scores["n"] == 6
    assert scores["error_rate"] == pytest.approx(2 / 6)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["by_class"] == {"no": {"n": 4, "error_rate": 0.25}, "yes": {"n": 2, "error_rate": 0.5}}
    assert scores["confusion"] == {"no": {"no": 3, "yes": 1}, "yes": {"no": 1, "yes": 1}}


def test_classification_labels_compare_as_strings() -> None:
    scores = classification_metrics([{"id": 0, "label": 1, "prediction": "1"}])
    assert scores["error_rate"] == 0.0


def test_mean_interval_hand_computed() -> None:
    stat = mean_interval([0.2, 0.4, 0.6])  # sd 0.2, t(0.975, 2) = 4.3027
    half = 4.3027 * 0.2 / math.sqrt(3)
    assert stat == pytest.approx({"mean": 0.4, "low": 0.4 - half, "high": 0.4 + half, "n": 3}, abs=1e-4)


@pytest.mark.parametrize("values", [[0.05, 0.95], [0.0, 1.0], [0.9, 1.0], [0.0, 0.1, 0.0], [0.02, 0.0, 0.01, 0.9]])
def test_a_rate_interval_stays_inside_0_1(values: list[float]) -> None:
    """Two seeds' t-interval spans 12.7 standard errors each side: clipped to [0, 1], not past it."""
    stat = mean_interval(values, SHARE)
    assert 0.0 <= stat["low"] <= stat["mean"] <= stat["high"] <= 1.0
    assert stat["low"] < stat["high"]


@pytest.mark.parametrize("value", [0.0, 0.3, 1.0])
def test_all_equal_values_give_a_point(value: float) -> None:
    assert mean_interval([value, value], SHARE) == {"mean": value, "low": value, "high": value, "n": 2}
    assert nested_interval([[value, value], [value]], SHARE) == {"mean": value, "low": value, "high": value, "n": 2}


def test_nested_interval_is_over_replicate_means() -> None:
    # one replicate: over its seeds; two or more: each replicate's seeds averaged first
    assert nested_interval([[0.2, 0.4, 0.6]]) == mean_interval([0.2, 0.4, 0.6])
    assert nested_interval([[0.2, 0.4], [0.5, 0.7], [0.8]], SHARE) == pytest.approx(mean_interval([0.3, 0.6, 0.8], SHARE))


def test_one_value_is_its_own_interval() -> None:
    assert mean_interval([0.5]) == {"mean": 0.5, "low": 0.5, "high": 0.5, "n": 1}


def test_aggregate_seeds_over_nested_scores() -> None:
    first = {"overall": {"accuracy": 0.5, "rate": None}, "by_relation": {"capital": {"accuracy": 0.2}}, "note": "x"}
    second = {"overall": {"accuracy": 0.7, "rate": 0.1}, "by_relation": {}}
    merged = aggregate_seeds([first, second])
    # sd of (0.5, 0.7) is 0.1 * sqrt(2), over sqrt(2) seeds 0.1, times t(0.975, 1) = 12.7: clipped to a share's bounds
    assert merged["overall"]["accuracy"] == pytest.approx({"mean": 0.6, "low": 0.0, "high": 1.0, "n": 2})
    assert merged["overall"]["rate"] == {"mean": 0.1, "low": 0.1, "high": 0.1, "n": 1}  # None is skipped
    assert merged["by_relation"]["capital"]["accuracy"]["n"] == 1  # only one seed had it
    assert "note" not in merged
