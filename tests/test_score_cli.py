"""`halluc score` end to end: metrics, each verification policy, seeds, and bad inputs."""

import json
from pathlib import Path

import pytest

from cli_helpers import run_cli

ABSTAIN = "I don't know"


def qa(id_: str, subject: str, answer: str, prediction: str, known: bool, free: bool = False) -> dict:
    """A QA prediction about a bundled-KB capital; `free` leaves subject and relation out."""
    record = {"id": id_, "question": f"What is the capital of {subject}?", "prediction": prediction,
              "answer": answer, "aliases": [], "known": known, "abstained": prediction == ABSTAIN}
    if not free:
        record.update(subject=subject, relation="capital")
    return record


# By hand: 2 correct (q1, q2 by accent folding), 1 abstained, 2 wrong (q4 the KB
# contradicts, q5 about a subject the KB lacks):
#   overall accuracy 2/5, abstention 1/5, hallucination 2/5 of all and 2/4 of answered
#   known (q1, q2, q3): 2/3 correct; unknown (q4, q5): 0 correct, 2/2 wrong
FIVE = [
    qa("q1", "France", "Paris", "Paris", True),
    qa("q2", "Brazil", "Brasília", "brasilia.", True, free=True),
    qa("q3", "Japan", "Tokyo", ABSTAIN, True),
    qa("q4", "Spain", "Madrid", "Lisbon", False, free=True),
    qa("q5", "Atlantis", "Poseidonia", "Atlantica", False),
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def score(tmp_path: Path, *overrides: str) -> dict:
    """Run `halluc score` into tmp_path/run; assert it succeeded and return scores.json."""
    result = run_cli("score", f"hydra.run.dir={tmp_path / 'run'}", *overrides)
    assert result.exit_code == 0, result.stderr + result.stdout
    return json.loads((tmp_path / "run" / "scores.json").read_text())


def means(tree: dict) -> dict:
    """The means of an aggregated score tree, for comparing with hand-computed values."""
    if "mean" in tree and "low" in tree:
        return tree["mean"]
    return {key: means(value) for key, value in tree.items()}


def test_qa_metrics_hand_computed(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "predictions.jsonl", FIVE)
    scores = score(tmp_path, f"predictions={path}")
    mean = means(scores["mean"])
    assert mean["overall"] == pytest.approx({"n": 5, "accuracy": 2 / 5, "abstention_rate": 1 / 5,
                                             "hallucination_rate": 2 / 5, "hallucination_rate_answered": 2 / 4,
                                             "answered_accuracy": 2 / 4})
    assert mean["by_known"]["known"]["accuracy"] == pytest.approx(2 / 3)
    assert mean["by_known"]["unknown"]["hallucination_rate_answered"] == 1.0
    assert mean["by_relation"]["capital"]["n"] == 5  # free questions matched to their relation
    assert scores["seeds"] == 1 and "interval is the value itself" in scores["interval"]
    assert scores["files"][0]["metrics"]["overall"]["accuracy"] == pytest.approx(2 / 5)
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert not (tmp_path / "run" / "predictions_verified.jsonl").exists()


@pytest.mark.parametrize(
    "policy, q4_prediction, after_accuracy, after_abstention",
    [
        ("flag", "Lisbon", 2 / 5, 1 / 5),  # marks only
        ("abstain", ABSTAIN, 2 / 5, 2 / 5),  # the contradicted q4 becomes an abstention
        ("correct", "Madrid", 3 / 5, 1 / 5),  # q4 gets the KB's answer, now right
    ],
)
def test_kb_verify_policies(tmp_path: Path, policy: str, q4_prediction: str, after_accuracy: float,
                            after_abstention: float) -> None:
    path = write_jsonl(tmp_path / "predictions.jsonl", FIVE)
    scores = score(tmp_path, f"predictions={path}", "mitigation=kb_verify", f"mitigation.policy={policy}")
    mean = means(scores["mean"])
    assert mean["before"]["overall"]["accuracy"] == pytest.approx(2 / 5)
    assert mean["after"]["overall"]["accuracy"] == pytest.approx(after_accuracy)
    assert mean["after"]["overall"]["abstention_rate"] == pytest.approx(after_abstention)
    # q4 contradicted and really wrong; q5 wrong but unverifiable: precision 1, recall 1/2
    assert mean["verification"] == {"supported": 2, "contradicted": 1, "unverifiable": 1, "abstained": 1,
                                    "precision": 1.0, "recall": 0.5}
    verified = [json.loads(line) for line in (tmp_path / "run" / "predictions_verified.jsonl").open()]
    assert [r["verified"] for r in verified] == ["supported", "supported", "abstained", "contradicted", "unverifiable"]
    assert verified[3]["prediction"] == q4_prediction
    assert verified[3]["subject"] == "Spain"  # read from its question


def test_several_files_give_mean_and_interval(tmp_path: Path) -> None:
    for seed, prediction in enumerate(["Paris", "Lyon"]):  # accuracy 1.0, then 0.5
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        write_jsonl(folder / "predictions.jsonl", [FIVE[0], qa("q6", "France", "Paris", prediction, True)])
    result = run_cli("score", f"predictions={tmp_path}/seed*/predictions.jsonl", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.exit_code == 0, result.stderr
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    # t(0.975, 1) * sd(1.0, 0.5) / sqrt(2) = 3.18 each side of 0.75: an accuracy's interval stops at 0 and 1
    assert scores["seeds"] == 2
    assert scores["mean"]["overall"]["accuracy"] == pytest.approx({"mean": 0.75, "low": 0.0, "high": 1.0, "n": 2})
    assert "0.750 [0.00, 1.00]" in result.stdout


def test_classification_task(tmp_path: Path) -> None:
    pairs = [("fact", "fact"), ("fact", "halluc"), ("halluc", "halluc"), ("halluc", "halluc")]
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "text": "t", "label": l, "prediction": p}
                                              for i, (l, p) in enumerate(pairs)])
    scores = score(tmp_path, f"predictions={path}", "task=classification")
    mean = means(scores["mean"])
    assert mean["error_rate"] == 0.25
    assert mean["by_class"]["fact"]["error_rate"] == 0.5
    assert mean["confusion"]["fact"] == {"fact": 1, "halluc": 1}


