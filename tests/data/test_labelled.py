"""Labelled text (data=labelled): CSV and JSONL reading, label words, held-out sets, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from halluc_cli.config import LabelledConfig, TokenizerConfig, bundled_path
from halluc_cli.data.kb import load_kb
from halluc_cli.data.labelled import LABEL_RELATION, build_labelled_sets, check_label_words
from halluc_cli.data.tokenizer import train_tokenizer
from halluc_cli.errors import UserError
from cli_helpers import import_script


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "text,label") -> str:
    lines = [header] + [f'"{text}",{label}' for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return str(path)


REVIEWS = [("a fine, happy tale", "1"), ("a dull tale", "0"), ("the best story", "1"), ("the worst story", "0")]


def test_csv_files_with_label_words(tmp_path: Path) -> None:
    cfg = LabelledConfig(
        train=write_csv(tmp_path / "train.csv", REVIEWS),
        valid=write_csv(tmp_path / "valid.csv", [("so good", "1")]),
        test=write_csv(tmp_path / "test.csv", [("so bad", "0"), ("so, so good", "1")]),
        label_words={0: "negative", 1: "positive"},
    )
    sets = build_labelled_sets(cfg)
    assert sorted((e.question, e.answer) for e in sets["finetune"]) == [
        ("a dull tale", "negative"), ("a fine, happy tale", "positive"),
        ("the best story", "positive"), ("the worst story", "negative"),
    ]
    assert [(e.question, e.answer) for e in sets["valid"]] == [("so good", "positive")]
    assert sorted(e.question for e in sets["test"]) == ["so bad", "so, so good"]
    example = sets["test"][0]
    assert (example.relation, example.known, example.split, example.aliases) == (LABEL_RELATION, None, "test", [])
    assert [e.id for e in sets["test"]] == ["test-0", "test-1"]


def test_jsonl_with_other_keys_and_labels_as_words(tmp_path: Path) -> None:
    records = [{"review": f"text {i}", "stars": label} for i, label in enumerate([1, 5, 1, 5, True])]
    path = write_jsonl(tmp_path / "train.jsonl", records)
    cfg = LabelledConfig(train=path, valid=path, test=path, text_column="review", label_column="stars")
    answers = {e.question: e.answer for e in build_labelled_sets(cfg)["finetune"]}
    # no label_words: the label itself, as written in the file (JSON true stays "true")
    assert answers == {"text 0": "1", "text 1": "5", "text 2": "1", "text 3": "5", "text 4": "true"}


def test_held_out_sets_are_drawn_by_seed_and_capped(tmp_path: Path) -> None:
    rows = [(f"review {i}", str(i % 2)) for i in range(40)]
    cfg = LabelledConfig(train=write_csv(tmp_path / "train.csv", rows), heldout_fraction=0.1)
    sets = build_labelled_sets(cfg)
    assert [len(sets[name]) for name in ("finetune", "valid", "test")] == [32, 4, 4]
    texts = [e.question for name in ("finetune", "valid", "test") for e in sets[name]]
    assert sorted(texts) == sorted(text for text, _ in rows)  # a partition of the file
    assert [e.question for e in build_labelled_sets(cfg)["test"]] == [e.question for e in sets["test"]]
    cfg.split_seed = 1
    assert [e.question for e in build_labelled_sets(cfg)["test"]] != [e.question for e in sets["test"]]
    cfg.max_examples = 10
    assert [len(s) for s in build_labelled_sets(cfg).values()] == [8, 1, 1]


@pytest.mark.parametrize(
    ("name", "content", "overrides", "message"),
    [
        ("r.csv", "review,label\nnice,1\nbad,0\n", {}, "r.csv line 1: no column 'text'"),
        ("r.csv", "", {}, "r.csv: the file holds no examples"),
        ("r.csv", "text,label\nnice,1\n,0\n", {}, "r.csv line 3: no text in 'text'"),
        ("r.csv", "text,label\nnice,1\nbad\n", {}, "r.csv line 3: no label in 'label'"),
        ("r.csv", "text,label\nnice,1\nbad, sad,0\n", {}, "r.csv line 3: more fields than the header's 2"),
        ("r.csv", "text,label\nnice,1\ngood,1\n", {}, "every example has the label '1'"),
        ("r.csv", "text,label\nnice,1\nmeh,2\n", {"label_words": {1: "positive"}}, "r.csv line 3: the label '2' has no entry"),
        ("r.csv", "text,label\nnice,1\nbad,0\n", {"label_words": {0: None, 1: "yes"}}, "label(s) 0 no word"),
        ("r.csv", "text,label\nnice,1\nbad,0\n", {"label_words": "yes"}, "is not a mapping"),
        ("r.jsonl", '{"text": "nice", "label": 1}\n{"text": "bad", label: 0}\n', {}, "r.jsonl line 2: invalid JSON"),
        ("r.jsonl", '{"text": "nice", "label": 1}\n\n{"text": "bad"}\n', {}, "r.jsonl line 3: no label in 'label'"),
        ("r.tsv", "text\tlabel\n", {}, "must be a .csv"),
    ],
)
def test_bad_input_is_a_user_error_naming_file_and_line(
    tmp_path: Path, name: str, content: str, overrides: dict, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    valid = write_csv(tmp_path / "valid.csv", [("ok", "1")])
    cfg = LabelledConfig(train=str(path), valid=valid, test=valid, **overrides)
    with pytest.raises(UserError, match=re.escape(message)):
        build_labelled_sets(cfg)


def test_too_few_examples_to_hold_out(tmp_path: Path) -> None:
    cfg = LabelledConfig(train=write_csv(tmp_path / "train.csv", REVIEWS[:2]))
    with pytest.raises(UserError, match="2 examples are too few to hold out 1 for each of valid and test"):
        build_labelled_sets(cfg)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope.csv: no such file"):
        build_labelled_sets(LabelledConfig(train=str(tmp_path / "nope.csv")))


def test_label_words_a_word_vocabulary_lacks_are_named() -> None:
    lines = ["a good film", "a bad film"]
    word = train_tokenizer(lines, TokenizerConfig(kind="word"))
    check_label_words(word, ["good", "bad"])
    with pytest.raises(UserError, match=r"'negative', 'positive' not in the vocabulary.*model.tokenizer.kind=bpe"):
        check_label_words(word, ["good", "positive", "negative"])
    bpe = train_tokenizer(lines, TokenizerConfig(kind="bpe", vocab_size=300))
    check_label_words(bpe, ["good", "positive", "negative"])  # bytes spell any word


def test_bundled_kb_statements_are_rebuilt_byte_for_byte_and_load() -> None:
    """scripts/build_kb_statements.py reproduces the shipped file, which data=labelled reads."""
    script = import_script("build_kb_statements")
    shipped = Path(bundled_path("labelled/kb_statements.csv"))
    assert script.build(load_kb("geonames"), script.statement_templates()) == shipped.read_text(encoding="utf-8")
    sets = build_labelled_sets(LabelledConfig(train=str(shipped)))
    answers = [e.answer for examples in sets.values() for e in examples]
    assert answers.count("true") == answers.count("false") == 743
