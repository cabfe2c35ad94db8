"""Knowledge base of (subject, relation, object) facts: loading, lookup, saving.

File formats (the contract between commands, see DESIGN.md):
- JSONL: one JSON object a line with `subject`, `relation`, `object` and an optional
  `aliases` list of other accepted surface forms of the object.
- CSV: a header with the same columns; aliases separated by `|` in one cell.

Lookups go through `normalize_text`, so "brazil", "BRAZIL" and "the Brazil." find the same
subject; the facts themselves keep their original spelling.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from halluc_cli.data.normalize import normalize_text
from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_jsonl, read_jsonl

REQUIRED_FIELDS = ("subject", "relation", "object")
SUFFIXES = (".jsonl", ".csv")
BUNDLED = {"geonames": "geonames.jsonl"}  # name -> file under halluc_cli/data/kb/
CSV_ALIAS_SEPARATOR = "|"
_FIX = "each line needs subject, relation, object"


@dataclass(frozen=True)
class Fact:
    """One fact: `subject` `relation` `object`, with other accepted forms of the object."""

    subject: str
    relation: str
    object: str
    aliases: tuple[str, ...] = ()

    @property
    def surface_forms(self) -> tuple[str, ...]:
        """The object followed by its aliases: every answer that counts as correct."""
        return (self.object, *self.aliases)

    def to_dict(self) -> dict[str, Any]:
        """The JSONL record; `aliases` is left out when there are none."""
        record: dict[str, Any] = {
            "subject": self.subject, "relation": self.relation, "object": self.object
        }
        if self.aliases:
            record["aliases"] = list(self.aliases)
        return record


class KnowledgeBase:
    """An in-memory set of facts with O(1) lookup by (normalized subject, relation)."""

    def __init__(self, facts: Iterable[Fact]):
        self.facts: list[Fact] = list(facts)
        self._index: dict[tuple[str, str], list[Fact]] = defaultdict(list)
        for fact in self.facts:
            self._index[(normalize_text(fact.subject), fact.relation)].append(fact)
        self.relations: list[str] = sorted({fact.relation for fact in self.facts})

    def __len__(self) -> int:
        return len(self.facts)

    def __repr__(self) -> str:
        return f"KnowledgeBase({len(self)} facts, relations={self.relations})"

    def subjects(self, relation: str | None = None) -> list[str]:
        """Sorted distinct subjects, of one relation or of all."""
        return sorted({f.subject for f in self.facts if relation is None or f.relation == relation})

    def lookup(self, subject: str, relation: str) -> list[Fact]:
        """Facts about `subject` (matched after normalize_text) for `relation`."""
        return list(self._index.get((normalize_text(subject), relation), ()))

    def objects(self, subject: str, relation: str) -> set[str]:
        """Normalized accepted answers (objects and aliases) for (subject, relation)."""
        facts = self._index.get((normalize_text(subject), relation), ())
        return {normalize_text(form) for fact in facts for form in fact.surface_forms}

    def by_relation(self) -> dict[str, list[Fact]]:
        """Facts grouped by relation, relations in sorted order."""
        groups: dict[str, list[Fact]] = {relation: [] for relation in self.relations}
        for fact in self.facts:
            groups[fact.relation].append(fact)
        return groups

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KnowledgeBase:
        """Read a `.jsonl` or `.csv` knowledge base; any problem raises a one-line UserError."""
        path = Path(path)
        if path.suffix.lower() not in SUFFIXES:
            accepted = " or ".join(SUFFIXES)
            raise UserError(f"{path}: unsupported knowledge-base format (use a {accepted} file)")
        if not path.is_file():
            raise UserError(f"{path}: no such file (check the path of the knowledge base)")
        reader = _read_jsonl if path.suffix.lower() == ".jsonl" else _read_csv
        try:
            facts = list(reader(path))
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e.reason}); save the file as UTF-8") from e
        if not facts:
            raise UserError(f"{path}: the file holds no facts ({_FIX})")
        _check_one_object(facts, path)
        return cls(facts)

    def save_jsonl(self, path: str | os.PathLike[str]) -> None:
        """Write the facts as JSONL atomically: readers never see a half-written file."""
        atomic_write_jsonl(Path(path), (fact.to_dict() for fact in self.facts))


def _check_one_object(facts: list[Fact], path: Path) -> None:
    """Refuse a subject with two objects for one relation: its question would have two
    answers, and a QA set would ask it once with each, one of them marked wrong."""
    seen: dict[tuple[str, str], Fact] = {}
    for fact in facts:
        key = (normalize_text(fact.subject), fact.relation)
        first = seen.setdefault(key, fact)
        if normalize_text(first.object) != normalize_text(fact.object):
            raise UserError(
                f"{path}: {fact.subject!r} has two {fact.relation} objects, {first.object!r} and {fact.object!r}; "
                "keep one fact and list the other form under its aliases"
            )


def _read_jsonl(path: Path) -> Iterator[Fact]:
    for lineno, record in read_jsonl(path):
        yield _make_fact(record, path, lineno)


def _read_csv(path: Path) -> Iterator[Fact]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:  # empty file: load() reports it
            return
        for field in REQUIRED_FIELDS:
            if field not in reader.fieldnames:
                raise UserError(
                    f"{path} line 1: missing column '{field}' (the header needs subject, relation, object)"
                )
        for row in reader:
            record: dict[str, Any] = {k: v for k, v in row.items() if k is not None and v is not None}
            if "aliases" in record:
                record["aliases"] = record["aliases"].split(CSV_ALIAS_SEPARATOR)
            yield _make_fact(record, path, reader.line_num)


def _make_fact(record: dict[str, Any], path: Path, lineno: int) -> Fact:
    """Validate one record and build a Fact, stripping stray whitespace and empty aliases."""
    where = f"{path} line {lineno}"
    values = {}
    for field in REQUIRED_FIELDS:
        if field not in record:
            raise UserError(f"{where}: missing field '{field}' ({_FIX})")
        value = record[field]
        if not isinstance(value, str):
            kind = type(value).__name__
            raise UserError(f"{where}: field '{field}' must be a string, not {kind} (quote it)")
        if not value.strip():
            raise UserError(f"{where}: field '{field}' is empty ({_FIX})")
        values[field] = value.strip()
    aliases = record.get("aliases")
    if aliases is None:
        aliases = []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise UserError(f'{where}: field \'aliases\' must be a list of strings, e.g. ["Brasilia"]')
    return Fact(**values, aliases=tuple(a.strip() for a in aliases if a.strip()))


def bundled_kb_path(name: str = "geonames") -> Path:
    """Path of a knowledge base shipped with the package."""
    return Path(__file__).parent / "kb" / BUNDLED[name]


def load_kb(path_or_name: str | os.PathLike[str] = "geonames") -> KnowledgeBase:
    """Load a bundled knowledge base by name (default `geonames`) or a user's file by path."""
    if isinstance(path_or_name, str) and path_or_name in BUNDLED:
        return KnowledgeBase.load(bundled_kb_path(path_or_name))
    path = Path(path_or_name)
    if not path.suffix and not path.exists():
        raise UserError(
            f"unknown knowledge base '{path_or_name}': give a .jsonl or .csv file "
            f"or a bundled name ({', '.join(BUNDLED)})"
        )
    return KnowledgeBase.load(path)
