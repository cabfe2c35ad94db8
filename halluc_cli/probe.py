"""SliCK (Gekhman et al. 2024): what a model knows of each fact, asked with several prompts.

`build_probes` makes each example's prompts, `gold_answers` what counts as right,
`slick_categories` asks a model (an `Answerer`, e.g. `ModelAnswerer`) and sorts each fact
into a category; `complete_statements` asks each fact once, as the cloze of one statement
template (the forgetting ledger, `ledger.py`). `data.known_from=probe` builds the QA sets from the categories
(`data/categories.py`); `mitigation=clean` drops or relabels the unknown examples
(`mitigation/clean.py`). The settings are `ProbeConfig` (`cfg.probe`).

SliCK as done here. A fact is asked with several prompts. `prompts: questions` is SliCK's
own probe: `exemplar_sets` prompts, each the question (the relation's question templates and
the example's own question, in turn) in `data.prompt_template` after `shots` solved exemplars
of other facts of the same relation, drawn anew for each prompt. `prompts: statements`
completes each of the relation's statement templates that ends in the object ("The capital
of France is"), the form a model pretrained on KB statements has seen; its templates stand in
for the exemplar sets. P(T=0) is the share of the prompts whose greedy answer is correct,
P(T>0) the share of `num_samples` answers per prompt sampled at `temperature` (SliCK: T=0.5)
that are:
  HighlyKnown  P(T=0) = 1         MaybeKnown   0 < P(T=0) < 1
  WeaklyKnown  P(T=0) = 0 < P(T>0) Unknown     P(T=0) = P(T>0) = 0
An answer is cut at the first line break or at the text that follows the answer in its
prompt form (the template's "." after {object}; the "Q:" that starts a next exemplar) and
judged with `is_correct` against the answer, its aliases and the KB's forms. An example
already labelled with the abstain phrase (data.unknown_label=idk) is judged against the KB.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from halluc_cli.config import SLICK_CATEGORIES, DecodingConfig, ProbeConfig, ProbePrompts, SampleDecodingConfig
from halluc_cli.data.kb import KnowledgeBase
from halluc_cli.data.qa import QAExample, abstains, fact_key
from halluc_cli.data.tokenizer import prompt_ids
from halluc_cli.decoding import Decoder
from halluc_cli.console import console
from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_jsonl, read_jsonl
from halluc_cli.models import LanguageModel
from halluc_cli.scoring.metrics import is_correct

CATEGORIES = SLICK_CATEGORIES
HIGHLY_KNOWN, MAYBE_KNOWN, WEAKLY_KNOWN, UNKNOWN = CATEGORIES
_OBJECT, _SUBJECT = "{object}", "{subject}"


# --- what the probe asks, and what it finds ------------------------------------------------


@dataclass(frozen=True)
class ProbePrompt:
    """One way of asking a fact, and the text that ends an answer given to it."""

    text: str
    stop: str  # e.g. "." after a statement's object; "Q:" before a next few-shot question


@dataclass(frozen=True)
class Knowledge:
    """SliCK's verdict on one fact: its category and the two P(correct) estimates."""

    category: str
    p_correct_greedy: float
    p_correct_sample: float


@dataclass(frozen=True)
class Answers:
    """A model's answers to one prompt: its greedy answer and its sampled ones."""

    greedy: str
    samples: list[str]


class Answerer(Protocol):
    """Answers each prompt greedily and with several samples."""

    def answer(self, prompts: list[str]) -> list[Answers]: ...


@dataclass
class ModelAnswerer:
    """An `Answerer` backed by a language model and the batched `Decoder`."""

    model: LanguageModel
    tokenizer: PreTrainedTokenizerBase
    cfg: ProbeConfig
    device: torch.device = torch.device("cpu")
    seed: int = 0

    def answer(self, prompts: list[str]) -> list[Answers]:
        """Each prompt's greedy answer and `num_samples` sampled ones, from one pass over it."""
        sample = SampleDecodingConfig(
            temperature=self.cfg.temperature,
            num_samples=self.cfg.num_samples,
            max_new_tokens=self.cfg.max_new_tokens,
            batch_size=self.cfg.batch_size,
        )
        decoder = Decoder(self.model.to(self.device), self.tokenizer, sample, self.device, self.seed)
        return [Answers(first, rest) for first, *rest in decoder.generate_with_greedy(self._texts(prompts))]

    def greedy(self, prompts: list[str]) -> list[str]:
        """Each prompt's greedy answer alone, without samples (statement completion)."""
        greedy = DecodingConfig(max_new_tokens=self.cfg.max_new_tokens, batch_size=self.cfg.batch_size)
        decoder = Decoder(self.model.to(self.device), self.tokenizer, greedy, self.device, self.seed)
        return [first for first, in decoder.generate(self._texts(prompts))]

    def _texts(self, prompts: list[str]) -> list[str]:
        # Each prompt starts as a line of the pretraining text does: after the token that
        # separates documents (halluc's tokenizers: <eos>; GPT-2: <|endoftext|>), unless the
        # tokenizer puts its start token there itself (Llama's <s>: `prompt_ids`).
        start = self.tokenizer.bos_token or ""
        if start and prompt_ids(self.tokenizer, "a")[:1] == [self.tokenizer.bos_token_id]:
            start = ""
        return [start + prompt for prompt in prompts]


