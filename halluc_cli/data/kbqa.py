"""Knowledge-controlled data: which facts the model saw in pretraining, and QA sets by that.

1. `split_subjects`: the KB's subjects are split, by seed, into known and unknown.
2. `render_corpus`: the pretraining corpus states only the known subjects' facts, each in
   `paraphrases` templates (1 = one phrasing, hard to extract; more = the augmentation of
   Physics of LMs 3.1), names the unknown subjects without their facts (or not at all:
   `unknown_names`), shuffled, optionally mixed with general text.
3. `build_qa_sets`: questions from templates. A fine-tuning set whose unknown share is
   exactly `unknown_fraction` (Gekhman et al. 2024), a validation set of the same mix,
   and test sets of held-out known and of unknown facts. `unknown_label: idk` relabels
   the unknown fine-tuning answers to the abstain phrase (R-Tuning).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from halluc_cli.config import KBQAConfig, UnknownNames
from halluc_cli.data.kb import Fact, KnowledgeBase, load_kb
from halluc_cli.data.qa import QAExample, format_prompt
from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_json
from halluc_cli.rundir import SPLIT_FILE

QA_SETS = ("finetune", "valid", "test_known", "test_unknown")


def load_facts(cfg: KBQAConfig) -> KnowledgeBase:
    """The KB restricted to the relations the experiment uses (all with templates by default)."""
    kb = load_kb(cfg.kb.path)
    relations = list(cfg.relations) or sorted(cfg.kb.relations)
    for relation in relations:
        if relation not in cfg.kb.relations:
            raise UserError(
                f"relation {relation!r} has no templates in kb={cfg.kb.name}; "
                f"add it under kb.relations or choose from {sorted(cfg.kb.relations)}"
            )
        if relation not in kb.relations:
            raise UserError(f"relation {relation!r} is not in the knowledge base {cfg.kb.path} ({kb.relations})")
    return KnowledgeBase(fact for fact in kb.facts if fact.relation in relations)


def split_subjects(kb: KnowledgeBase, cfg: KBQAConfig) -> dict[str, list[str]]:
    """Known and unknown subjects, drawn by `cfg.split_seed` (and capped at `max_subjects`),
    with the relations whose facts count (the corpus states every relation of a known subject)."""
    subjects = kb.subjects()
    rng = random.Random(cfg.split_seed)
    rng.shuffle(subjects)
    if cfg.max_subjects:
        subjects = subjects[: cfg.max_subjects]
    cut = round(len(subjects) * cfg.known_fraction)
    return {"known": sorted(subjects[:cut]), "unknown": sorted(subjects[cut:]), "relations": kb.relations}


def render_corpus(cfg: KBQAConfig, general_lines: list[str]) -> tuple[dict[str, list[str]], list[str], dict[str, Any]]:
    """The pretraining corpus of known facts.

    Returns the splits, the lines whose every word the tokenizer must cover (every name and
    sentence of the experiment, however rare in the corpus: an unknown fact must be
    learnable in fine-tuning, so its subject cannot read as `<unk>`), and the subject split
    to save with the run.

    train: each known fact in `paraphrases` of its relation's templates (the last
    `heldout_templates` excluded), the `kb.mentions` sentences that name entities without
    their facts, and general text. valid and test: the known facts in the held-out templates,
    half each, so their perplexity measures stored facts in a phrasing never read (with no
    held-out template, the training statements themselves).
    """
    kb = load_facts(cfg)
    split = split_subjects(kb, cfg)
    known = set(split["known"])
    rng = random.Random(cfg.split_seed + 1)
    train, heldout = [], []
    for fact in kb.facts:
        if fact.subject in known:
            read, held_out = _templates(fact.relation, cfg)
            train.extend(_fill(template, fact) for template in rng.sample(read, cfg.paraphrases))
            heldout.extend(_fill(template, fact) for template in held_out)
    train.extend(_mentions(kb, known, cfg))
    train.extend(_mix_in(general_lines, len(train), cfg.general_ratio, rng))
    rng.shuffle(train)
    if not train:
        raise UserError("the knowledge-controlled corpus is empty; raise data.known_fraction or data.max_subjects")
    if heldout:
        rng.shuffle(heldout)
        valid, test = heldout[::2], heldout[1::2] or heldout
    else:
        valid = test = train
    splits = {"train": train, "valid": valid, "test": test}
    return splits, _vocabulary_lines(kb, cfg), split


def _templates(relation: str, cfg: KBQAConfig) -> tuple[list[str], list[str]]:
    """A relation's statement templates: those the training split may use, and those held out."""
    templates = list(cfg.kb.relations[relation].statements)
    held = cfg.heldout_templates
    if cfg.paraphrases + held > len(templates):
        raise UserError(
            f"data.paraphrases={cfg.paraphrases} plus data.heldout_templates={held} need "
            f"{cfg.paraphrases + held} statement templates, but relation {relation!r} has {len(templates)}; "
            "lower one of them or add templates under kb.relations"
        )
    return templates[: len(templates) - held], templates[len(templates) - held :]


def _fill(template: str, fact: Fact) -> str:
    return template.format(subject=fact.subject, object=fact.object)


