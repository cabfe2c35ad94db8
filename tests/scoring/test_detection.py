"""Metrics that judge hallucination detectors, on hand-computed cases: AUROC, PRR, risk-coverage,
ECE, and judge_detectors over QA prediction records."""

import math

import pytest

from halluc_cli.errors import UserError
from halluc_cli.scoring.detection import (
    expected_calibration_error,
    judge_detectors,
    prediction_rejection_ratio,
    risk_coverage,
    roc_auc,
)

# Scores (higher = more uncertain) of four answers, the last two wrong.
WRONG = [0, 0, 1, 1]
PERFECT = [0.1, 0.2, 0.8, 0.9]
REVERSED = [0.9, 0.8, 0.2, 0.1]
MIXED = [0.1, 0.4, 0.35, 0.8]


# --- AUROC ---------------------------------------------------------------------------------


def test_roc_auc_perfect_reversed_and_tied() -> None:
    assert roc_auc(PERFECT, WRONG) == 1.0
    assert roc_auc(REVERSED, WRONG) == 0.0
    assert roc_auc([0.5] * 4, WRONG) == 0.5


def test_roc_auc_hand_computed() -> None:
    # (wrong, right) pairs: 0.35 > 0.1, 0.35 < 0.4, 0.8 > 0.1, 0.8 > 0.4: 3 of 4
    assert roc_auc(MIXED, WRONG) == 0.75
    # wrong 0.5 and 0.9 against right 0.1 and 0.5: 1 + 1/2 (the tie) + 1 + 1 = 3.5 of 4
    assert roc_auc([0.1, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == 0.875


def test_roc_auc_one_class_is_none() -> None:
    assert roc_auc([0.1, 0.2], [0, 0]) is None
    assert roc_auc([0.1, 0.2], [True, True]) is None


def test_mismatched_or_empty_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        roc_auc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="no answers"):
        prediction_rejection_ratio([], [])


# --- PRR -----------------------------------------------------------------------------------
# Rejecting j of n answers, most uncertain first, leaves the risk r(j) = mean loss of the
# n - j kept, j = 0 .. n-1; random rejection keeps the base risk (mean loss) at every j.
# PRR = sum_j (base - r_detector(j)) / sum_j (base - r_oracle(j)).
# WRONG: base 1/2; the oracle keeps [0,0,1,1], [0,0,1], [0,0], [0]: risks 1/2, 1/3, 0, 0,
# gains 0 + 1/6 + 1/2 + 1/2 = 7/6.


def test_prr_perfect_is_one_and_reversed_is_negative() -> None:
    assert prediction_rejection_ratio(PERFECT, WRONG) == pytest.approx(1.0)
    # reversed keeps [1,1,0,0], [1,1,0], [1,1], [1]: risks 1/2, 2/3, 1, 1: gains 0 - 1/6 - 1/2 - 1/2
    assert prediction_rejection_ratio(REVERSED, WRONG) == pytest.approx(-1.0)


def test_prr_tied_scores_are_random() -> None:
    assert prediction_rejection_ratio([0.5] * 4, WRONG) == pytest.approx(0.0)


def test_prr_hand_computed() -> None:
    # MIXED keeps, least uncertain first, losses [0 (0.1), 1 (0.35), 0 (0.4), 1 (0.8)]:
    # risks 2/4, 1/3, 1/2, 0; gains 0 + 1/6 + 0 + 1/2 = 2/3; PRR = (2/3) / (7/6) = 4/7
    assert prediction_rejection_ratio(MIXED, WRONG) == pytest.approx(4 / 7)
    # a tie of a right and a wrong answer at 0.5 counts each as loss 1/2: [0, 1/2, 1/2, 1]:
    # risks 1/2, 1/3, 1/4, 0; gains 0 + 1/6 + 1/4 + 1/2 = 11/12; PRR = (11/12) / (7/6) = 11/14
    assert prediction_rejection_ratio([0.1, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx(11 / 14)


def test_prr_fractional_losses() -> None:
    # losses [0.5, 0, 1] kept in that order, base 1/2: risks 1/2, 1/4, 1/2, gains 0 + 1/4 + 0;
    # the oracle keeps [0, 0.5, 1]: risks 1/2, 1/4, 0, gains 0 + 1/4 + 1/2; PRR = 1/4 / 3/4
    assert prediction_rejection_ratio([0.1, 0.2, 0.3], [0.5, 0.0, 1.0]) == pytest.approx(1 / 3)


def test_prr_max_rejection_looks_at_the_first_levels_only() -> None:
    # max_rejection 0.5 of 4: levels j = 0, 1; MIXED and the oracle both keep risk 1/3 at j = 1
    assert prediction_rejection_ratio(MIXED, WRONG, max_rejection=0.5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="max_rejection"):
        prediction_rejection_ratio(MIXED, WRONG, max_rejection=0)


def test_prr_undefined_without_both_outcomes_or_levels() -> None:
    assert prediction_rejection_ratio(PERFECT, [0, 0, 0, 0]) is None
    assert prediction_rejection_ratio(PERFECT, [1, 1, 1, 1]) is None
    assert prediction_rejection_ratio(PERFECT, WRONG, max_rejection=0.25) is None  # j = 0 only


# --- risk-coverage -------------------------------------------------------------------------


def test_risk_coverage_hand_computed() -> None:
    # answering the k least uncertain of MIXED: [0], [0, 1], [0, 1, 0], [0, 1, 0, 1]
    coverages, rates = zip(*risk_coverage(MIXED, WRONG))
    assert coverages == (0.25, 0.5, 0.75, 1.0)
    assert rates == pytest.approx((0.0, 0.5, 1 / 3, 0.5))


def test_risk_coverage_ties_take_the_expected_rate() -> None:
    assert risk_coverage([0.5, 0.5], [0, 1]) == [(0.5, 0.5), (1.0, 0.5)]


# --- ECE -----------------------------------------------------------------------------------


def test_ece_one_bin() -> None:
    assert expected_calibration_error([0.8] * 5, [1, 1, 1, 1, 0]) == pytest.approx(0.0)
    assert expected_calibration_error([0.8] * 4, [1, 1, 0, 0]) == pytest.approx(0.3)


def test_ece_two_bins() -> None:
    # bin [0.9, 1]: accuracy 1, confidence 0.9, weight 2/4; bin [0.2, 0.3): 1/2 against 0.2, weight 2/4
    assert expected_calibration_error([0.9, 0.9, 0.2, 0.2], [1, 1, 0, 1]) == pytest.approx(0.5 * 0.1 + 0.5 * 0.3)


def test_ece_confidence_one_is_in_the_last_bin_and_out_of_range_is_refused() -> None:
    assert expected_calibration_error([1.0, 0.95], [1, 1]) == pytest.approx(0.025)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.5], [1])


# --- judge_detectors -----------------------------------------------------------------------


def qa(prediction: str, answer: str, known: bool, uncertainty: dict | None, category: str | None = None,
       abstained: bool = False) -> dict:
    record = {"id": prediction + answer, "question": "?", "prediction": prediction, "answer": answer,
              "aliases": [], "known": known, "abstained": abstained}
    if uncertainty is not None:
        record["uncertainty"] = uncertainty
    if category is not None:
        record["category"] = category
    return record


# Six records; the abstained one is left out. neg_mean_logprob ranks both wrong answers above
# every right one; mean_entropy does not:
#   answer  known    category     neg_mean_logprob  mean_entropy
#   right   known    HighlyKnown  0.1               0.2
#   right   known    HighlyKnown  0.2               0.5
#   wrong   known    MaybeKnown   0.9               0.4
#   wrong   unknown  Unknown      1.5               0.9
#   right   unknown  Unknown      0.3               1.2
#   (abstained, unknown, Unknown, 5.0 and 5.0)
RECORDS = [
    qa("Paris", "Paris", True, {"neg_mean_logprob": 0.1, "mean_entropy": 0.2}, "HighlyKnown"),
    qa("Rome", "Rome", True, {"neg_mean_logprob": 0.2, "mean_entropy": 0.5}, "HighlyKnown"),
    qa("Lyon", "Berlin", True, {"neg_mean_logprob": 0.9, "mean_entropy": 0.4}, "MaybeKnown"),
    qa("Oslo", "Quito", False, {"neg_mean_logprob": 1.5, "mean_entropy": 0.9}, "Unknown"),
    qa("Lima", "Lima", False, {"neg_mean_logprob": 0.3, "mean_entropy": 1.2}, "Unknown"),
    qa("I don't know", "Accra", False, {"neg_mean_logprob": 5.0, "mean_entropy": 5.0}, "Unknown", abstained=True),
]


def group(n: int, wrong: int, auc: float | None, prr: float | None) -> dict:
    return {"n": n, "wrong": wrong, "roc_auc": auc, "prr": prr}


def test_judge_detectors_hand_computed() -> None:
    judged = judge_detectors(RECORDS)
    assert (judged["n"], judged["abstained"]) == (5, 1)
    assert list(judged["estimators"]) == ["neg_mean_logprob", "mean_entropy"]  # the records' keys

    logprob = judged["estimators"]["neg_mean_logprob"]
    assert logprob["overall"] == pytest.approx(group(5, 2, 1.0, 1.0))
    assert logprob["by_known"]["known"] == pytest.approx(group(3, 1, 1.0, 1.0))
    assert logprob["by_known"]["unknown"] == pytest.approx(group(2, 1, 1.0, 1.0))
    assert list(logprob["by_category"]) == ["HighlyKnown", "MaybeKnown", "Unknown"]  # SliCK's order
    assert logprob["by_category"]["HighlyKnown"] == group(2, 0, None, None)  # no wrong answer: undefined
    assert logprob["by_category"]["MaybeKnown"] == group(1, 1, None, None)
    assert logprob["by_category"]["Unknown"] == pytest.approx(group(2, 1, 1.0, 1.0))
    # unknown 1.5 beats the known 0.1, 0.2, 0.9; unknown 0.3 beats 0.1 and 0.2: 5 of 6 pairs
    assert logprob["known_vs_unknown_roc_auc"] == pytest.approx(5 / 6)
    # confidence exp(-x), each answer alone in its bin: the mean of |right - confidence|
    gaps = [1 - math.exp(-0.1), 1 - math.exp(-0.2), math.exp(-0.9), math.exp(-1.5), 1 - math.exp(-0.3)]
    assert logprob["ece"] == pytest.approx(sum(gaps) / 5)

    entropy = judged["estimators"]["mean_entropy"]
    # wrong 0.4 beats 0.2; wrong 0.9 beats 0.2 and 0.5: 3 of 6 pairs. Kept least uncertain first:
    # losses [0, 1, 0, 1, 0], base 2/5; risks (j = 0..4) 2/5, 1/2, 1/3, 1/2, 0: gains
    # 0 - 1/10 + 1/15 - 1/10 + 2/5 = 4/15; the oracle's risks 2/5, 1/4, 0, 0, 0: gains 27/20;
    # PRR = (4/15) / (27/20) = 16/81
    assert entropy["overall"] == pytest.approx(group(5, 2, 0.5, 16 / 81))
    assert "ece" not in entropy  # an entropy is no probability


def test_judge_detectors_leaves_out_missing_scores_and_absent_categories() -> None:
    records = [
        qa("Paris", "Paris", True, {"sample_disagreement": 0.0, "semantic_entropy": None}),
        qa("Lyon", "Berlin", True, {"sample_disagreement": 1.0, "semantic_entropy": float("nan")}),
        qa("Lima", "Lima", False, {"sample_disagreement": 0.5, "semantic_entropy": 0.7}),
    ]
    judged = judge_detectors(records)
    assert list(judged["estimators"]) == ["sample_disagreement", "semantic_entropy"]
    assert judged["estimators"]["semantic_entropy"]["overall"] == group(1, 0, None, None)
    disagreement = judged["estimators"]["sample_disagreement"]
    assert "by_category" not in disagreement
    assert disagreement["by_known"]["known"] == pytest.approx(group(2, 1, 1.0, 1.0))
    # confidences 1 - x: 1.0 right, 0.0 wrong, 0.5 right: gaps 0, 0, 1/2
    assert disagreement["ece"] == pytest.approx(0.5 / 3)


def test_judge_detectors_without_scores_is_a_user_error() -> None:
    with pytest.raises(UserError, match="^the predictions carry no uncertainty scores; "):
        judge_detectors([qa("Paris", "Paris", True, None), qa("Rome", "Lima", False, None)])
    with pytest.raises(UserError, match="1 of 2 predictions carry no uncertainty scores"):
        judge_detectors([qa("Paris", "Paris", True, {"neg_logprob": 0.1}), qa("Rome", "Lima", False, None)])


def test_judge_detectors_with_every_answer_abstained_judges_nothing() -> None:
    # A model that abstains on everything is a result to report, not a mistake.
    judged = judge_detectors([qa("I don't know", "Paris", True, {"neg_logprob": 0.1}, abstained=True)])
    assert judged == {"n": 0, "abstained": 1, "estimators": {}}


def test_a_hand_made_score_outside_its_range_is_one_clear_error() -> None:
    with pytest.raises(UserError, match="'sample_disagreement' gives a probability outside"):
        judge_detectors([qa("Paris", "Paris", True, {"sample_disagreement": 1.5}),
                         qa("Rome", "Lima", False, {"sample_disagreement": 0.2})])


def test_risk_coverage_curves_per_estimator() -> None:
    from halluc_cli.scoring.detection import risk_coverage_curves

    curves = risk_coverage_curves(RECORDS)
    assert set(curves) == {"neg_mean_logprob", "mean_entropy"}
    # neg_mean_logprob gives the 3 right answers first (0.1, 0.2, 0.3), then the wrong 0.9 and 1.5.
    assert curves["neg_mean_logprob"] == [(0.2, 0.0), (0.4, 0.0), (0.6, 0.0), (0.8, 0.25), (1.0, 0.4)]
