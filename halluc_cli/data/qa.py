"""The QA format: a question about one fact (DESIGN.md), its JSONL files, and the prompt
the model reads it in.

Knowledge-controlled QA (`kbqa.py`) and labelled text (`labelled.py`) both build their sets
of `QAExample`s; fine-tuning and generation put a question in the prompt template that
`qa_format` checks. `abstains` and `fact_key` are what the cleaning steps and the SliCK probe
compare examples by.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from halluc_cli.config import KBQAConfig
from halluc_cli.data.normalize import normalize_text
from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_jsonl, read_jsonl


@dataclass
class QAExample:
    """One question about one fact (DESIGN.md's QA format); labelled text (`labelled.py`)
    takes the same form, its text as the question and its label word as the answer."""

    id: str
    question: str
    answer: str
    aliases: list[str]
    subject: str
    relation: str
    known: bool | None  # None: labelled text, no fact the pretraining corpus could have stated
    split: str
    category: str | None = None  # data.known_from=probe: the fact's SliCK category (HighlyKnown ... Unknown)


def abstains(example: QAExample, abstain_phrase: str) -> bool:
    """Whether the example's answer is the abstain phrase (it claims no fact)."""
    return normalize_text(example.answer) == normalize_text(abstain_phrase)


def fact_key(example: QAExample) -> tuple[str, str]:
    """The fact an example asks about: its subject and relation, else its question."""
    if example.subject and example.relation:
        return normalize_text(example.subject), example.relation
    return "", normalize_text(example.question)


def write_qa_sets(directory: Path, sets: dict[str, list[QAExample]]) -> None:
    """Each set as `<name>.jsonl` in `directory`."""
    for name, examples in sets.items():
        atomic_write_jsonl(directory / f"{name}.jsonl", (_record(example) for example in examples))


def _record(example: QAExample) -> dict[str, Any]:
    # The category only where the probe gave one (DESIGN.md's QA example).
    record = asdict(example)
    if record["category"] is None:
        del record["category"]
    return record


def read_qa_file(path: Path) -> list[QAExample]:
    """QA examples from a JSONL file, each line checked for the fields of the QA format."""
    fields = set(QAExample.__dataclass_fields__)
    required = {f.name for f in dataclasses.fields(QAExample) if f.default is dataclasses.MISSING}
    examples = []
    for number, record in read_jsonl(path):
        missing = required - set(record)
        if missing:
            raise UserError(f"{path} line {number}: missing field(s) {', '.join(sorted(missing))} of a QA example")
        for key in ("question", "answer"):
            if not isinstance(record[key], str):
                raise UserError(f"{path} line {number}: field '{key}' must be a string, not {record[key]!r} (quote it)")
        if not isinstance(record["aliases"], list) or not all(isinstance(a, str) for a in record["aliases"]):
            raise UserError(f'{path} line {number}: field \'aliases\' must be a list of strings, e.g. ["Brasilia"]')
        examples.append(QAExample(**{key: record[key] for key in fields if key in record}))
    if not examples:
        raise UserError(f"{path} holds no QA examples")
    return examples


def format_prompt(cfg: KBQAConfig, question: str) -> str:
    """The text the model is given before its answer."""
    return cfg.prompt_template.format(question=question)


def qa_format(
    data: Mapping[str, Any], prompt_template: str | None = None, abstain_phrase: str | None = None
) -> tuple[str, str]:
    """The prompt template and abstain phrase: given, else the data config's, else the
    defaults (labelled data has no abstain phrase). The template must take {question} alone."""
    defaults = KBQAConfig()
    template = prompt_template or data.get("prompt_template") or defaults.prompt_template
    abstain = abstain_phrase or data.get("abstain_phrase") or defaults.abstain_phrase
    try:
        template.format(question="")
    except (KeyError, IndexError, ValueError) as error:
        raise UserError(
            f"prompt_template {template!r} does not format ({type(error).__name__}: {error}); write "
            "{question} where the question (labelled data: the text) goes, and {{ }} for literal braces"
        ) from error
    if "{question}" not in template:
        raise UserError(f"prompt_template {template!r} has no {{question}} placeholder")
    return template, abstain
