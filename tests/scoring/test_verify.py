"""Post-hoc KB verification: template matching, verdicts, each policy, claims and FActScore."""

import pytest

from halluc_cli.data.kb import Fact, KnowledgeBase
from halluc_cli.scoring.verify import KBVerifier, Verdict, compile_template, verification_summary

KB = KnowledgeBase([
    Fact("France", "capital", "Paris"),
    Fact("Brazil", "capital", "Brasília", ("Brasilia",)),
    Fact("France", "continent", "Europe"),
    Fact("Singapore", "continent", "Asia"),
    Fact("Singapore", "country_of_city", "Singapore"),
    Fact("Lyon", "country_of_city", "France"),
])
TEMPLATES = {
    "capital": {
        "questions": ["What is the capital of {subject}?"],
        "statements": ["The capital of {subject} is {object}.", "{subject}'s capital is {object}."],
    },
    "continent": {"questions": ["On which continent is {subject}?"], "statements": ["{subject} is in {object}."]},
    "country_of_city": {"questions": ["In which country is {subject}?"], "statements": ["{subject} is in {object}."]},
}
ABSTAIN = "I don't know"


@pytest.fixture
def verifier() -> KBVerifier:
    return KBVerifier(KB, TEMPLATES, ABSTAIN)


def prediction(question: str, answer: str, gold: str = "", abstained: bool = False, **fields) -> dict:
    return {"id": question, "question": question, "prediction": answer, "answer": gold or answer,
            "aliases": [], "known": True, "abstained": abstained, **fields}


def test_compiled_template_ignores_case_spaces_and_final_punctuation() -> None:
    pattern = compile_template("{subject}'s capital is {object}.")
    assert pattern.fullmatch("france's  CAPITAL is Paris").groupdict() == {"subject": "france", "object": "Paris"}
    assert pattern.fullmatch("France's capital is Paris!") is not None
    assert pattern.fullmatch("France's capital is") is None


def test_match_question(verifier: KBVerifier) -> None:
    assert verifier.match_question("What is the capital of France?") == ("France", "capital")
    assert verifier.match_question("  what is the capital of the Brazil ") == ("the Brazil", "capital")
    assert verifier.match_question("In which country is Atlantis?") == ("Atlantis", "country_of_city")
    assert verifier.match_question("Who wrote Hamlet?") is None


@pytest.mark.parametrize(
    "record, expected",
    [
        (prediction("What is the capital of France?", "paris."), Verdict("supported", "Paris")),
        (prediction("What is the capital of Brazil?", "Brasilia"), Verdict("supported", "Brasília")),  # alias
        (prediction("What is the capital of France?", "Lyon"), Verdict("contradicted", "Paris")),
        (prediction("What is the capital of Atlantis?", "Poseidonia"), Verdict("unverifiable")),  # subject
        (prediction("Who wrote Hamlet?", "Marlowe"), Verdict("unverifiable")),  # no template
        (prediction("?", "Paris", subject="France", relation="anthem"), Verdict("unverifiable")),  # relation
        (prediction("?", "Lyon", subject="France", relation="capital"), Verdict("contradicted", "Paris")),  # fields
        (prediction("What is the capital of France?", ABSTAIN, abstained=True), Verdict("abstained")),
    ],
)
def test_verify(verifier: KBVerifier, record: dict, expected: Verdict) -> None:
    assert verifier.verify(record) == expected


RECORDS = [
    prediction("What is the capital of France?", "Paris"),
    prediction("What is the capital of Brazil?", "Rio", gold="Brasília"),
    prediction("Who wrote Hamlet?", "Marlowe", gold="Shakespeare"),
]


def test_flag_keeps_every_answer_and_marks_it(verifier: KBVerifier) -> None:
    flagged = verifier.apply_policy(RECORDS, "flag")
    assert [r["prediction"] for r in flagged] == ["Paris", "Rio", "Marlowe"]
    assert [r["verified"] for r in flagged] == ["supported", "contradicted", "unverifiable"]
    assert flagged[1]["kb_answer"] == "Brasília" and "original_prediction" not in flagged[1]
    assert "verified" not in RECORDS[0]  # copies, not the caller's records


def test_abstain_replaces_contradicted_answers_with_the_phrase(verifier: KBVerifier) -> None:
    _, rio, hamlet = verifier.apply_policy(RECORDS, "abstain")
    assert (rio["prediction"], rio["abstained"], rio["original_prediction"]) == (ABSTAIN, True, "Rio")
    assert (hamlet["prediction"], hamlet["abstained"]) == ("Marlowe", False)  # unverifiable: untouched


def test_correct_replaces_contradicted_answers_with_the_kb_answer(verifier: KBVerifier) -> None:
    _, rio, _ = verifier.apply_policy(RECORDS, "correct")
    assert (rio["prediction"], rio["abstained"], rio["original_prediction"]) == ("Brasília", False, "Rio")


def test_unknown_policy_is_rejected(verifier: KBVerifier) -> None:
    with pytest.raises(ValueError, match="flag, abstain, correct"):
        verifier.apply_policy(RECORDS, "delete")


