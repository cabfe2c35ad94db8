"""scripts/probe_agreement.py: precision and recall of the probe's Unknown against the split."""

from __future__ import annotations

import pytest

from cli_helpers import import_script


def _record(subject: str, relation: str, category: str) -> dict:
    return {"subject": subject, "relation": relation, "category": category}


def test_precision_and_recall_of_unknown_per_relation() -> None:
    script = import_script("probe_agreement")
    records = [
        _record("A", "capital", "HighlyKnown"), _record("B", "capital", "Unknown"),
        _record("C", "capital", "Unknown"), _record("D", "capital", "WeaklyKnown"),
        _record("C", "continent", "MaybeKnown"), _record("D", "continent", "Unknown"),
    ]
    result = script.agreement(records, unknown_subjects={"B", "D"})
    capital = result["capital"]
    # Called Unknown: B (truly unknown) and C (known): precision 1/2; truly unknown B and D: recall 1/2.
    assert (capital["precision"][0], capital["recall"][0]) == (0.5, 0.5)
    assert capital["categories"]["WeaklyKnown"] == {"known": 0, "unknown": 1}
    assert result["continent"]["precision"][0] == result["continent"]["recall"][0] == 1.0
    assert result["all"]["facts"] == 6 and list(result)[-1] == "all"
    # WeaklyKnown counted as unknown too: D's capital joins the called, recall 2/2.
    wider = script.agreement(records, {"B", "D"}, ("Unknown", "WeaklyKnown"))
    assert (wider["capital"]["precision"][0], wider["capital"]["recall"][0]) == (2 / 3, 1.0)


def test_wilson_interval_holds_the_share_and_stays_in_0_1() -> None:
    script = import_script("probe_agreement")
    share, low, high = script.wilson(9, 10)
    assert low < share < high <= 1.0 and low == pytest.approx(0.596, abs=1e-3)
    assert script.wilson(0, 0) is None and script.wilson(0, 5)[1] == 0.0
