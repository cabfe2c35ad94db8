"""Labelled text for classification as generation (`data=labelled`): text -> label word.

A CSV file (with a header row) or a JSONL file of text and label becomes QA examples in
DESIGN.md's format: the question is the text, the answer the label's word (`label_words`,
else the label itself), relation `label`, and `known` None (no fact stands behind a
label). Fine-tuning trains the word as the answer (loss on its tokens only), `halluc
generate` answers with it and copies the answer into `label`, and `halluc score
task=classification` compares the two. Valid and test sets come from their own files or are
held out of the training file, drawn by `split_seed`.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from halluc_cli.config import LabelledConfig
from halluc_cli.data.qa import QAExample
from halluc_cli.errors import UserError
from halluc_cli.io import read_jsonl

LABEL_RELATION = "label"  # the relation of every labelled example: the text's label
LABELLED_SETS = ("finetune", "valid", "test")
HELD_OUT = ("valid", "test")


@dataclass
class LabelledRow:
    """One text and its label, as read, with where it was read for error messages."""

    text: str
    label: str
    where: str  # "<file> line <n>"


def label_key(value: Any) -> str:
    """A label as text, the same whether it was read from CSV, JSON or YAML: 1 and "1"
    agree, and true/false keep their JSON spelling (Python would write True)."""
    return json.dumps(value) if isinstance(value, bool) else str(value).strip()


def is_labelled(example: QAExample) -> bool:
    """Whether a QA example is labelled text (its answer is a label word), not a fact."""
    return example.relation == LABEL_RELATION


def build_labelled_sets(cfg: LabelledConfig) -> dict[str, list[QAExample]]:
    """The fine-tuning, validation and test sets, each from its file or held out of train."""
    words = _label_words(cfg)
    files = {"finetune": cfg.train, "valid": cfg.valid, "test": cfg.test}
    rows = {name: read_labelled(Path(path).expanduser(), cfg) for name, path in files.items() if path}
    _check_classes(rows["finetune"], cfg.train)
    rng = random.Random(cfg.split_seed)
    rows = {name: _draw(found, cfg.max_examples, rng) for name, found in rows.items()}
    rows = _hold_out(rows, cfg.heldout_fraction, cfg.train)
    return {
        name: [_example(row, words, name, index) for index, row in enumerate(rows[name])] for name in LABELLED_SETS
    }


def read_labelled(path: Path, cfg: LabelledConfig) -> list[LabelledRow]:
    """The (text, label) rows of a CSV or JSONL file, each checked."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"{path}: labelled data must be a .csv (with a header row) or a .jsonl file")
    if not path.is_file():
        raise UserError(f"{path}: no such file (check data.train / data.valid / data.test)")
    rows = reader(path, cfg)
    if not rows:
        raise UserError(f"{path}: the file holds no examples; give rows of {cfg.text_column} and {cfg.label_column}")
    return rows


def _read_csv(path: Path, cfg: LabelledConfig) -> list[LabelledRow]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [column for column in (cfg.text_column, cfg.label_column) if column not in header]
            if header and missing:
                raise UserError(
                    f"{path} line 1: no column {', '.join(map(repr, missing))} in the header {header}; "
                    "set data.text_column / data.label_column to the header's names"
                )
            # line_num: the physical line a record ends on (a quoted text may span several)
            return [_csv_row(record, f"{path} line {reader.line_num}", cfg, len(header)) for record in reader]
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason}); save the file as UTF-8") from error
    except csv.Error as error:
        raise UserError(f"{path}: not readable as CSV ({error})") from error


def _csv_row(record: dict[str | None, Any], where: str, cfg: LabelledConfig, width: int) -> LabelledRow:
    if None in record:  # DictReader files the fields beyond the header's under None
        raise UserError(
            f"{where}: more fields than the header's {width}; quote a text that holds a comma (\"a fine, sad tale\",1)"
        )
    return _row(record, where, cfg)


