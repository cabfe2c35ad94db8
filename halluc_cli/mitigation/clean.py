"""Data cleaning of the fine-tuning set (`mitigation=clean`), run by `halluc finetune` before training.

Steps, in this order, each switchable in `conf/finetune/mitigation/clean.yaml` and each returning
(kept examples, report entry) where the entry counts what it removed or changed and why:

1. `normalize_examples`: tidy whitespace in questions, answers and aliases, drop aliases
   that repeat the answer; drop examples left without a question or an answer.
2. `deduplicate`: of examples with the same question and answer (after `normalize_text`),
   keep the first.
3. `drop_kb_contradictions`: drop examples whose answer the KB contradicts (it holds other
   objects for the subject and relation). Abstentions claim nothing and stay.
4. `drop_conflicts`: drop every example of a fact (subject and relation, else the question)
   whose examples disagree on the answer: which label is right cannot be told.
5. `act_on_unknown`: SliCK (Gekhman et al. 2024). The pretrained model itself is asked each
   fact (`halluc_cli/probe.py`), and the examples in `unknown_categories` are dropped or
   relabelled to the abstain phrase (`unknown_action: idk`, R-Tuning).

`clean_finetune_set` runs the steps, writes the cleaned set to `run_dir/qa/finetune_clean.jsonl`
(the QA fields + `slick_category`, `p_correct_greedy`, `p_correct_sample`) and
`run_dir/cleaning_report.json`, and prints what each step did. The validation and test sets
are left as they are: they measure, and must stay comparable across mitigations.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table
from transformers import PreTrainedTokenizerBase

from halluc_cli.config import CleanConfig, ProbeConfig
from halluc_cli.console import console, print_note, print_warning
from halluc_cli.data.kb import KnowledgeBase, load_kb
from halluc_cli.data.normalize import normalize_text
from halluc_cli.data.qa import QAExample, abstains, fact_key, read_qa_file
from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_json, atomic_write_jsonl
from halluc_cli.models import LanguageModel
from halluc_cli.probe import (
    CATEGORIES,
    Answerer,
    Knowledge,
    ModelAnswerer,
    build_probes,
    gold_answers,
    slick_categories,
)
from halluc_cli.rundir import CLEAN_FILE, CLEANING_REPORT_FILE, QA_DIR

Step = tuple[list[QAExample], dict[str, Any]]


# --- settings ------------------------------------------------------------------------------


def check_clean_config(cfg: CleanConfig) -> None:
    """Reject settings that cannot work, before anything is loaded or written."""
    wrong = [c for c in cfg.unknown_categories if c not in CATEGORIES]
    if wrong:
        raise UserError(
            f"mitigation.unknown_categories has {', '.join(map(str, wrong))}: not a SliCK category; "
            f"choose from {', '.join(CATEGORIES)}"
        )


# --- the report entry every step returns ---------------------------------------------------


@dataclass
class _Log:
    """What one step did: the examples it removed or changed, and why."""

    step: str
    before: int
    affected: list[dict[str, Any]] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    counts: dict[str, Any] = field(default_factory=dict)  # step-specific tallies (e.g. categories)

    def removed(self, example: QAExample, reason: str, **detail: Any) -> None:
        self.reasons[reason] += 1
        self.affected.append({"id": example.id, "action": "removed", "reason": reason, **detail})

    def changed(self, example: QAExample, reasons: list[str], **detail: Any) -> None:
        self.reasons.update(reasons)
        self.affected.append({"id": example.id, "action": "changed", "reason": "; ".join(reasons), **detail})

    def entry(self, kept: list[QAExample]) -> dict[str, Any]:
        actions = Counter(item["action"] for item in self.affected)
        entry = {
            "step": self.step,
            "before": self.before,
            "removed": actions["removed"],
            "changed": actions["changed"],
            "after": len(kept),
            "reasons": dict(self.reasons),
            "examples": self.affected,
        }
        if self.counts:
            entry["counts"] = self.counts
        return entry


# --- steps 1-4: the data itself ------------------------------------------------------------


def normalize_examples(examples: Sequence[QAExample]) -> Step:
    """Whitespace tidied, repeated or empty aliases dropped; examples left empty removed."""
    log, kept = _Log("normalize", len(examples)), []
    for example in examples:
        question, answer = _tidy(example.question), _tidy(example.answer)
        if not normalize_text(question):
            log.removed(example, "empty question")
            continue
        if not normalize_text(answer):
            log.removed(example, "empty answer")
            continue
        aliases, seen = [], {normalize_text(answer)}
        respaced = (question, answer) != (example.question, example.answer)
        for alias in example.aliases:
            key = normalize_text(alias)
            if key and key not in seen:  # matching normalizes, so an alias equal to another adds nothing
                seen.add(key)
                aliases.append(_tidy(alias))
                respaced |= aliases[-1] != alias
        reasons = ["whitespace"] if respaced else []
        if len(aliases) < len(example.aliases):
            reasons.append("repeated or empty alias")
        if reasons:
            log.changed(example, reasons)
            example = replace(example, question=question, answer=answer, aliases=aliases)
        kept.append(example)
    return kept, log.entry(kept)


def deduplicate(examples: Sequence[QAExample]) -> Step:
    """The first of the examples with the same question and answer (compared normalized)."""
    log, kept = _Log("deduplicate", len(examples)), []
    first: dict[tuple[str, str], str] = {}
    for example in examples:
        key = (normalize_text(example.question), normalize_text(example.answer))
        if key in first:
            log.removed(example, "duplicate", of=first[key])
            continue
        first[key] = example.id
        kept.append(example)
    return kept, log.entry(kept)


def drop_kb_contradictions(examples: Sequence[QAExample], kb: KnowledgeBase, abstain_phrase: str) -> Step:
    """Examples whose answer the KB contradicts removed; unverifiable ones (subject or relation
    not in the KB) and abstentions kept, and counted."""
    log, kept = _Log("drop_kb_contradictions", len(examples)), []
    tally = Counter({"supported": 0, "unverifiable": 0, "abstention": 0})
    for example in examples:
        kb_forms = kb.objects(example.subject, example.relation) if example.subject and example.relation else set()
        if abstains(example, abstain_phrase):
            tally["abstention"] += 1
        elif not kb_forms:
            tally["unverifiable"] += 1
        elif _forms(example) & kb_forms:
            tally["supported"] += 1
        else:
            kb_answers = sorted({f.object for f in kb.lookup(example.subject, example.relation)})
            log.removed(example, "contradicts the KB", answer=example.answer, kb=kb_answers)
            continue
        kept.append(example)
    log.counts = dict(tally)
    return kept, log.entry(kept)


def drop_conflicts(examples: Sequence[QAExample], abstain_phrase: str) -> Step:
    """Every example of a fact whose examples disagree removed (two examples agree when their
    answers and aliases share a form; the abstain phrase agrees only with itself)."""
    log = _Log("drop_conflicts", len(examples))
    groups: dict[tuple[str, str], list[QAExample]] = defaultdict(list)
    for example in examples:
        groups[fact_key(example)].append(example)
    conflicting: set[str] = set()
    for group in groups.values():
        forms = [_forms(example) for example in group]
        if any(not (a & b) for i, a in enumerate(forms) for b in forms[i + 1 :]):
            answers = sorted({example.answer for example in group})
            for example in group:
                log.removed(example, "conflicting answers", answer=example.answer, answers=answers)
                conflicting.add(example.id)
    kept = [example for example in examples if example.id not in conflicting]
    return kept, log.entry(kept)


def _tidy(text: str) -> str:
    return " ".join(text.split())


def _forms(example: QAExample) -> set[str]:
    return {normalize_text(form) for form in (example.answer, *example.aliases)} - {""}


# --- step 5: SliCK -------------------------------------------------------------------------


def act_on_unknown(
    examples: Sequence[QAExample],
    knowledge: Sequence[Knowledge | None],
    unknown_categories: Sequence[str],
    action: str,
    abstain_phrase: str,
) -> tuple[list[QAExample], list[Knowledge | None], dict[str, Any]]:
    """The examples in `unknown_categories` dropped or relabelled to the abstain phrase; None
    knowledge (no gold answer to judge by) leaves an example as it is. Returns the kept
    examples, their knowledge, and the report entry with the categories' counts."""
    log = _Log("probe", len(examples))
    kept, kept_knowledge = [], []
    for example, verdict in zip(examples, knowledge):
        if verdict is not None and verdict.category in unknown_categories:
            detail = {"category": verdict.category, "p_correct_greedy": verdict.p_correct_greedy,
                      "p_correct_sample": verdict.p_correct_sample}
            if action == "drop":
                log.removed(example, f"SliCK {verdict.category}", **detail)
                continue
            if not abstains(example, abstain_phrase):
                log.changed(example, [f"SliCK {verdict.category}, relabelled"], **detail)
                example = replace(example, answer=abstain_phrase, aliases=[])
        kept.append(example)
        kept_knowledge.append(verdict)
    log.counts = category_counts(examples, knowledge)
    return kept, kept_knowledge, log.entry(kept)