def test_verification_summary_precision_and_recall() -> None:
    records = [
        {**prediction("q1", "Paris"), "verified": "supported"},
        {**prediction("q2", "Rio", gold="Brasília"), "verified": "contradicted"},  # really wrong
        {**prediction("q3", "Lyon", gold="Lyon"), "verified": "contradicted"},  # the KB disagrees with the gold
        {**prediction("q4", "Marlowe", gold="Shakespeare"), "verified": "unverifiable"},  # wrong, missed
        {**prediction("q5", ABSTAIN, gold="Paris", abstained=True), "verified": "abstained"},
    ]
    summary = verification_summary(records)
    assert summary == {"supported": 1, "contradicted": 2, "unverifiable": 1, "abstained": 1,
                       "precision": 0.5, "recall": 0.5}


def test_summary_judges_the_original_answer_after_correction(verifier: KBVerifier) -> None:
    corrected = verifier.apply_policy(RECORDS, "correct")
    assert verification_summary(corrected)["precision"] == 1.0  # "Rio" was wrong, not "Brasília"


def test_extract_claims_prefers_the_reading_the_kb_supports(verifier: KBVerifier) -> None:
    text = "Singapore is in Asia. Lyon is in France.\nThe capital of France is Lyon. The weather is fine."
    claims = verifier.extract_claims(text)
    assert [(c.subject, c.relation, c.object, c.verdict.status) for c in claims] == [
        ("Singapore", "continent", "Asia", "supported"),
        ("Lyon", "country_of_city", "France", "supported"),
        ("France", "capital", "Lyon", "contradicted"),
    ]
    start, end = claims[2].object_span
    assert text[start:end] == "Lyon" and text[slice(*claims[2].sentence)] == "The capital of France is Lyon."


def test_factscore_hand_computed(verifier: KBVerifier) -> None:
    responses = [
        "France's capital is Paris. France is in Europe.",  # 2 of 2 supported
        "The capital of France is Lyon. Lyon is in France. Hello there.",  # 1 of 2
        "Nothing to check here.",  # no claim: left out of the mean
        "Atlantis is in Europe.",  # 0 of 1 (unverifiable counts as not supported)
    ]
    score = verifier.factscore([{"id": i, "prediction": text} for i, text in enumerate(responses)])
    assert score == {"n": 4, "responses_with_claims": 3, "claims": 5, "supported": 3, "contradicted": 1,
                     "unverifiable": 1, "factscore": pytest.approx((1 + 0.5 + 0) / 3)}


def test_claim_policies_rewrite_contradicted_claims(verifier: KBVerifier) -> None:
    records = [{"id": 1, "prediction": "France is in Europe. The capital of France is Lyon. Nice."},
               {"id": 2, "prediction": "The capital of France is Lyon."}]
    corrected = verifier.apply_claim_policy(records, "correct")
    assert corrected[0]["prediction"] == "France is in Europe. The capital of France is Paris. Nice."
    abstained = verifier.apply_claim_policy(records, "abstain")
    assert [r["prediction"] for r in abstained] == ["France is in Europe. Nice.", ABSTAIN]
    flagged = verifier.apply_claim_policy(records, "flag")
    assert flagged[1]["prediction"] == records[1]["prediction"]
    assert flagged[1]["claims"] == [{"subject": "France", "relation": "capital", "object": "Lyon",
                                     "status": "contradicted", "kb_answer": "Paris"}]


@pytest.mark.parametrize(
    "prompt, response, claims",
    [
        ("The capital of France is", "Paris .", [("France", "Paris", "supported")]),
        ("The capital of France is", "Lyon .", [("France", "Lyon", "contradicted")]),
        ("France's capital is Paris. The capital of Brazil is", "Rio .", [("Brazil", "Rio", "contradicted")]),
        ("Tell me", "The capital of France is Paris.", [("France", "Paris", "supported")]),
        ("The capital of France is Paris.", "Hello.", []),  # the prompt's claim is not the model's
    ],
)
def test_a_response_is_read_with_its_prompt(verifier: KBVerifier, prompt: str, response: str, claims: list) -> None:
    found = verifier.extract_claims(response, prompt)
    assert [(c.subject, c.object, c.verdict.status) for c in found] == claims
    for claim in found:
        assert response[slice(*claim.object_span)] == claim.object  # spans count in the response


def test_claim_policies_rewrite_the_response_not_its_prompt(verifier: KBVerifier) -> None:
    records = [{"id": 1, "prompt": "The capital of France is", "prediction": "Lyon . France is in Europe."}]
    assert verifier.apply_claim_policy(records, "correct")[0]["prediction"] == "Paris . France is in Europe."
    assert verifier.apply_claim_policy(records, "abstain")[0]["prediction"] == "France is in Europe."


def test_a_partial_kb_leaves_the_subjects_it_lacks_unverifiable() -> None:
    from halluc_cli.scoring.files import covered_subjects

    covered = covered_subjects(KB, 0.5, seed=0)
    assert len(covered) == 2 and covered == covered_subjects(KB, 0.5, seed=0)  # 2 of 4 subjects, drawn alike
    partial = KBVerifier(KB, TEMPLATES, ABSTAIN, covered)
    for subject in ("France", "Brazil", "Singapore", "Lyon"):
        fact = KB.facts[[f.subject for f in KB.facts].index(subject)]
        verdict = partial.check(subject, fact.relation, "Nowhere")
        assert verdict.status == ("contradicted" if subject.lower() in covered else "unverifiable")
        assert partial.check(subject.upper(), fact.relation, "Nowhere") == verdict  # matched as the KB matches