def test_freetext_factscore_before_and_after_correction(tmp_path: Path) -> None:
    texts = ["The capital of France is Paris. France is in Europe.", "The capital of Spain is Lisbon."]
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": "Tell me", "prediction": t}
                                              for i, t in enumerate(texts)])
    scores = score(tmp_path, f"predictions={path}", "task=freetext", "mitigation=kb_verify",
                   "mitigation.policy=correct")
    mean = means(scores["mean"])
    assert mean["before"]["factscore"] == pytest.approx((1 + 0) / 2)
    assert mean["after"]["factscore"] == 1.0


@pytest.mark.parametrize("continuation, status", [("Paris .", "supported"), ("Ngerulmud .", "contradicted")])
def test_freetext_reads_a_claim_across_prompt_and_continuation(tmp_path: Path, continuation: str, status: str) -> None:
    # A record as `halluc generate prompts=` writes it: the prompt beside the continuation alone.
    record = {"id": "prompt-0", "prompt": "The capital of France is", "prediction": continuation}
    path = write_jsonl(tmp_path / "p.jsonl", [record])
    scores = score(tmp_path, f"predictions={path}", "task=freetext")
    counts = means(scores["mean"])
    assert counts["claims"] == 1 and counts[status] == 1


# --- bad inputs: one line on stderr, exit status 2, no scores.json ------------------------


def _one_line_error(tmp_path: Path, overrides: list[str], *phrases: str) -> None:
    result = run_cli("score", f"hydra.run.dir={tmp_path / 'run'}", *overrides)
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert not (tmp_path / "run" / "scores.json").exists()


def test_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    broken = {key: value for key, value in FIVE[1].items() if key != "known"}
    path = write_jsonl(tmp_path / "p.jsonl", [FIVE[0], broken])
    _one_line_error(tmp_path, [f"predictions={path}"], "p.jsonl line 2", "missing field 'known'")


def test_wrong_type_is_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{**FIVE[0], "abstained": "no"}])
    _one_line_error(tmp_path, [f"predictions={path}"], "line 1", "'abstained' must be true or false")


def test_malformed_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(FIVE[0]) + "\n{not json\n", encoding="utf-8")
    _one_line_error(tmp_path, [f"predictions={path}"], "p.jsonl line 2: invalid JSON")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("\n", encoding="utf-8")
    _one_line_error(tmp_path, [f"predictions={path}"], "holds no predictions")


def test_predictions_not_given(tmp_path: Path) -> None:
    _one_line_error(tmp_path, [], "give predictions=<file.jsonl> or runs=<multirun dir>")


def test_missing_file_and_empty_glob(tmp_path: Path) -> None:
    _one_line_error(tmp_path, [f"predictions={tmp_path / 'nope.jsonl'}"], "no such file")
    _one_line_error(tmp_path, [f"predictions={tmp_path}/*.jsonl"], "matches no file")


def test_ids_that_do_not_match_the_questions(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", FIVE[:3] + [qa("x9", "Peru", "Lima", "Lima", False)])
    questions = write_jsonl(tmp_path / "questions.jsonl", [{"id": f"q{i}", "question": "?"} for i in range(1, 6)])
    _one_line_error(tmp_path, [f"predictions={path}", f"questions={questions}"],
                    "1 ids not among the questions (x9)", "2 questions without a prediction (q4, q5)")


def test_matching_ids_pass_the_questions_check(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", FIVE)
    questions = write_jsonl(tmp_path / "questions.jsonl", [{"id": f"q{i}"} for i in range(1, 6)])
    assert score(tmp_path, f"predictions={path}", f"questions={questions}")["seeds"] == 1


def test_duplicate_ids(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [FIVE[0], FIVE[0]])
    _one_line_error(tmp_path, [f"predictions={path}"], "line 2: id q1 repeats line 1")


@pytest.mark.parametrize(
    "overrides, phrase",
    [
        (["task=perplexity"], "task=perplexity is not a scoring task"),
        (["mitigation=kb_verify", "mitigation.policy=delete"], "Invalid value 'delete', expected one of [flag, abstain, correct]"),
        (["task=classification", "mitigation=kb_verify"], "with task=classification use mitigation=none"),
        (["predictions_file=x"], "predictions_file"),  # a misspelled key fails at composition
        (["kb_coverage=0.5"], "mitigation=none consults none"),
        (["kb_coverage=0"], "kb_coverage=0.0 is out of range"),
        (["mitigation=abstain_uncertain", "mitigation.calibration=c.jsonl", "mitigation.beside_kb=true"],
         "mitigation.beside_kb adds rows to the table of runs="),
    ],
)
def test_bad_settings(tmp_path: Path, overrides: list[str], phrase: str) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", FIVE)
    result = run_cli("score", f"predictions={path}", f"hydra.run.dir={tmp_path / 'run'}", *overrides)
    assert result.exit_code == 2 and phrase in result.stderr, result.stderr
    assert not (tmp_path / "run" / "scores.json").exists()