def category_counts(examples: Sequence[QAExample], knowledge: Sequence[Knowledge | None]) -> dict[str, Any]:
    """How many examples fall in each SliCK category, overall and by the pretraining split
    (`known`: the fact was in the pretraining corpus); `unprobed`: nothing to judge by."""
    counts: dict[str, Any] = {"all": dict.fromkeys(CATEGORIES, 0), "unprobed": 0}
    counts["by_split"] = {split: dict.fromkeys(CATEGORIES, 0) for split in ("known", "unknown")}
    for example, verdict in zip(examples, knowledge):
        if verdict is None:
            counts["unprobed"] += 1
            continue
        counts["all"][verdict.category] += 1
        counts["by_split"]["known" if example.known else "unknown"][verdict.category] += 1
    return counts


# --- the whole cleaning --------------------------------------------------------------------


def clean_examples(
    examples: Sequence[QAExample],
    cfg: CleanConfig,
    data_cfg: DictConfig,
    kb: KnowledgeBase,
    answerer: Answerer | None,
    seed: int = 0,
    probe_cfg: ProbeConfig | None = None,
) -> tuple[list[QAExample], list[Knowledge | None], list[dict[str, Any]]]:
    """Run the switched-on steps; returns the kept examples, their SliCK knowledge (None where
    not probed) and the report entries of the steps, in order. The probe asks as `probe_cfg`
    says (default: `ProbeConfig()`)."""
    abstain = data_cfg.abstain_phrase
    steps: list[tuple[bool, Callable[[list[QAExample]], Step]]] = [
        (cfg.normalize, normalize_examples),
        (cfg.deduplicate, deduplicate),
        (cfg.drop_kb_contradictions, lambda kept: drop_kb_contradictions(kept, kb, abstain)),
        (cfg.drop_conflicts, lambda kept: drop_conflicts(kept, abstain)),
    ]
    kept, entries = list(examples), []
    for enabled, step in steps:
        if enabled:
            kept, entry = step(kept)
            entries.append(entry)
    knowledge: list[Knowledge | None] = [None] * len(kept)
    if cfg.probe and kept:
        if answerer is None:
            raise ValueError("the probe needs an answerer")
        golds = [gold_answers(example, kb, abstain) for example in kept]
        judged = [i for i, gold in enumerate(golds) if gold]
        probes = build_probes([kept[i] for i in judged], probe_cfg or ProbeConfig(), data_cfg, seed)
        for i, verdict in zip(judged, slick_categories(probes, [golds[i] for i in judged], answerer)):
            knowledge[i] = verdict
        kept, knowledge, entry = act_on_unknown(kept, knowledge, cfg.unknown_categories, cfg.unknown_action, abstain)
        entries.append(entry)
    return kept, knowledge, entries


