"""Selective answering: a threshold chosen on held-out predictions, applied to others."""

from __future__ import annotations

import pytest

from halluc_cli.errors import UserError
from halluc_cli.scoring.selective import abstain_above, choose_threshold, selection_summary


def qa(prediction: str, answer: str, score: float | None, abstained: bool = False) -> dict:
    record = {"id": prediction, "question": "q", "prediction": prediction, "answer": answer, "aliases": [],
              "known": True, "abstained": abstained}
    if score is not None:
        record["uncertainty"] = {"neg_mean_logprob": score}
    return record


# Right answers at 0.1, 0.2, 0.3, 0.4 (the 4th least sure), wrong ones at 0.35 and 0.9.
CALIBRATION = [qa("a", "a", 0.1), qa("b", "b", 0.2), qa("c", "c", 0.3), qa("d", "d", 0.4),
               qa("x", "y", 0.35), qa("z", "w", 0.9), qa("I don't know", "v", 5.0, abstained=True)]


def test_thresholds_for_each_target() -> None:
    # Keep 75% of the 4 right answers: the 3rd least uncertain right answer, 0.3.
    assert choose_threshold(CALIBRATION, "neg_mean_logprob", "correct_kept", 0.75, "cal") == 0.3
    assert choose_threshold(CALIBRATION, "neg_mean_logprob", "correct_kept", 1.0, "cal") == 0.4
    # Answer half of the 6 answered questions: the 3rd smallest score, 0.3.
    assert choose_threshold(CALIBRATION, "neg_mean_logprob", "coverage", 0.5, "cal") == 0.3


def test_answers_above_the_threshold_abstain() -> None:
    test = [qa("a", "a", 0.2), qa("x", "y", 0.5), qa("I don't know", "v", 0.9, abstained=True)]
    selected = abstain_above(test, "neg_mean_logprob", 0.3, "I don't know", "test")
    assert [r["abstained"] for r in selected] == [False, True, True]
    assert selected[1]["prediction"] == "I don't know" and selected[1]["abstained_uncertain"]
    assert selection_summary(test, selected, 0.3) == {"threshold": 0.3, "withheld": 1, "withheld_wrong": 1, "coverage": 0.5}
    assert selection_summary(test, abstain_above(test, "neg_mean_logprob", float("-inf"), "I don't know", "t"),
                             float("-inf"))["threshold"] is None


def test_a_missing_score_names_the_file_and_the_scores_there() -> None:
    with pytest.raises(UserError, match=r"cal.jsonl: prediction 'a' has no uncertainty score 'semantic_entropy' \(it has neg_mean_logprob\)"):
        choose_threshold([qa("a", "a", 0.1)], "semantic_entropy", "coverage", 0.5, "cal.jsonl")
    # No right answer to keep: withhold everything.
    assert choose_threshold([qa("x", "y", 0.1)], "neg_mean_logprob", "correct_kept", 0.9, "cal") == float("-inf")


def test_the_kb_decides_what_it_covers_and_the_rule_the_rest() -> None:
    from halluc_cli.data.kb import Fact, KnowledgeBase
    from halluc_cli.scoring.selective import select_answers
    from halluc_cli.scoring.verify import KBVerifier

    verifier = KBVerifier(KnowledgeBase([Fact("France", "capital", "Paris"), Fact("Peru", "capital", "Lima")]), {},
                          "I don't know")
    records = [
        {**qa("Paris", "Paris", 0.9), "subject": "France", "relation": "capital"},  # supported, unsure: given
        {**qa("Quito", "Lima", 0.1), "subject": "Peru", "relation": "capital"},  # contradicted, sure: withheld
        {**qa("Oslo", "Bergen", 0.9), "subject": "Atlantis", "relation": "capital"},  # not covered, unsure: withheld
        {**qa("Nuuk", "Nuuk", 0.1), "subject": "Greenland", "relation": "capital"},  # not covered, sure: given
    ]
    selected = select_answers(records, "neg_mean_logprob", True, 0.5, "I don't know", verifier, "test")
    assert [r["abstained"] for r in selected] == [False, True, True, False]
    plain = select_answers(records, "neg_mean_logprob", False, 0.5, "I don't know", verifier, "test")
    assert [r["abstained"] for r in plain] == [True, False, True, False]
