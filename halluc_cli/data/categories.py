"""QA sets from what a model is found to know (Gekhman et al. 2024), for any model.

`data.known_from=probe`: every fact of the pool is asked of the model itself (the SliCK
probe, `halluc_cli/probe.py`) and put in a knowledge category; the sets are drawn from the
categories instead of from a pretraining run's record of what it read.

1. The pool: one question per fact, from the KB (`kb_pool`: each fact of the chosen
   relations, its question drawn from the relation's templates) or from your own QA file
   (`read_user_qa_file`: JSONL or CSV, EntityQuestions-style).
2. The probe categorizes each fact (cached; `probe.probe_pool`). Where a relation's most
   common answer is right for many of its facts (`guessable_relations`), a lucky guess
   passes for knowledge: finetune names such relations before it probes.
3. `category_sets`: a fine-tuning set whose Unknown share is exactly `unknown_fraction`
   (the Known side drawn from HighlyKnown, MaybeKnown and WeaklyKnown alike), or of one
   category alone (`finetune_category`, the paper's single-category sets); a validation set
   of the same mix; and one held-out test set per category (test_highly_known, ...).
"""

from __future__ import annotations

import csv
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from halluc_cli.config import Category, KBQAConfig, QAFileConfig, QASetsConfig, UnknownLabel
from halluc_cli.data.kb import CSV_ALIAS_SEPARATOR
from halluc_cli.data.kbqa import load_facts
from halluc_cli.data.normalize import normalize_text
from halluc_cli.data.qa import QAExample, fact_key
from halluc_cli.errors import UserError
from halluc_cli.io import read_jsonl

KNOWN_CATEGORIES = (Category.HighlyKnown, Category.MaybeKnown, Category.WeaklyKnown)
# A relation whose most common answer is right this often is one a guess gets right.
GUESSABLE = 0.1
QA_FILE_FIELDS = ("question", "answer")  # required; aliases, subject and relation are optional


def test_set_name(category: str) -> str:
    """The test set of a category: HighlyKnown -> test_highly_known."""
    return "test_" + re.sub(r"(?<!^)(?=[A-Z])", "_", category).lower()


# --- the pool of facts ---------------------------------------------------------------------


def kb_pool(cfg: KBQAConfig) -> list[QAExample]:
    """One question per fact of the KB's chosen relations (subjects capped at max_subjects),
    each phrased by a template drawn with `split_seed`, so every seed shares one pool."""
    kb = load_facts(cfg)
    subjects = kb.subjects()
    rng = random.Random(cfg.split_seed)
    if cfg.max_subjects:
        rng.shuffle(subjects)
        subjects = subjects[: cfg.max_subjects]
    chosen = set(subjects)
    pool = []
    for fact in kb.facts:
        if fact.subject in chosen:
            question = rng.choice(list(cfg.kb.relations[fact.relation].questions)).format(subject=fact.subject)
            pool.append(
                QAExample(f"pool-{len(pool)}", question, fact.object, list(fact.aliases), fact.subject,
                          fact.relation, None, "pool")
            )
    return pool


def read_user_qa_file(cfg: QAFileConfig) -> list[QAExample]:
    """Your facts as QA examples: a JSONL file ({"question", "answer", "aliases", "subject",
    "relation"}) or a CSV file with a header row (aliases joined by "|"); question and answer
    are required. At most `max_examples` of them, drawn by `split_seed`."""
    path = Path(cfg.path)
    if path.suffix.lower() not in (".jsonl", ".csv"):
        raise UserError(f"data.path={path}: a QA file must be .jsonl or .csv (question, answer[, aliases, subject, relation])")
    if not path.is_file():
        raise UserError(f"data.path={path}: no such file")
    rows = _read_csv_rows(path) if path.suffix.lower() == ".csv" else [
        (f"{path} line {number}", record) for number, record in read_jsonl(path)
    ]
    examples = [_user_example(record, where, index) for index, (where, record) in enumerate(rows)]
    if not examples:
        raise UserError(f"data.path={path} holds no QA examples")
    examples = _one_per_fact(examples, path)
    if cfg.max_examples and len(examples) > cfg.max_examples:
        examples = random.Random(cfg.split_seed).sample(examples, cfg.max_examples)
    return examples


def _read_csv_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [name for name in QA_FILE_FIELDS if name not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path} line 1: missing column(s) {', '.join(missing)} (the header needs question, answer)")
            rows = []
            for row in reader:
                record: dict[str, Any] = {key: value for key, value in row.items() if key is not None and value is not None}
                if "aliases" in record:
                    record["aliases"] = [a for a in record["aliases"].split(CSV_ALIAS_SEPARATOR) if a.strip()]
                rows.append((f"{path} line {reader.line_num}", record))
            return rows
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason}); save the file as UTF-8") from error
    except csv.Error as error:
        raise UserError(f"{path}: not a readable CSV file ({error})") from error