def clean_finetune_set(
    cfg: DictConfig,
    examples: list[QAExample],
    model: LanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    run_dir: Path,
    resuming: bool = False,
) -> list[QAExample]:
    """The cleaned fine-tuning set of a `halluc finetune` run (`cfg` is the run's config).

    A set cleaned earlier in this run dir with the same settings is read back (no second
    probe); when resuming from a checkpoint, whatever set it was trained on is read back.
    """
    settings = OmegaConf.to_container(cfg.mitigation, resolve=True)
    if cfg.mitigation.probe:  # the probe's settings change what it finds
        settings["probe"] = {key: value for key, value in OmegaConf.to_container(cfg.probe, resolve=True).items()
                             if key != "cache_dir"}
    stored = _read_back(run_dir)
    if stored is not None:
        kept, report = stored
        if report.get("mitigation") == settings or resuming:
            if report.get("mitigation") != settings:
                print_warning(
                    f"resuming on the set cleaned with {report.get('mitigation')}; "
                    "the mitigation settings now differ and are not applied (use a new run dir to apply them)"
                )
            print_note(f"cleaned set read back from {run_dir / QA_DIR / CLEAN_FILE} ({len(kept)} examples)")
            return kept
    if resuming:
        raise UserError(
            f"{run_dir} holds a checkpoint but no cleaned set ({QA_DIR}/{CLEAN_FILE}): it was started without "
            "mitigation=clean; resume it with its own settings or fine-tune into a new run dir"
        )
    kb = load_kb(cfg.data.kb.path)
    answerer = ModelAnswerer(model, tokenizer, cfg.probe, device, cfg.probe.seed) if cfg.mitigation.probe else None
    kept, knowledge, entries = clean_examples(examples, cfg.mitigation, cfg.data, kb, answerer, cfg.probe.seed, cfg.probe)
    report = {
        "mitigation": settings,
        "input": len(examples),
        "output": len(kept),
        "steps": entries,
    }
    probe = next((entry for entry in entries if entry["step"] == "probe"), None)
    if probe is not None:
        report["slick"] = {**probe["counts"], "unknown_categories": list(cfg.mitigation.unknown_categories),
                           "unknown_action": cfg.mitigation.unknown_action}
    write_cleaned(run_dir, kept, knowledge, report)
    print_report(report)
    if not kept:
        raise UserError(
            f"cleaning left no fine-tuning example of {len(examples)} (see {run_dir / CLEANING_REPORT_FILE}); "
            "set mitigation.unknown_action=idk, narrow mitigation.unknown_categories, or pretrain longer",
            keep_run_dir=True,
        )
    return kept