# --- the verdict: SliCK's categories -------------------------------------------------------


def slick_category(p_correct_greedy: float, p_correct_sample: float) -> str:
    """SliCK's category from P(correct) under greedy decoding (T=0) and sampling (T>0)."""
    if p_correct_greedy >= 1:
        return HIGHLY_KNOWN
    if p_correct_greedy > 0:
        return MAYBE_KNOWN
    return WEAKLY_KNOWN if p_correct_sample > 0 else UNKNOWN


def slick_categories(
    probes: Sequence[Sequence[ProbePrompt]], golds: Sequence[Iterable[str]], answerer: Answerer
) -> list[Knowledge]:
    """SliCK's verdict on each fact, from its probe prompts and its accepted answers.

    All prompts go to the answerer at once (batched: each prompt's greedy and sampled rows together).
    """
    if len(probes) != len(golds):
        raise ValueError(f"{len(probes)} probes but {len(golds)} gold answer sets")
    if any(not prompts for prompts in probes):
        raise ValueError("every fact needs at least one probe prompt")
    if not probes:
        return []
    flat = [prompt for prompts in probes for prompt in prompts]
    answers = answerer.answer([prompt.text for prompt in flat])
    verdicts, start = [], 0
    for prompts, gold in zip(probes, golds):
        gold = list(gold)
        end = start + len(prompts)
        right_greedy = [_judge(answer.greedy, prompt.stop, gold) for prompt, answer in zip(prompts, answers[start:end])]
        right_sampled = [
            _judge(sample, prompt.stop, gold)
            for prompt, answer in zip(prompts, answers[start:end])
            for sample in answer.samples
        ]
        p_greedy = sum(right_greedy) / len(right_greedy)
        p_sample = sum(right_sampled) / len(right_sampled) if right_sampled else 0.0
        verdicts.append(Knowledge(slick_category(p_greedy, p_sample), p_greedy, p_sample))
        start = end
    return verdicts


def answer_part(continuation: str, stop: str) -> str:
    """A continuation up to its first line break or `stop`; spaces inside `stop` are allowed
    (a word tokenizer decodes "Q:" as "Q :") and a stop that starts with a letter must start a word."""
    text = continuation.split("\n", 1)[0]
    chars = [char for char in stop if not char.isspace()]
    if chars:
        pattern = r"\s*".join(re.escape(char) for char in chars)
        if chars[0].isalnum():
            pattern = r"(?<!\w)" + pattern
        found = re.search(pattern, text)
        if found:
            text = text[: found.start()]
    return text.strip()


def _judge(answer: str, stop: str, gold: list[str]) -> bool:
    # The whole continuation too: an object holding the stop ("St. Louis") is cut short by it.
    return is_correct(answer_part(answer, stop), gold) or is_correct(answer, gold)


# --- the prompts of a fact, and its right answers ------------------------------------------


def statement_prompts(example: QAExample, statements: Sequence[str]) -> list[ProbePrompt]:
    """Cloze prompts: each statement template that names the subject before an object that
    ends the sentence, cut before the object ("The capital of {subject} is {object}.")."""
    prompts = []
    for template in filter(is_cloze, statements):
        head, _, tail = template.partition(_OBJECT)
        text = head.replace(_SUBJECT, example.subject).rstrip()
        prompt = ProbePrompt(text, tail.strip())
        if prompt not in prompts:
            prompts.append(prompt)
    return prompts


def is_cloze(template: str) -> bool:
    """Whether a statement template can be asked as a cloze: {subject} before an {object} that
    ends the sentence."""
    head, marker, tail = template.partition(_OBJECT)
    return bool(marker) and _SUBJECT in head and not any(char.isalnum() for char in tail)


