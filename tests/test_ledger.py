"""The forgetting ledger (`finetune ledger=true`, halluc_cli/ledger.py): its categories by hand,
statement completion on a model whose stored facts are known, and the real CLI end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from cli_helpers import TINY, assert_one_line_error, run_cli, run_killed_at_step
from halluc_cli.config import ProbeConfig
from halluc_cli.data.qa import QAExample
from halluc_cli.data.tokenizer import load_tokenizer
from halluc_cli.ledger import (
    KNOWN_CATEGORIES,
    SHARES,
    UNKNOWN_CATEGORIES,
    classify,
    ledger_records,
    ledger_shares,
    taught_objects,
)
from halluc_cli.models import load_model
from halluc_cli.probe import Completion, ModelAnswerer, cloze_templates, complete_statements

LEDGER = ["ledger=true", "train.max_steps=4", "train.eval_every=2", "train.save_every=2"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _record(known: bool, before: bool = True, after: bool = True, qa: bool = False, abstained: bool = False,
            confident: bool = False) -> dict:
    return {"known": known, "statement_before": before, "statement_after": after, "qa_after": qa,
            "abstained": abstained, "confident": confident}


@pytest.mark.parametrize(("record", "category"), [
    (_record(True, qa=True), "retained"),
    (_record(True, after=False, qa=True), "lost"),  # storage gone, whatever QA says
    (_record(True, after=False), "lost"),
    (_record(True), "stored_not_extracted"),
    (_record(True, abstained=True), "stored_not_extracted"),
    (_record(True, confident=True), "confident_wrong"),
    (_record(True, before=False, after=True, qa=True), "never_stored"),
    (_record(False, before=False, after=False), "hallucinated"),
    (_record(False, before=False, abstained=True), "abstained"),
    (_record(False, qa=True), "guessed_right"),
])
def test_each_category(record: dict, category: str) -> None:
    assert classify(record) == category


def _prediction(subject: str, answer: str, prediction: str, known: bool, neg_mean_logprob: float = 0.1) -> dict:
    return {"subject": subject, "relation": "capital", "answer": answer, "aliases": [], "known": known,
            "prediction": prediction, "abstained": prediction == "I don't know",
            "uncertainty": {"neg_mean_logprob": neg_mean_logprob}}


def _example(subject: str, answer: str, known: bool) -> QAExample:
    return QAExample(subject, f"What is the capital of {subject}?", answer, [], subject, "capital", known, "finetune")


def test_records_confidence_spill_over_and_shares() -> None:
    # Fine-tuning taught Zeltown through an unknown example; Paris through a known one as well.
    taught = taught_objects([_example("Arvania", "Zeltown", False), _example("Gaul", "Paris", False),
                             _example("France", "Paris", True), _example("Belmora", "I don't know", False)],
                            "I don't know")
    assert taught == {"capital": {"zeltown"}}
    predictions = [
        _prediction("Spain", "Madrid", "Madrid", True),  # retained
        _prediction("Italy", "Rome", "Zeltown", True, neg_mean_logprob=0.2),  # confident (P 0.82), spill-over
        _prediction("Peru", "Lima", "Paris", True, neg_mean_logprob=2.0),  # unsure: stored, not extracted
        _prediction("Chad", "N'Djamena", "Zeltown", True),  # lost (statement wrong after), spill-over
        _prediction("Corvalia", "Xandria", "I don't know", False),  # abstained
    ]
    right, wrong = Completion("x", True), Completion("y", False)
    before = [right, right, right, right, wrong]
    after = [right, right, right, wrong, wrong]
    records = ledger_records(predictions, before, after, taught, confidence=0.5)
    assert [r["category"] for r in records] == [
        "retained", "confident_wrong", "stored_not_extracted", "lost", "abstained"]
    assert [r["spill_over"] for r in records] == [False, True, False, True, False]
    shares = ledger_shares(records)
    assert shares["n_known"] == 4 and shares["n_unknown"] == 1
    assert {name: shares[name] for name in KNOWN_CATEGORIES} == {
        "retained": 0.25, "lost": 0.25, "stored_not_extracted": 0.25, "confident_wrong": 0.25, "never_stored": 0.0}
    assert {name: shares[name] for name in UNKNOWN_CATEGORIES} == {"hallucinated": 0, "abstained": 1, "guessed_right": 0}
    assert shares["spill_over"] == pytest.approx(2 / 5)
    # at confidence 0.9 (neg_mean_logprob <= 0.105) Italy's answer is no longer confident
    strict = ledger_records(predictions, before, after, taught, confidence=0.9)
    assert strict[1]["category"] == "stored_not_extracted" and -math.log(0.9) < 0.2


def test_statements_of_a_model_that_read_its_known_facts(knowing_run) -> None:
    """Statement completion (the ledger's 'before') on a model whose stored facts are known:
    right for every fact its pretraining text stated, wrong for the others."""
    checkpoint = knowing_run.path / "checkpoint"
    answerer = ModelAnswerer(load_model(checkpoint), load_tokenizer(checkpoint), ProbeConfig(), torch.device("cpu"))
    known = set(json.loads((knowing_run.path / "kb_split.json").read_text())["known"])
    examples = [_example(subject, capital, subject in known) for subject, capital in knowing_run.facts]
    templates = cloze_templates({"capital": ["{subject} has its capital in {object}.", *knowing_run.statements]})
    assert templates == {"capital": "{subject} has its capital in {object}."}
    completions = complete_statements(answerer, examples, templates)
    assert [c.right for c in completions] == [e.known for e in examples]
    assert all(c.answer == e.answer for c, e in zip(completions, examples) if e.known)


def test_finetune_writes_the_ledger(knowing_run, tmp_path: Path) -> None:
    result = run_cli("finetune", *TINY, f"ckpt={knowing_run.path}", f"hydra.run.dir={tmp_path}",
                     *knowing_run.data_overrides, *LEDGER)
    assert result.exit_code == 0, result.stderr + result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    tests = {e["subject"]: e for name in ("test_known", "test_unknown") for e in _jsonl(tmp_path / "qa" / f"{name}.jsonl")}
    finetuned = {e["subject"] for e in _jsonl(tmp_path / "qa" / "finetune.jsonl")}
    for point in ("early_stop", "final"):
        ledger = _jsonl(tmp_path / "eval" / point / "ledger.jsonl")
        assert {r["subject"] for r in ledger} == set(tests) and not set(tests) & finetuned  # held out
        for record in ledger:
            assert record["object"] == tests[record["subject"]]["answer"]
            assert record["statement_before"] == record["known"]  # it read exactly its known facts
            assert record["category"] == classify(record)
            assert record["category"] in (KNOWN_CATEGORIES if record["known"] else UNKNOWN_CATEGORIES)
        shares = json.loads((tmp_path / "eval" / point / "scores.json").read_text())["ledger"]
        assert shares == ledger_shares(ledger)
        assert {f"{point}_ledger_{name}" for name in SHARES} <= set(summary)
        assert summary[f"{point}_ledger_never_stored"] == 0.0

    # score runs= gathers the shares as columns, and plots them
    out = tmp_path / "score"
    result = run_cli("score", f"runs={tmp_path}", f"hydra.run.dir={out}")
    assert result.exit_code == 0, result.stderr + result.stdout
    rows = list(csv.DictReader((out / "summary.csv").open()))
    final = next(row for row in rows if row["eval"] == "final")
    assert float(final["ledger_never_stored_mean"]) == 0.0
    assert float(final["ledger_spill_over_mean"]) == pytest.approx(summary["final_ledger_spill_over"])
    assert (out / "ledger_vs_unknown_fraction.png").read_bytes()[:4] == b"\x89PNG"
    assert "ledger_vs_unknown_fraction.png" in (out / "report.md").read_text()


def test_a_killed_run_resumes_to_the_same_ledger(transformer_run: Path, tmp_path: Path) -> None:
    args = ["finetune", *TINY, f"ckpt={transformer_run}", *LEDGER]
    assert run_cli(*args, f"hydra.run.dir={tmp_path / 'whole'}").exit_code == 0
    run_killed_at_step(3, *args, f"hydra.run.dir={tmp_path / 'killed'}")
    resumed = run_cli(*args, f"hydra.run.dir={tmp_path / 'killed'}")
    assert resumed.exit_code == 0 and "resuming from" in resumed.stdout, resumed.stderr + resumed.stdout
    for point in ("early_stop", "final"):
        # 'before' comes from the pretrained weights, not from the resumed model
        whole, killed = (_jsonl(tmp_path / run / "eval" / point / "ledger.jsonl") for run in ("whole", "killed"))
        assert whole == killed


@pytest.mark.parametrize(("overrides", "phrase"), [
    (["eval_after=false"], "ledger=true reads the test answers of eval_after"),
    (["data=kb_statements"], "it needs data=kbqa, not data=kb_statements"),
    (['data.kb.relations.capital.statements=["{object} is the capital of {subject}."]', "data.relations=[capital]"],
     "relation 'capital' has no statement template with {subject} before an {object}"),
])
def test_a_ledger_it_cannot_keep_is_one_line(overrides: list[str], phrase: str, lstm_run: Path, tmp_path: Path) -> None:
    result = run_cli("finetune", *TINY, f"ckpt={lstm_run}", f"hydra.run.dir={tmp_path / 'run'}", "ledger=true", *overrides)
    assert_one_line_error(result, phrase)
    assert not (tmp_path / "run").exists()