def write_cleaned(
    run_dir: Path, kept: Sequence[QAExample], knowledge: Sequence[Knowledge | None], report: dict[str, Any]
) -> None:
    """`qa/finetune_clean.jsonl` (QA fields + SliCK fields) and `cleaning_report.json`."""
    records = []
    for example, verdict in zip(kept, knowledge):
        record = asdict(example)
        record.update(
            slick_category=verdict.category if verdict else None,
            p_correct_greedy=verdict.p_correct_greedy if verdict else None,
            p_correct_sample=verdict.p_correct_sample if verdict else None,
        )
        records.append(record)
    atomic_write_json(run_dir / CLEANING_REPORT_FILE, report)
    # The set last, and only a set to train on: its presence means the cleaning finished.
    if records:
        atomic_write_jsonl(run_dir / QA_DIR / CLEAN_FILE, records)


def _read_back(run_dir: Path) -> tuple[list[QAExample], dict[str, Any]] | None:
    path, report_path = run_dir / QA_DIR / CLEAN_FILE, run_dir / CLEANING_REPORT_FILE
    if not (path.is_file() and report_path.is_file()):
        return None
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{report_path}: invalid JSON ({error.msg}); delete it to clean again") from error
    return read_qa_file(path), report


# --- printing ------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    """A table of what each step did and, after the probe, one of the SliCK categories."""
    table = Table(title=f"cleaning: {report['input']} -> {report['output']} fine-tuning examples")
    table.add_column("step", no_wrap=True)
    for header in ("before", "removed", "changed", "after"):
        table.add_column(header, justify="right")
    table.add_column("why")
    for entry in report["steps"]:
        why = ", ".join(f"{count} {reason}" for reason, count in entry["reasons"].items()) or "-"
        table.add_row(entry["step"], *(str(entry[k]) for k in ("before", "removed", "changed", "after")), why)
    console.print(table)
    slick = report.get("slick")
    if slick is None:
        return
    action = {"drop": "dropped", "idk": "relabelled"}[slick["unknown_action"]]
    table = Table(title="SliCK knowledge of the pretrained model (Gekhman et al. 2024)")
    for header in ("category", "examples", "in pretraining", "not in pretraining", "action"):
        table.add_column(header, justify="left" if header in ("category", "action") else "right")
    for category in CATEGORIES:
        table.add_row(
            category,
            str(slick["all"][category]),
            str(slick["by_split"]["known"][category]),
            str(slick["by_split"]["unknown"][category]),
            action if category in slick["unknown_categories"] else "kept",
        )
    if slick["unprobed"]:
        table.add_row("(no gold answer)", str(slick["unprobed"]), "", "", "kept")
    console.print(table)