def cloze_templates(statements: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """relation -> its first statement template that `is_cloze`; a relation without one is a
    UserError (its facts cannot be asked in the pretraining format)."""
    chosen = {}
    for relation, templates in statements.items():
        found = next(filter(is_cloze, templates), None)
        if found is None:
            raise UserError(
                f"relation {relation!r} has no statement template with {{subject}} before an {{object}} that "
                "ends it, so its facts cannot be asked as statements; add one under kb.relations"
            )
        chosen[relation] = found
    return chosen


@dataclass(frozen=True)
class Completion:
    """A statement completed by a model: its answer (cut at the template's stop) and whether it is right."""

    answer: str
    right: bool


def complete_statements(
    answerer: ModelAnswerer, examples: Sequence[QAExample], templates: Mapping[str, str]
) -> list[Completion]:
    """Each example's fact asked as the cloze of its relation's template (`cloze_templates`:
    "The capital of France is"), answered greedily and judged as the probe judges (its answer
    and aliases): storage as the pretraining format shows it, apart from QA extraction."""
    prompts = [statement_prompts(example, [templates[example.relation]])[0] for example in examples]
    answers = answerer.greedy([prompt.text for prompt in prompts])
    return [
        Completion(answer_part(answer, prompt.stop), _judge(answer, prompt.stop, [example.answer, *example.aliases]))
        for example, prompt, answer in zip(examples, prompts, answers)
    ]


def question_prompts(
    example: QAExample,
    questions: Sequence[str],
    exemplars: Sequence[QAExample],
    prompt_template: str,
    cfg: ProbeConfig,
    rng: random.Random,
) -> list[ProbePrompt]:
    """SliCK's k-shot prompts: `exemplar_sets` of them, each a question form (the relation's
    templates and the example's own question, in turn) after `shots` solved exemplars about
    other facts of the relation, drawn from `exemplars` anew for each prompt."""
    forms = list(dict.fromkeys([*(q.replace(_SUBJECT, example.subject) for q in questions), example.question]))
    others = [e for e in exemplars if fact_key(e) != fact_key(example)]
    marker = prompt_template.partition("{question}")[0].strip() or "\n"
    prompts = []
    for index in range(cfg.exemplar_sets):
        chosen = rng.sample(others, min(cfg.shots, len(others)))
        solved = [prompt_template.format(question=e.question) + " " + e.answer for e in chosen]
        question = forms[index % len(forms)]
        prompts.append(ProbePrompt("\n".join([*solved, prompt_template.format(question=question)]), marker))
    return prompts


def prompt_form(cfg: ProbeConfig, data_cfg: DictConfig) -> ProbePrompts:
    """The probe's prompt form: `cfg.prompts`, or for `auto` statements where the facts come
    from a KB with statement templates and questions otherwise (a QA file)."""
    if cfg.prompts != ProbePrompts.auto:
        return ProbePrompts(cfg.prompts)
    return ProbePrompts.statements if "kb" in data_cfg else ProbePrompts.questions


def build_probes(
    examples: Sequence[QAExample], cfg: ProbeConfig, data_cfg: DictConfig, seed: int
) -> list[list[ProbePrompt]]:
    """The probe prompts of each example, in the form `prompt_form` says."""
    relations = data_cfg.kb.relations if "kb" in data_cfg else {}
    if prompt_form(cfg, data_cfg) == ProbePrompts.statements:
        if "kb" not in data_cfg:
            raise UserError("probe.prompts=statements needs a KB's statement templates (data=kbqa); use probe.prompts=questions")
        probes = []
        for example in examples:
            templates = list(relations[example.relation].statements) if example.relation in relations else []
            prompts = statement_prompts(example, templates)
            if not prompts:
                raise UserError(
                    f"relation {example.relation!r} has no statement template with {{subject}} before an "
                    "{object} that ends it, so the probe cannot ask it; add one under kb.relations or "
                    "set probe.prompts=questions"
                )
            probes.append(prompts)
        return probes
    rng = random.Random(seed)
    by_relation: dict[str, list[QAExample]] = defaultdict(list)
    for example in examples:
        if not abstains(example, data_cfg.abstain_phrase):
            by_relation[example.relation].append(example)
    _check_exemplars(by_relation, cfg.shots)
    return [
        question_prompts(
            example,
            list(relations[example.relation].questions) if example.relation in relations else [],
            by_relation[example.relation],
            data_cfg.prompt_template,
            cfg,
            rng,
        )
        for example in examples
    ]


def _check_exemplars(by_relation: dict[str, list[QAExample]], shots: int) -> None:
    """Each relation needs `shots` other facts to draw a fact's exemplars from."""
    for relation, examples in sorted(by_relation.items()):
        facts = {fact_key(example) for example in examples}
        if len(facts) <= shots:
            name = f"relation {relation!r}" if relation else "the facts without a relation"
            raise UserError(
                f"{name} has {len(facts)} fact(s), too few for probe.shots={shots} exemplars of other facts; "
                f"lower probe.shots (at most {max(len(facts) - 1, 0)}) or add facts of that relation"
            )


def gold_answers(example: QAExample, kb: KnowledgeBase, abstain_phrase: str) -> set[str]:
    """What counts as a correct answer to the example's fact: its answer and aliases and the
    KB's forms; for an example labelled with the abstain phrase, the KB's forms alone."""
    kb_forms = {form for fact in kb.lookup(example.subject, example.relation) for form in fact.surface_forms}
    if abstains(example, abstain_phrase):
        return kb_forms
    return {example.answer, *example.aliases} | kb_forms


# --- probing a pool of facts, once per model --------------------------------------------------


def probe_pool(
    pool: Sequence[QAExample],
    probes: Sequence[Sequence[ProbePrompt]],
    answerer: Answerer,
    cfg: ProbeConfig,
    data_cfg: DictConfig,
    model_id: str,
) -> list[Knowledge]:
    """SliCK's verdict on every fact of `pool` (its `probes`, from `build_probes`; gold: its
    answer and aliases), read back from `cfg.cache_dir` when this model was probed on these
    facts with these settings before.

    The cache file is locked while it is made, so the runs of a sweep launched together
    (a SLURM array) probe once and the others wait for it and read it.
    """
    if cfg.cache_dir is None:
        return _probe(pool, probes, answerer, cfg)
    path = Path(cfg.cache_dir) / f"{_cache_key(pool, cfg, data_cfg, model_id)}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        cached = _read_cached(path, pool)
        if cached is not None:
            console.print(f"probe: the categories of {len(pool)} facts read back from {path}", highlight=False)
            return cached
        knowledge = _probe(pool, probes, answerer, cfg)
        atomic_write_jsonl(path, knowledge_records(pool, knowledge))
        return knowledge


def knowledge_records(pool: Sequence[QAExample], knowledge: Sequence[Knowledge]) -> list[dict[str, Any]]:
    """One JSON record per fact: what was asked, its category and the two P(correct)."""
    return [
        {"subject": e.subject, "relation": e.relation, "question": e.question, "answer": e.answer, **asdict(k)}
        for e, k in zip(pool, knowledge)
    ]


def model_identity(model_dir: str, revision: str | None = None) -> str:
    """What tells one model's weights from another's: a local dir's files (name, size, time
    written), or a hub name and the commit its weights came from (`revision`), so a model
    updated upstream is probed again."""
    path = Path(model_dir)
    if not path.is_dir():
        return f"hub:{model_dir}@{revision}"
    files = sorted(child for child in path.iterdir() if child.is_file())
    return json.dumps([[child.name, child.stat().st_size, child.stat().st_mtime_ns] for child in files])


def _probe(
    pool: Sequence[QAExample], probes: Sequence[Sequence[ProbePrompt]], answerer: Answerer, cfg: ProbeConfig
) -> list[Knowledge]:
    prompts = sum(len(prompts) for prompts in probes)
    console.print(
        f"probe: {len(pool)} facts, {prompts} prompts, each answered greedily and {cfg.num_samples} times "
        f"at T={cfg.temperature} (SliCK)",
        highlight=False,
    )
    return slick_categories(probes, [{e.answer, *e.aliases} for e in pool], answerer)


def _cache_key(pool: Sequence[QAExample], cfg: ProbeConfig, data_cfg: DictConfig, model_id: str) -> str:
    # Every setting but where the cache is (the batch too: it orders the sampling draws), resolved
    # (probe.seed: ${seed} is the run's seed).
    node = cfg if OmegaConf.is_config(cfg) else OmegaConf.structured(cfg)  # a copy would lose ${seed}'s root
    settings = OmegaConf.to_container(node, resolve=True)
    del settings["cache_dir"]
    relations = data_cfg.kb.relations if "kb" in data_cfg else {}
    described = {
        "model": model_id,
        "probe": {**settings, "prompts": str(prompt_form(cfg, data_cfg))},
        "prompt_template": data_cfg.prompt_template,
        "templates": OmegaConf.to_container(relations) if OmegaConf.is_config(relations) else relations,
        "facts": [[e.question, e.answer, list(e.aliases), e.subject, e.relation] for e in pool],
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _read_cached(path: Path, pool: Sequence[QAExample]) -> list[Knowledge] | None:
    """The cached verdicts, or None where there is no cache file or it does not fit the pool."""
    if not path.is_file():
        return None
    try:
        records = [record for _, record in read_jsonl(path)]
        if [record["question"] for record in records] != [e.question for e in pool]:
            return None
        return [Knowledge(r["category"], r["p_correct_greedy"], r["p_correct_sample"]) for r in records]
    except (UserError, KeyError, TypeError):
        return None  # a damaged cache is probed again