def _user_example(record: dict[str, Any], where: str, index: int) -> QAExample:
    """One record of a QA file, checked; a missing or empty field is a UserError naming it."""
    values = {}
    for name in (*QA_FILE_FIELDS, "subject", "relation"):
        value = record.get(name, "")
        if not isinstance(value, str):
            raise UserError(f"{where}: field '{name}' must be a string, not {value!r} (quote it)")
        if name in QA_FILE_FIELDS and not value.strip():
            raise UserError(f"{where}: missing field '{name}' (a QA file needs question and answer on every line)")
        values[name] = value.strip()
    aliases = record.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(alias, str) for alias in aliases):
        raise UserError(f'{where}: field \'aliases\' must be a list of strings, e.g. ["Brasilia"]')
    return QAExample(f"pool-{index}", values["question"], values["answer"], [a.strip() for a in aliases if a.strip()],
                     values["subject"], values["relation"], None, "pool")


def _one_per_fact(examples: list[QAExample], path: Path) -> list[QAExample]:
    """One example per fact (subject and relation, else question): a fact asked twice (in two
    phrasings) would be probed twice and could land in training and in a test set. The first
    phrasing stays, with the aliases of all; two different answers are refused."""
    kept: dict[tuple[str, str], QAExample] = {}
    for example in examples:
        first = kept.setdefault(fact_key(example), example)
        if normalize_text(first.answer) != normalize_text(example.answer):
            raise UserError(
                f"{path}: {example.question!r} is asked twice with the answers {first.answer!r} and {example.answer!r}; "
                "keep one and list the other under its aliases"
            )
        if first is not example:
            first.aliases = list(dict.fromkeys([*first.aliases, *example.aliases]))
    return list(kept.values())


def guessable_relations(pool: Sequence[QAExample], threshold: float = GUESSABLE) -> dict[str, tuple[str, float]]:
    """The relations whose most common answer is right for more than `threshold` of their
    facts (a continent: "Africa" for about a quarter of the countries), with that answer and
    its share: there a model that always guesses it looks as if it knew those facts, and the
    probe cannot tell the guess from knowledge."""
    answers: dict[str, Counter[str]] = defaultdict(Counter)
    for example in pool:
        answers[example.relation][normalize_text(example.answer)] += 1
    found = {}
    for relation, counts in sorted(answers.items()):
        answer, count = counts.most_common(1)[0]
        share = count / sum(counts.values())
        if share > threshold and count >= 3:  # an answer shared by a few facts, not one of a small relation
            found[relation] = (answer, share)
    return found


# --- the sets ------------------------------------------------------------------------------


def category_sets(
    pool: Sequence[QAExample], categories: Sequence[str], cfg: QASetsConfig, seed: int
) -> dict[str, list[QAExample]]:
    """Fine-tuning and validation sets with an exact Unknown share (or of `finetune_category`
    alone), and a test set per category from what is left, drawn by `seed`."""
    rng = random.Random(seed)
    pools: dict[str, list[QAExample]] = {category.value: [] for category in Category}
    for example, category in zip(pool, categories):
        pools[category].append(replace(example, category=category, known=category != Category.Unknown))
    for examples in pools.values():
        rng.shuffle(examples)

    def take(wanted: Sequence[str], count: int, name: str) -> list[QAExample]:
        # Draw `count` from the union of the `wanted` categories, so the Known side keeps their mix.
        union = [example for category in wanted for example in pools[category]]
        if count > len(union):
            counts = ", ".join(f"{category} {len(pools[category])}" for category in wanted)
            raise UserError(
                f"the {name} set needs {count} {'/'.join(wanted)} facts but only {len(union)} are left ({counts}); "
                "lower data.finetune_size / data.valid_size, change data.unknown_fraction, or give more facts"
            )
        taken = rng.sample(union, count)
        chosen = {id(example) for example in taken}
        for category in wanted:
            pools[category] = [example for example in pools[category] if id(example) not in chosen]
        return taken

    known = [category.value for category in KNOWN_CATEGORIES]
    sets: dict[str, list[QAExample]] = {}
    for name, size in (("finetune", cfg.finetune_size), ("valid", cfg.valid_size)):
        if cfg.finetune_category is not None:
            mixed = take([str(cfg.finetune_category)], size, name)
        else:
            unknown = round(size * cfg.unknown_fraction)
            mixed = take(known, size - unknown, name) + take([Category.Unknown.value], unknown, name)
        rng.shuffle(mixed)
        sets[name] = mixed
    for category in Category:
        left = pools[category.value]
        if left:
            sets[test_set_name(category.value)] = left[: cfg.test_size]
    return {name: [_as_set_member(e, name, i, cfg) for i, e in enumerate(examples)] for name, examples in sets.items()}


def _as_set_member(example: QAExample, split: str, index: int, cfg: QASetsConfig) -> QAExample:
    relabel = not example.known and cfg.unknown_label == UnknownLabel.idk and split in ("finetune", "valid")
    answer, aliases = (cfg.abstain_phrase, []) if relabel else (example.answer, example.aliases)
    return replace(example, id=f"{split}-{index}", split=split, answer=answer, aliases=aliases)