def _mentions(kb: KnowledgeBase, known: set[str], cfg: KBQAConfig) -> list[str]:
    """`cfg.mentions` neutral sentences for each name the corpus covers: the subjects and
    objects of every fact when unknown names are `mentioned`, of the known facts only when
    `unseen` (the known side of the corpus is then the same in both)."""
    templates = list(cfg.kb.mentions)
    if cfg.unknown_names is UnknownNames.mentioned and cfg.mentions < 1:
        raise UserError("data.unknown_names=mentioned needs data.mentions >= 1, or set data.unknown_names=unseen")
    if cfg.mentions > len(templates):
        raise UserError(
            f"data.mentions={cfg.mentions} but kb={cfg.kb.name} has {len(templates)} mention templates; "
            "lower data.mentions or add sentences with {name} under kb.mentions"
        )
    covered = [f for f in kb.facts if cfg.unknown_names is UnknownNames.mentioned or f.subject in known]
    names = sorted({f.subject for f in covered} | {f.object for f in covered})
    # Each name draws its sentences from its own seed, so a known name reads the same either way.
    choose = lambda name: random.Random(f"{cfg.split_seed}:{name}").sample(templates, cfg.mentions)  # noqa: E731
    return [template.format(name=name) for name in names for template in choose(name)]


def _mix_in(general_lines: list[str], fact_lines: int, ratio: float, rng: random.Random) -> list[str]:
    """General text so that it makes up `ratio` of the corpus lines."""
    if ratio <= 0:
        return []
    if not general_lines:
        raise UserError(f"data.general_ratio={ratio} mixes in general text, but data.general_text names none")
    wanted = round(fact_lines * ratio / (1 - ratio))
    usable = [line for line in general_lines if line.strip()]
    return [rng.choice(usable) for _ in range(wanted)]


def _vocabulary_lines(kb: KnowledgeBase, cfg: KBQAConfig) -> list[str]:
    """Every text the experiment can show the model, known fact or not: each name alone (an
    answer is encoded apart from its prompt), each fact in every statement template and every
    question (in the prompt), each name in every mention, and the abstain phrase. Whole texts
    rather than words, so a vocabulary covers a name with the punctuation around it."""
    names = sorted({fact.subject for fact in kb.facts} | {form for fact in kb.facts for form in fact.surface_forms})
    lines = list(names)
    for fact in kb.facts:
        templates = cfg.kb.relations[fact.relation]
        lines += [_fill(template, fact) for template in templates.statements]
        lines += [format_prompt(cfg, question.format(subject=fact.subject)) for question in templates.questions]
    lines += [template.format(name=name) for name in names for template in cfg.kb.mentions]
    return [*lines, cfg.abstain_phrase]


def build_qa_sets(cfg: KBQAConfig, split: dict[str, list[str]], seed: int) -> dict[str, list[QAExample]]:
    """Fine-tuning, validation and test sets; the fine-tuning set's unknown share is exact.

    Only the relations the pretraining run covered count: asking about another relation of
    a "known" subject would ask about a fact the model never saw.
    """
    covered = set(split["relations"])
    kb = KnowledgeBase(fact for fact in load_facts(cfg).facts if fact.relation in covered)
    if not kb.facts:
        raise UserError(
            f"data.relations={list(cfg.relations)} share no relation with the pretraining run's {sorted(covered)}"
        )
    known_subjects = set(split["known"])
    unknown_subjects = set(split["unknown"])
    rng = random.Random(seed)
    pools = {
        True: [fact for fact in kb.facts if fact.subject in known_subjects],
        False: [fact for fact in kb.facts if fact.subject in unknown_subjects],
    }
    for pool in pools.values():
        rng.shuffle(pool)

    def take(known: bool, count: int, name: str) -> list[Fact]:
        pool = pools[known]
        if count > len(pool):
            kind = "known" if known else "unknown"
            raise UserError(
                f"the {name} set needs {count} {kind} facts but only {len(pool)} are left; "
                "lower data.finetune_size / data.valid_size / data.test_size or use more subjects"
            )
        taken, pools[known] = pool[:count], pool[count:]
        return taken

    sets: dict[str, list[tuple[Fact, bool]]] = {}
    for name, size in (("finetune", cfg.finetune_size), ("valid", cfg.valid_size)):
        unknown = round(size * cfg.unknown_fraction)
        mixed = [(f, True) for f in take(True, size - unknown, name)] + [(f, False) for f in take(False, unknown, name)]
        rng.shuffle(mixed)
        sets[name] = mixed
    sets["test_known"] = [(f, True) for f in take(True, min(cfg.test_size, len(pools[True])), "test_known")]
    sets["test_unknown"] = [(f, False) for f in take(False, min(cfg.test_size, len(pools[False])), "test_unknown")]
    return {name: [_example(f, known, name, i, cfg, rng) for i, (f, known) in enumerate(facts)] for name, facts in sets.items()}


def _example(fact: Fact, known: bool, split: str, index: int, cfg: KBQAConfig, rng: random.Random) -> QAExample:
    question = rng.choice(list(cfg.kb.relations[fact.relation].questions)).format(subject=fact.subject)
    answer, aliases = fact.object, list(fact.aliases)
    relabel = not known and cfg.unknown_label == "idk" and split in ("finetune", "valid")
    if relabel:  # R-Tuning: teach abstention where the model has no knowledge
        answer, aliases = cfg.abstain_phrase, []
    return QAExample(f"{split}-{index}", question, answer, aliases, fact.subject, fact.relation, known, split)


def save_split(run_dir: Path, split: dict[str, list[str]]) -> None:
    """Record which subjects the pretraining corpus covered."""
    atomic_write_json(run_dir / SPLIT_FILE, split)


def load_split(pretrain_dir: Path) -> dict[str, list[str]]:
    """The known/unknown subjects of a pretraining run on data=kbqa."""
    path = pretrain_dir / SPLIT_FILE
    if not path.is_file():
        raise UserError(
            f"{pretrain_dir} has no {SPLIT_FILE}: data=kbqa fine-tuning needs a model pretrained with "
            "data=kbqa (the split says which facts it saw)"
        )
    split = json.loads(path.read_text(encoding="utf-8"))
    if not {"known", "unknown", "relations"} <= set(split):
        raise UserError(f"{path} lacks known/unknown/relations; pretrain that run again with this version")
    return split
