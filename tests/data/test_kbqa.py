"""Knowledge-controlled data: no leakage, exact unknown share, R-Tuning relabelling."""

from __future__ import annotations

import functools

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from halluc_cli.config import CONF_DIR, KBQAConfig, check_settings, register_configs
from halluc_cli.data.kb import load_kb
from halluc_cli.data.kbqa import build_qa_sets, load_facts, render_corpus, split_subjects
from halluc_cli.data.qa import format_prompt
from halluc_cli.data.normalize import normalize_text
from halluc_cli.data.tokenizer import train_tokenizer
from halluc_cli.errors import UserError


def _cfg(*overrides: str) -> KBQAConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="pretrain", overrides=["data=kbqa", *overrides]).data


def test_split_is_deterministic_and_disjoint() -> None:
    cfg = _cfg()
    kb = load_facts(cfg)
    first, again = split_subjects(kb, cfg), split_subjects(kb, cfg)
    assert first == again
    assert not set(first["known"]) & set(first["unknown"])
    assert len(first["known"]) == round(len(kb.subjects()) * 0.5)
    other = split_subjects(kb, _cfg("data.split_seed=1"))
    assert other["known"] != first["known"]


def _renderings(cfg: KBQAConfig, facts, templates: slice = slice(None)) -> set[str]:
    """Every sentence the statement templates (those `templates` picks) make of `facts`."""
    return {
        template.format(subject=fact.subject, object=fact.object)
        for fact in facts
        for template in list(cfg.kb.relations[fact.relation].statements)[templates]
    }


@pytest.mark.parametrize("paraphrases", [1, 4])
def test_no_unknown_fact_in_the_pretraining_corpus(paraphrases: int) -> None:
    cfg = _cfg(f"data.paraphrases={paraphrases}")
    splits, _, split = render_corpus(cfg, [])
    unknown = set(split["unknown"])
    kb = load_facts(cfg)
    known_facts = [f for f in kb.facts if f.subject not in unknown]
    unknown_facts = [f for f in kb.facts if f.subject in unknown]
    lines = set(splits["train"])
    assert not lines & _renderings(cfg, unknown_facts)
    statements = lines & _renderings(cfg, known_facts)
    # Every known fact is stated in `paraphrases` different templates, never in the held-out last one.
    assert len(statements) == paraphrases * len(known_facts)
    assert statements <= _renderings(cfg, known_facts, slice(None, -1))
    for fact in known_facts:
        assert len(statements & _renderings(cfg, [fact])) == paraphrases, fact
    # The rest of the training text names entities without stating a fact.
    mention_starts = tuple(template.partition("{name}")[0] for template in cfg.kb.mentions)
    assert all(line.startswith(mention_starts) for line in lines - statements)


def test_validation_text_is_the_known_facts_in_held_out_phrasings() -> None:
    cfg = _cfg()
    splits, _, split = render_corpus(cfg, [])
    known_facts = [f for f in load_facts(cfg).facts if f.subject in set(split["known"])]
    held_out = _renderings(cfg, known_facts, slice(-1, None))
    assert set(splits["valid"]) | set(splits["test"]) == held_out
    assert not set(splits["valid"]) & set(splits["test"])
    assert not held_out & set(splits["train"])
    same = _cfg("data.heldout_templates=0", "data.paraphrases=8")  # no phrasing held out: the training text
    splits, _, _ = render_corpus(same, [])
    assert splits["valid"] == splits["test"] == splits["train"]


def test_too_few_templates_for_paraphrases_and_held_out_ones() -> None:
    with pytest.raises(UserError, match="data.paraphrases=9 plus data.heldout_templates=1 need 10 statement templates"):
        render_corpus(_cfg("data.paraphrases=9"), [])


@pytest.mark.parametrize("unknown_names", ["mentioned", "unseen"])
def test_unknown_subjects_are_named_without_their_facts_or_not_at_all(unknown_names: str) -> None:
    cfg = _cfg(f"data.unknown_names={unknown_names}")
    splits, _, split = render_corpus(cfg, [])
    lines = set(splits["train"])
    kb = load_facts(cfg)
    known_names = {name for f in kb.facts if f.subject in set(split["known"]) for name in (f.subject, f.object)}
    for subject in split["unknown"]:
        mentions = lines & {t.format(name=subject) for t in cfg.kb.mentions}
        assert len(mentions) == (cfg.mentions if unknown_names == "mentioned" else 0), subject
        if unknown_names == "unseen" and not any(subject in name for name in known_names):
            assert not any(subject in line for line in lines), subject  # a name the model never read
    # The known side of the corpus is the same either way: only the unknown names' mentions differ.
    other = "unseen" if unknown_names == "mentioned" else "mentioned"
    other_lines = set(render_corpus(_cfg(f"data.unknown_names={other}"), [])[0]["train"])
    statements = _renderings(cfg, kb.facts)
    known_mentions = {t.format(name=name) for name in known_names for t in cfg.kb.mentions}
    assert lines & statements == other_lines & statements
    assert lines & known_mentions == other_lines & known_mentions


def test_mentioned_needs_mentions() -> None:
    with pytest.raises(UserError, match="unknown_names=mentioned needs data.mentions >= 1"):
        render_corpus(_cfg("data.mentions=0"), [])
    with pytest.raises(UserError, match="data.mentions=9 but kb=geonames has 4 mention templates"):
        render_corpus(_cfg("data.mentions=9"), [])
    with pytest.raises(UserError, match=r"mentions=-1 is out of range: it must be at least 0"):
        check_settings(_cfg("data.unknown_names=unseen", "data.mentions=-1"))
    with pytest.raises(UserError, match=r"heldout_templates=-1 is out of range: it must be at least 0"):
        check_settings(_cfg("data.heldout_templates=-1"))
    with pytest.raises(Exception, match="unknown_names"):  # not an UnknownNames value: refused at composition
        _cfg("data.unknown_names=forgotten")


