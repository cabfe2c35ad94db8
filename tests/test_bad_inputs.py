"""A user's mistake ends with one line and exit status 2, and leaves no run dir behind.

The cases of issue #11's table that were accepted silently, printed a traceback or several
lines, or left a stub run dir; each command's own tests hold the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from filelock import FileLock

from cli_helpers import TINY, assert_one_line_error, run_cli


def _one_line_and_nothing_written(result, run_dir: Path, *phrases: str) -> None:
    assert_one_line_error(result, *phrases)
    assert not run_dir.exists() or not any(run_dir.iterdir()), sorted(run_dir.iterdir())


@pytest.mark.parametrize(
    "overrides, phrase",
    [
        (["data.unknown_fraction=1.5"], "data.unknown_fraction=1.5 is out of range: it must be in [0, 1]"),
        (["data.unknown_fraction=-0.1"], "data.unknown_fraction=-0.1 is out of range"),
        (["data.known_fraction=2"], "data.known_fraction=2.0 is out of range"),
        (["train.max_steps=-1"], "train.max_steps=-1 is out of range: it must be at least 1"),
        (["train.batch_size=0"], "train.batch_size=0 is out of range"),
        (["train.seq_len=0"], "train.seq_len=0 is out of range"),
        (["train.eval_every=0"], "train.eval_every=0 is out of range"),
        (["train.save_every=0"], "train.save_every=0 is out of range"),
        (["train.lr=-1"], "train.lr=-1.0 is out of range: it must be above 0"),
        (["train.lr=inf"], "it must be a finite number above 0"),
        (["model.dropout=2"], "model.dropout=2.0 is out of range: it must be in [0, 1)"),
        (["model.hidden_dim=0"], "model.hidden_dim=0 is out of range"),
        (["model.num_layers=0"], "model.num_layers=0 is out of range"),
        (["prepare.num_workers=0"], "prepare.num_workers=0 is out of range: it must be at least 1"),
        (["data.unknown_label=IDK"], "Invalid value 'IDK', expected one of [answer, idk]"),
        (["train.schedule=linear"], "expected one of [cosine, step, constant]"),
        (["experiment=huge"], "Could not find 'experiment/huge'; Available options in 'experiment':"),
        (["model=gru"], "Available options in 'model': lstm, transformer"),
        (["data.general_ratio=0.5"], "data.general_text names none"),
        (["--foo"], "unrecognized arguments: --foo"),
        (["-m", "--cfg", "job"], "Only one of --run, --multirun, --cfg"),
    ],
)
def test_pretrain_settings(tmp_path: Path, overrides: list[str], phrase: str) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("pretrain", *TINY, f"hydra.run.dir={run_dir}", *overrides)
    _one_line_and_nothing_written(result, run_dir, phrase)


@pytest.mark.parametrize(
    "overrides, phrase",
    [
        (["decoding=sample", "decoding.temperature=-1"], "decoding.temperature=-1.0 is out of range"),
        (["decoding=sample", "decoding.top_p=1.5"], "decoding.top_p=1.5 is out of range: it must be in (0, 1]"),
        (["decoding=sample", "decoding.num_samples=0"], "decoding.num_samples=0 is out of range"),
        (["questions=[]"], "questions=[] names no set"),
        (["prompts=p.txt", "questions=[test_known]"], "not both"),
    ],
)
def test_generate_settings(tmp_path: Path, overrides: list[str], phrase: str) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("generate", "experiment=tiny", "ckpt=some/run", f"hydra.run.dir={run_dir}", *overrides)
    _one_line_and_nothing_written(result, run_dir, phrase)


def test_prompts_that_are_not_text(transformer_run: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"\xff\xfe binary")
    run_dir = tmp_path / "run"
    result = run_cli("generate", f"ckpt={transformer_run}", f"prompts={prompts}", f"hydra.run.dir={run_dir}")
    _one_line_and_nothing_written(result, run_dir, "not UTF-8 text")


@pytest.mark.parametrize("where", ["parent is a file", "dir is a file"])
def test_a_run_dir_that_cannot_be_created(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    run_dir = blocker / "run" if where == "parent is a file" else blocker
    result = run_cli("pretrain", *TINY, f"hydra.run.dir={run_dir}")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "the run dir cannot be created" in result.stderr and "hydra.run.dir" in result.stderr
    assert blocker.read_text() == "not a dir"


def test_an_empty_corpus_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.touch()
    run_dir = tmp_path / "run"
    result = run_cli("pretrain", *TINY, "data=text", f"data.train=[{empty}]", f"hydra.run.dir={run_dir}")
    _one_line_and_nothing_written(result, run_dir, "corpus file is empty")


def test_a_kb_with_two_objects_for_one_fact(tmp_path: Path) -> None:
    kb = tmp_path / "kb.jsonl"
    facts = [("Egypt", "capital", "Cairo"), ("Egypt", "capital", "Alexandria"), ("France", "capital", "Paris")]
    kb.write_text("".join(json.dumps(dict(zip(("subject", "relation", "object"), f))) + "\n" for f in facts))
    run_dir = tmp_path / "run"
    result = run_cli("pretrain", *TINY, f"data.kb.path={kb}", "data.relations=[capital]", f"hydra.run.dir={run_dir}")
    _one_line_and_nothing_written(result, run_dir, "'Egypt' has two capital objects, 'Cairo' and 'Alexandria'")


def test_a_second_run_into_a_run_dir_in_use(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with FileLock(str(run_dir / ".lock")):  # what a running halluc holds
        result = run_cli("pretrain", *TINY, f"hydra.run.dir={run_dir}")
    assert result.exit_code == 2 and "is in use by another run" in result.stderr
    assert sorted(path.name for path in run_dir.iterdir()) == [".lock"]  # the other run's


def test_score_runs_of_a_pretraining_run(transformer_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "score"
    result = run_cli("score", f"runs={transformer_run}", f"hydra.run.dir={run_dir}")
    _one_line_and_nothing_written(result, run_dir, "no readable finetune run", "a pretrain run, not a finetune run")


def test_a_question_file_with_a_number_for_a_question(transformer_run: Path, tmp_path: Path) -> None:
    fields = {"id": "q1", "question": 7, "answer": "Paris", "aliases": [], "subject": "France",
              "relation": "capital", "known": True, "split": "test"}
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps(fields) + "\n")
    run_dir = tmp_path / "run"
    result = run_cli("generate", f"ckpt={transformer_run}", f"questions=[{questions}]", f"hydra.run.dir={run_dir}")
    _one_line_and_nothing_written(result, run_dir, "line 1: field 'question' must be a string, not 7")


def test_resuming_under_another_model_shape(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = run_cli("pretrain", *TINY, "model=lstm", "train.max_steps=2", "train.eval_every=2", f"hydra.run.dir={run_dir}")
    assert first.exit_code == 0, first.stderr
    config = (run_dir / "config.yaml").read_text()
    result = run_cli("pretrain", *TINY, "model=lstm", "model.hidden_dim=64", f"hydra.run.dir={run_dir}")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "trained with model.hidden_dim=32, not 64" in result.stderr
    assert (run_dir / "config.yaml").read_text() == config  # the run dir still says what it holds