def _read_jsonl(path: Path, cfg: LabelledConfig) -> list[LabelledRow]:
    return [_row(record, f"{path} line {lineno}", cfg) for lineno, record in read_jsonl(path)]


READERS: dict[str, Callable[[Path, LabelledConfig], list[LabelledRow]]] = {".csv": _read_csv, ".jsonl": _read_jsonl}


def _row(record: Mapping[str, Any], where: str, cfg: LabelledConfig) -> LabelledRow:
    """The text and label of one record; a CSV row short of fields reads them as None."""
    text, label = record.get(cfg.text_column), record.get(cfg.label_column)
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: no text in {cfg.text_column!r} (set data.text_column if it has another name)")
    if not isinstance(label, (str, int, float, bool)) or not label_key(label):
        raise UserError(f"{where}: no label in {cfg.label_column!r} (set data.label_column if it has another name)")
    return LabelledRow(text.strip(), label_key(label), where)


def _label_words(cfg: LabelledConfig) -> dict[str, str]:
    """data.label_words as {label as text: word}; empty when the labels are the words."""
    given = cfg.label_words
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise UserError(f"data.label_words={given} is not a mapping; write it as {{0: negative, 1: positive}}")
    blank = [label_key(label) for label, word in given.items() if word is None or not label_key(word)]
    if blank:
        raise UserError(f"data.label_words gives label(s) {', '.join(blank)} no word; map each label to a word")
    return {label_key(label): label_key(word) for label, word in given.items()}


def _check_classes(rows: list[LabelledRow], path: str) -> None:
    labels = {row.label for row in rows}
    if len(labels) < 2:
        raise UserError(f"{path}: every example has the label {labels.pop()!r}; classification needs two labels or more")


def _draw(rows: list[LabelledRow], limit: int | None, rng: random.Random) -> list[LabelledRow]:
    """The rows shuffled (a file sorted by label would otherwise give one-class held-out sets), capped."""
    drawn = list(rows)
    rng.shuffle(drawn)
    return drawn[:limit] if limit else drawn


def _hold_out(rows: dict[str, list[LabelledRow]], fraction: float, train_path: str) -> dict[str, list[LabelledRow]]:
    """Valid and test sets taken from the end of the (shuffled) training rows where no file gives them."""
    missing = [name for name in HELD_OUT if name not in rows]
    train = rows["finetune"]
    count = max(1, round(len(train) * fraction))
    if missing and count * len(missing) >= len(train):
        raise UserError(
            f"{train_path}: {len(train)} examples are too few to hold out {count} for each of "
            f"{' and '.join(missing)}; lower data.heldout_fraction, or give data.valid and data.test files"
        )
    held = dict(rows)
    for name in missing:
        held[name], train = train[-count:], train[:-count]
    held["finetune"] = train
    return held


def _example(row: LabelledRow, words: dict[str, str], split: str, index: int) -> QAExample:
    if words and row.label not in words:
        raise UserError(f"{row.where}: the label {row.label!r} has no entry in data.label_words ({', '.join(words)})")
    answer = words.get(row.label, row.label)
    return QAExample(f"{split}-{index}", row.text, answer, [], "", LABEL_RELATION, None, split)


def check_label_words(tokenizer: PreTrainedTokenizerBase, words: Iterable[str]) -> None:
    """Fail unless the pretrained tokenizer spells every label word back as itself, so the
    model can generate it: a word-level vocabulary reads a word it never saw as <unk>."""
    missing = sorted(word for word in set(words) if _spelled(tokenizer, word) != word)
    if missing:
        raise UserError(
            f"label word(s) {', '.join(map(repr, missing))} not in the vocabulary of the pretrained model's "
            "tokenizer (a word-level one reads unseen words as <unk>); set data.label_words to words it "
            "knows, or pretrain with a BPE tokenizer (model.tokenizer.kind=bpe)"
        )


def _spelled(tokenizer: PreTrainedTokenizerBase, word: str) -> str:
    # A leading space, as finetune encodes answers after the prompt.
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