def test_general_text_is_mixed_in_at_the_ratio() -> None:
    cfg = _cfg("data.general_ratio=0.25")
    splits, _, _ = render_corpus(cfg, ["general line one", "general line two"])
    general = sum(line.startswith("general line") for line in splits["train"])
    assert general / len(splits["train"]) == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_unknown_fraction_is_exact(fraction: float) -> None:
    cfg = _cfg(f"data.unknown_fraction={fraction}", "data.finetune_size=40", "data.valid_size=12")
    split = split_subjects(load_facts(cfg), cfg)
    sets = build_qa_sets(cfg, split, seed=0)
    assert len(sets["finetune"]) == 40
    assert sum(not e.known for e in sets["finetune"]) == round(40 * fraction)
    assert sum(not e.known for e in sets["valid"]) == round(12 * fraction)
    assert all(e.known for e in sets["test_known"]) and not any(e.known for e in sets["test_unknown"])
    facts = [(e.subject, e.relation) for name in sets for e in sets[name]]
    assert len(facts) == len(set(facts))  # no fact in two sets
    known = set(split["known"])
    assert all((e.subject in known) == e.known for name in sets for e in sets[name])


def test_idk_relabels_unknown_finetune_answers_only() -> None:
    cfg = _cfg("data.unknown_label=idk")
    sets = build_qa_sets(cfg, split_subjects(load_facts(cfg), cfg), seed=0)
    for example in sets["finetune"]:
        assert (example.answer == "I don't know") == (not example.known)
    assert all(e.answer != "I don't know" for e in sets["test_unknown"])


def test_answers_are_the_kb_objects() -> None:
    cfg = _cfg()
    kb = load_kb()
    sets = build_qa_sets(cfg, split_subjects(load_facts(cfg), cfg), seed=0)
    for example in sets["test_known"][:30]:
        assert normalize_text(example.answer) in kb.objects(example.subject, example.relation)
        assert example.subject in example.question


def test_too_many_questions_is_a_clear_error() -> None:
    cfg = _cfg("data.finetune_size=5000")
    with pytest.raises(UserError, match="needs .* facts but only"):
        build_qa_sets(cfg, split_subjects(load_facts(cfg), cfg), seed=0)


def test_relation_without_templates_is_a_clear_error() -> None:
    cfg = _cfg("data.relations=[tld]")
    with pytest.raises(UserError, match="has no templates"):
        load_facts(cfg)


def test_required_lines_hold_every_name_and_question() -> None:
    cfg = _cfg()
    _, required, _ = render_corpus(cfg, [])
    assert {"Afghanistan", "Kabul", "Q: What is the capital of Afghanistan? A:", "I don't know"} <= set(required)
    assert not any("{" in line for line in required)  # templates filled in


@functools.cache
def _every_relation(unknown_names: str) -> tuple[KBQAConfig, dict, list[str], list[str]]:
    """The corpus over every relation of the KB and its QA sets' texts, as pretraining and
    fine-tuning render them (the same for every model family and tokenizer kind)."""
    cfg = _cfg("data.relations=[]", f"data.unknown_names={unknown_names}", "data.paraphrases=1")
    splits, required, split = render_corpus(cfg, [])
    sets = build_qa_sets(cfg, split, seed=0)
    assert {e.relation for e in sets["test_unknown"]} == set(split["relations"])  # all five relations asked
    texts = [line for lines in splits.values() for line in lines]
    texts += [text for examples in sets.values() for e in examples for text in (e.question, e.answer, *e.aliases)]
    texts += [format_prompt(cfg, e.question) for examples in sets.values() for e in examples]
    return cfg, splits, required, texts


@pytest.mark.parametrize("family", ["lstm", "transformer"])
@pytest.mark.parametrize("tokenizer", ["kind=word", "kind=word split_punctuation=false", "kind=bpe"])
@pytest.mark.parametrize("unknown_names", ["mentioned", "unseen"])
def test_no_question_answer_or_statement_reads_as_unk(family: str, tokenizer: str, unknown_names: str) -> None:
    """Every subject is representable: an unknown fact must be learnable in fine-tuning. The
    tokenizer of each family and kind, learned as pretraining learns it (a word vocabulary at
    min_frequency 2, which once left 98 of 125 unknown subjects `<unk>`)."""
    _, splits, required, texts = _every_relation(unknown_names)
    register_configs()
    overrides = [f"model.tokenizer.{setting}" for setting in tokenizer.split()]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        model = compose(config_name="pretrain", overrides=[f"model={family}", "model.tokenizer.min_frequency=2", *overrides]).model
    learned = train_tokenizer(splits["train"], model.tokenizer, required)
    ids = learned(texts, add_special_tokens=False)["input_ids"]
    assert not [text for text, row in zip(texts, ids) if learned.unk_token_id in row]


def test_questions_only_about_relations_the_pretraining_covered() -> None:
    pretrain_cfg = _cfg("data.relations=[capital]")
    split = split_subjects(load_facts(pretrain_cfg), pretrain_cfg)
    assert split["relations"] == ["capital"]
    sets = build_qa_sets(_cfg("data.finetune_size=20", "data.valid_size=6"), split, seed=0)
    assert {e.relation for name in sets for e in sets[name]} == {"capital"}
    with pytest.raises(UserError, match="share no relation"):
        build_qa_sets(_cfg("data.relations=[currency]"), split, seed=0)
