"""Data cleaning (`mitigation=clean`): each step on hand-made examples, SliCK categories from a
scripted answerer and from a small model that knows half of a KB's facts, bad settings."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch
from omegaconf import OmegaConf

from halluc_cli.config import (
    CleanConfig,
    DecodingConfig,
    KBConfig,
    KBQAConfig,
    ProbeConfig,
    RelationTemplates,
    TransformerConfig,
)
from halluc_cli.data.kb import Fact, KnowledgeBase
from halluc_cli.data.qa import QAExample
from halluc_cli.data.tokenizer import load_tokenizer
from halluc_cli.errors import UserError
from halluc_cli.mitigation import check_finetune_mitigation
from halluc_cli.mitigation.clean import (
    act_on_unknown,
    check_clean_config,
    clean_examples,
    deduplicate,
    drop_conflicts,
    drop_kb_contradictions,
    normalize_examples,
)
from halluc_cli.decoding import Decoder
from halluc_cli.models import build_model, load_model
from halluc_cli.probe import (
    HIGHLY_KNOWN,
    MAYBE_KNOWN,
    UNKNOWN,
    WEAKLY_KNOWN,
    Answers,
    ModelAnswerer,
    ProbePrompt,
    answer_part,
    build_probes,
    question_prompts,
    slick_categories,
    slick_category,
    statement_prompts,
)

IDK = "I don't know"


def qa(id: str, question: str, answer: str, subject: str = "France", relation: str = "capital", **fields) -> QAExample:
    defaults = dict(aliases=[], known=True, split="finetune")
    return QAExample(id, question, answer, subject=subject, relation=relation, **{**defaults, **fields})


def clean_cfg(**settings) -> CleanConfig:
    return OmegaConf.structured(CleanConfig(**settings))


def probe_cfg(**settings) -> ProbeConfig:
    return OmegaConf.structured(ProbeConfig(**settings))


def data_cfg(statements=("The capital of {subject} is {object}.",), questions=("What is the capital of {subject}?",)):
    relations = {"capital": RelationTemplates(list(statements), list(questions))}
    return OmegaConf.structured(KBQAConfig(kb=KBConfig(relations=relations)))


KB = KnowledgeBase(
    [
        Fact("France", "capital", "Paris"),
        Fact("Brazil", "capital", "Brasília", ("Brasilia",)),
        Fact("Peru", "capital", "Lima"),
    ]
)


# --- steps 1-4 -------------------------------------------------------------------------------


def test_normalize_tidies_whitespace_and_aliases_and_drops_empty_examples() -> None:
    examples = [
        qa("a", "What is  the capital of France? ", " Paris"),
        qa("b", "What is the capital of Brazil?", "Brasília", "Brazil",
           aliases=["Brasilia", "Brazilia", "brazilia", " "]),
        qa("c", "  ", "Lima", "Peru"),
        qa("d", "What is the capital of Peru?", " ... ", "Peru"),
        qa("e", "What is the capital of Peru?", "Lima", "Peru"),
    ]
    kept, entry = normalize_examples(examples)
    assert [e.id for e in kept] == ["a", "b", "e"]
    assert (kept[0].question, kept[0].answer) == ("What is the capital of France?", "Paris")
    assert kept[1].aliases == ["Brazilia"]  # "Brasilia" is the answer once normalized
    assert kept[2] == examples[4]  # untouched
    assert (entry["before"], entry["removed"], entry["changed"], entry["after"]) == (5, 2, 2, 3)
    assert entry["reasons"] == {"whitespace": 1, "repeated or empty alias": 1, "empty question": 1, "empty answer": 1}
    actions = {item["id"]: item["action"] for item in entry["examples"]}
    assert actions == {"a": "changed", "b": "changed", "c": "removed", "d": "removed"}


def test_deduplicate_keeps_the_first_of_the_same_question_and_answer() -> None:
    examples = [
        qa("a", "What is the capital of France?", "Paris"),
        qa("b", "what is the capital of france", "the Paris."),  # same after normalize_text
        qa("c", "Which city is the capital of France?", "Paris"),  # another question form stays
        qa("d", "What is the capital of France?", "Lyon"),  # another answer: a conflict, not a duplicate
    ]
    kept, entry = deduplicate(examples)
    assert [e.id for e in kept] == ["a", "c", "d"]
    assert entry["removed"] == 1
    assert entry["examples"] == [{"id": "b", "action": "removed", "reason": "duplicate", "of": "a"}]


def test_kb_contradictions_are_dropped_and_the_rest_counted() -> None:
    examples = [
        qa("supported", "Capital of Brazil?", "Brasilia", "Brazil"),  # the KB's alias
        qa("contradicted", "Capital of Peru?", "Cusco", "Peru"),
        qa("unverifiable", "Capital of Atlantis?", "Poseidonia", "Atlantis"),
        qa("abstains", "Capital of France?", IDK),
        qa("no subject", "Capital of France?", "Lyon", subject=""),
    ]
    kept, entry = drop_kb_contradictions(examples, KB, IDK)
    assert [e.id for e in kept] == ["supported", "unverifiable", "abstains", "no subject"]
    assert entry["removed"] == 1 and entry["reasons"] == {"contradicts the KB": 1}
    assert entry["examples"][0]["kb"] == ["Lima"]
    assert entry["counts"] == {"supported": 1, "unverifiable": 2, "abstention": 1}


def test_conflicting_answers_for_one_fact_drop_every_example_of_it() -> None:
    examples = [
        qa("a", "What is the capital of Brazil?", "Brasília", "Brazil"),
        qa("b", "Which city is the capital of Brazil?", "Brasilia", "Brazil"),  # agrees (same after normalizing)
        qa("c", "What is the capital of France?", "Paris"),
        qa("d", "Which city is the capital of France?", "Lyon"),
        qa("e", "What is the capital of Peru?", "Lima", "Peru"),
        qa("f", "Capital of Peru?", IDK, "Peru"),  # an abstention label disagrees with an answer
        qa("g", "Capital of Chile?", "Santiago", subject="", relation=""),  # no fact: grouped by question
        qa("h", "capital of chile", "Valparaíso", subject="", relation=""),
    ]
    kept, entry = drop_conflicts(examples, IDK)
    assert [e.id for e in kept] == ["a", "b"]
    assert entry["removed"] == 6 and entry["reasons"] == {"conflicting answers": 6}
    answers = {tuple(item["answers"]) for item in entry["examples"]}
    assert answers == {("Lyon", "Paris"), (IDK, "Lima"), ("Santiago", "Valparaíso")}


def test_steps_switch_off_and_the_counts_add_up() -> None:
    examples = [
        qa("a", "What is the capital of France?", "Paris"),
        qa("b", "What is the capital of France?", "Paris"),
        qa("c", "What is the capital of Peru?", "Cusco", "Peru"),
    ]
    kept, knowledge, entries = clean_examples(examples, clean_cfg(probe=False), data_cfg(), KB, None)
    assert [e.id for e in kept] == ["a"] and knowledge == [None]
    steps = [entry["step"] for entry in entries]
    assert steps == ["normalize", "deduplicate", "drop_kb_contradictions", "drop_conflicts"]
    for before, after in zip(entries, entries[1:]):
        assert before["after"] == after["before"]
    assert sum(entry["removed"] for entry in entries) == len(examples) - len(kept)
    off = clean_cfg(normalize=False, deduplicate=False, drop_kb_contradictions=False, drop_conflicts=False, probe=False)
    assert clean_examples(examples, off, data_cfg(), KB, None) == (examples, [None] * 3, [])


# --- SliCK -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p_greedy, p_sample, category",
    [
        (1.0, 0.0, HIGHLY_KNOWN),
        (0.5, 0.0, MAYBE_KNOWN),
        (0.01, 1.0, MAYBE_KNOWN),
        (0.0, 0.25, WEAKLY_KNOWN),
        (0.0, 0.0, UNKNOWN),
    ],
)
def test_slick_category_definitions(p_greedy: float, p_sample: float, category: str) -> None:
    assert slick_category(p_greedy, p_sample) == category


class ScriptedAnswerer:
    """Answers from fixed tables, and records what it was asked."""

    def __init__(self, greedy: dict[str, str], samples: dict[str, list[str]]) -> None:
        self.greedy_answers, self.sampled_answers, self.asked = greedy, samples, []

    def answer(self, prompts: list[str]) -> list[Answers]:
        self.asked.append(prompts)
        return [
            Answers(self.greedy_answers.get(prompt, ""), self.sampled_answers.get(prompt, ["", ""])) for prompt in prompts
        ]


def test_slick_categories_from_a_scripted_answerer() -> None:
    # Two prompt forms per fact; "." ends an answer, so "Paris. It is big" counts as "Paris".
    probes = [[ProbePrompt(f"{fact} 1", "."), ProbePrompt(f"{fact} 2", ".")] for fact in "ABCD"]
    answerer = ScriptedAnswerer(
        greedy={"A 1": "Paris. It is big", "A 2": "paris", "B 1": "Paris", "B 2": "Lyon", "C 1": "Lyon", "D 1": "Nice"},
        samples={"C 1": ["Lyon", "Paris"], "C 2": ["Nice", "Nice"], "D 1": ["Lyon", "Nice"]},
    )
    verdicts = slick_categories(probes, [["Paris"]] * 4, answerer)
    assert [v.category for v in verdicts] == [HIGHLY_KNOWN, MAYBE_KNOWN, WEAKLY_KNOWN, UNKNOWN]
    assert (verdicts[1].p_correct_greedy, verdicts[2].p_correct_sample) == (0.5, 0.25)
    assert len(answerer.asked) == 1 and len(answerer.asked[0]) == 8  # one batched pass


def test_answer_part_stops_at_the_text_after_the_answer() -> None:
    assert answer_part("Paris . The capital of", ".") == "Paris"
    assert answer_part("Paris Q : What is", "Q:") == "Paris"
    assert answer_part("Qatar Q: x", "Q:") == "Qatar"  # a stop that starts a word only cuts at a word start
    assert answer_part("Paris\nQ: next", "") == "Paris"


def test_statement_prompts_are_the_templates_cut_before_a_final_object() -> None:
    statements = [
        "The capital of {subject} is {object}.",
        "{object} is the capital of {subject}.",  # object first: cannot be completed
        "The {object} is the currency of {subject}.",
        "In {subject}, the capital is {object}",
    ]
    prompts = statement_prompts(qa("a", "q", "Paris"), statements)
    assert prompts == [ProbePrompt("The capital of France is", "."), ProbePrompt("In France, the capital is", "")]


def test_question_prompts_put_solved_exemplars_of_other_facts_first() -> None:
    pool = [qa("a", "What is the capital of France?", "Paris"), qa("b", "What is the capital of Peru?", "Lima", "Peru")]
    templates = ["What is the capital of {subject}?", "Which city is the capital of {subject}?"]
    cfg = probe_cfg(shots=4, exemplar_sets=3)
    prompts = question_prompts(pool[0], templates, pool, "Q: {question} A:", cfg, random.Random(0))
    # exemplar_sets prompts, the question forms in turn (the example's own question is the first template)
    assert [p.text for p in prompts] == [
        "Q: What is the capital of Peru? A: Lima\nQ: What is the capital of France? A:",
        "Q: What is the capital of Peru? A: Lima\nQ: Which city is the capital of France? A:",
        "Q: What is the capital of Peru? A: Lima\nQ: What is the capital of France? A:",
    ]
    assert {p.stop for p in prompts} == {"Q:"}


def test_question_prompts_draw_new_exemplars_for_each_set() -> None:
    pool = [qa(f"e{i}", f"What is the capital of C{i}?", f"City{i}", f"C{i}") for i in range(12)]
    prompts = question_prompts(pool[0], [], pool, "Q: {question} A:", probe_cfg(shots=2, exemplar_sets=5), random.Random(0))
    assert len(prompts) == 5 and len({p.text for p in prompts}) > 1
    assert all("C0?" not in p.text.rsplit("\n", 1)[0] for p in prompts)  # never the fact itself as an exemplar


def test_a_relation_with_too_few_facts_for_the_shots_is_a_clear_error() -> None:
    pool = [qa(f"e{i}", f"What is the capital of C{i}?", f"City{i}", f"C{i}") for i in range(3)]
    with pytest.raises(UserError, match=r"relation 'capital' has 3 fact\(s\), too few for probe.shots=4.*at most 2"):
        build_probes(pool, probe_cfg(prompts="questions", shots=4), data_cfg(), 0)


def test_relation_without_a_usable_statement_template_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="probe.prompts=questions"):
        object_first = data_cfg(statements=["{object} is the capital of {subject}."])
        build_probes([qa("a", "q", "Paris")], probe_cfg(), object_first, 0)


@pytest.mark.parametrize("action", ["drop", "idk"])
def test_unknown_examples_are_dropped_or_relabelled(action: str) -> None:
    examples = [qa("a", "q", "Paris"), qa("b", "q2", "Lima", "Peru", known=False), qa("c", "q3", "Brasília", "Brazil")]
    answerer = ScriptedAnswerer(
        greedy={"The capital of France is": "Paris ."}, samples={"The capital of Brazil is": ["x", "Brasilia"]}
    )
    cfg = clean_cfg(unknown_action=action, deduplicate=False, drop_conflicts=False, drop_kb_contradictions=False)
    kept, knowledge, entries = clean_examples(examples, cfg, data_cfg(), KB, answerer)
    probe = entries[-1]
    assert probe["counts"]["all"] == {HIGHLY_KNOWN: 1, MAYBE_KNOWN: 0, WEAKLY_KNOWN: 1, UNKNOWN: 1}
    assert probe["counts"]["by_split"]["unknown"][UNKNOWN] == 1
    if action == "drop":
        assert [e.id for e in kept] == ["a", "c"] and (probe["removed"], probe["changed"]) == (1, 0)
    else:
        assert [e.answer for e in kept] == ["Paris", IDK, "Brasília"]
        assert (probe["removed"], probe["changed"]) == (0, 1)
    assert [k.category for k in knowledge] == [HIGHLY_KNOWN, *([UNKNOWN] if action == "idk" else []), WEAKLY_KNOWN]


def test_a_wider_unknown_set_and_an_abstain_label_judged_by_the_kb() -> None:
    # data.unknown_label=idk already relabelled this example: the KB's answer judges the probe.
    example = qa("a", "q", IDK, "Peru")
    answerer = ScriptedAnswerer(greedy={}, samples={"The capital of Peru is": ["Lima", "x"]})
    kept, knowledge, _ = clean_examples([example], clean_cfg(), data_cfg(), KB, answerer)
    assert kept == [example] and knowledge[0].category == WEAKLY_KNOWN
    wider = clean_cfg(unknown_categories=["Unknown", "WeaklyKnown"], unknown_action="idk")
    kept, _, entries = clean_examples([example], wider, data_cfg(), KB, answerer)
    assert kept == [example] and entries[-1]["changed"] == 0  # already the abstain phrase: nothing to change


def test_examples_without_a_gold_answer_are_not_probed() -> None:
    examples = [qa("a", "q", IDK, "Atlantis")]  # abstain label, and the KB does not know Atlantis
    kept, knowledge, entries = clean_examples(examples, clean_cfg(), data_cfg(), KB, ScriptedAnswerer({}, {}))
    assert kept == examples and knowledge == [None] and entries[-1]["counts"]["unprobed"] == 1


def test_act_on_unknown_leaves_unprobed_examples() -> None:
    examples = [qa("a", "q", "Paris")]
    kept, knowledge, entry = act_on_unknown(examples, [None], ["Unknown"], "drop", IDK)
    assert kept == examples and entry["removed"] == 0


def test_a_model_knows_the_facts_it_was_trained_on(knowing_run) -> None:
    """The probe on a real model: the facts stated in its pretraining text come out known,
    the others unknown."""
    checkpoint = knowing_run.path / "checkpoint"
    model, tokenizer = load_model(checkpoint), load_tokenizer(checkpoint)
    seen = set(json.loads((knowing_run.path / "kb_split.json").read_text())["known"])
    examples = [
        qa(f"e{i}", f"What is the capital of {s}?", o, s, known=s in seen)
        for i, (s, o) in enumerate(knowing_run.facts)
    ]
    cfg = probe_cfg(num_samples=4)
    probes = build_probes(examples, cfg, data_cfg(statements=knowing_run.statements), 0)
    assert [len(p) for p in probes] == [2] * 8
    verdicts = slick_categories(probes, [[e.answer] for e in examples], ModelAnswerer(model, tokenizer, cfg, seed=0))
    known = [v for e, v in zip(examples, verdicts) if e.known]
    unseen = [v for e, v in zip(examples, verdicts) if not e.known]
    assert len(known) == len(unseen) == 4
    assert all(v.category in (HIGHLY_KNOWN, MAYBE_KNOWN) for v in known), known
    assert all(v.category in (WEAKLY_KNOWN, UNKNOWN) for v in unseen), unseen
    assert sum(v.category == HIGHLY_KNOWN for v in known) >= 3
    assert sum(v.p_correct_greedy for v in known) > sum(v.p_correct_greedy for v in unseen)
    # Seeded: the same model and seed give the same verdicts.
    again = slick_categories(probes, [[e.answer] for e in examples], ModelAnswerer(model, tokenizer, cfg, seed=0))
    assert again == verdicts


@pytest.mark.parametrize("family", ["lstm", "transformer"])
def test_the_probe_answers_greedily_as_the_plain_greedy_decoder(knowing_run, family: str) -> None:
    """The probe's greedy answer comes from the rows it shares with the samples; it must be
    the answer greedy decoding alone gives. The LSTM has read the facts, so its answers stop
    at the stop tokens at different steps; the Transformer is untrained."""
    checkpoint = knowing_run.path / "checkpoint"
    tokenizer = load_tokenizer(checkpoint)
    model = load_model(checkpoint)
    if family == "transformer":
        torch.manual_seed(0)
        cfg = TransformerConfig(hidden_dim=32, num_layers=2, num_heads=2, max_positions=64)
        model = build_model(OmegaConf.structured(cfg), tokenizer)
    examples = [qa(f"e{i}", f"What is the capital of {s}?", o, s) for i, (s, o) in enumerate(knowing_run.facts)]
    cfg = probe_cfg(num_samples=3, batch_size=5)
    prompts = [p.text for probe in build_probes(examples, cfg, data_cfg(statements=knowing_run.statements), 0) for p in probe]
    answers = ModelAnswerer(model, tokenizer, cfg, seed=0).answer(prompts)
    greedy = Decoder(model, tokenizer, DecodingConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size))
    start = tokenizer.bos_token or ""
    assert [a.greedy for a in answers] == [outputs[0] for outputs in greedy.generate([start + p for p in prompts])]
    assert [len(a.samples) for a in answers] == [3] * len(prompts)
    assert answers == ModelAnswerer(model, tokenizer, cfg, seed=0).answer(prompts)  # seeded


# --- bad settings ------------------------------------------------------------------------------


def test_bad_categories_are_rejected() -> None:
    message = r"Unknwon: not a SliCK category"
    with pytest.raises(UserError, match=message):
        check_clean_config(clean_cfg(unknown_categories=["Unknwon"]))
    with pytest.raises(UserError, match=message):
        check_finetune_mitigation(clean_cfg(unknown_categories=["Unknwon"]))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"num_samples": 0}, "num_samples=0 is out of range: it must be at least 1"),
        ({"temperature": 0.0}, "temperature=0.0 is out of range: it must be above 0"),
        ({"shots": -1}, "shots=-1 is out of range: it must be at least 0"),
        ({"exemplar_sets": 0}, "exemplar_sets=0 is out of range: it must be at least 1"),
    ],
)
def test_out_of_range_settings_are_rejected(settings: dict, message: str) -> None:
    from halluc_cli.config import check_settings

    with pytest.raises(UserError, match=message):
        check_settings(probe_cfg(**settings))


def test_choices_are_rejected_by_the_schema() -> None:
    from omegaconf.errors import ValidationError

    with pytest.raises(ValidationError, match="expected one of"):
        clean_cfg(unknown_action="maybe")
    with pytest.raises(ValidationError, match="expected one of"):
        probe_cfg(prompts="cloze")


def test_finetune_refuses_unknown_mitigations() -> None:
    with pytest.raises(UserError, match="unknown mitigation 'scrub'"):
        check_finetune_mitigation(OmegaConf.create({"name": "scrub"}))
    check_finetune_mitigation(OmegaConf.create({"name": "none"}))


def test_the_defaults_pass_the_checks() -> None:
    check_clean_config(clean_cfg())
    check_clean_config(replace(CleanConfig(), unknown_action="idk"))  # a plain dataclass works too
