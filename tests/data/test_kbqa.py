"""Knowledge-controlled data: no leakage, exact unknown share, R-Tuning relabelling."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from halluc_cli.config import CONF_DIR, KBQAConfig, register_configs
from halluc_cli.data.kb import load_kb
from halluc_cli.data.kbqa import build_qa_sets, load_facts, render_corpus, split_subjects
from halluc_cli.data.normalize import normalize_text
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


def _renderings(cfg: KBQAConfig, facts) -> set[str]:
    """Every sentence any statement template makes of `facts`."""
    return {
        template.format(subject=fact.subject, object=fact.object)
        for fact in facts
        for template in cfg.kb.relations[fact.relation].statements
    }


@pytest.mark.parametrize("paraphrases", [1, 4])
def test_no_unknown_fact_in_the_pretraining_corpus(paraphrases: int) -> None:
    cfg = _cfg(f"data.paraphrases={paraphrases}")
    splits, _, split = render_corpus(cfg, [])
    unknown = set(split["unknown"])
    kb = load_facts(cfg)
    known_facts = [f for f in kb.facts if f.subject not in unknown]
    unknown_facts = [f for f in kb.facts if f.subject in unknown]
    lines = splits["train"]
    assert not set(lines) & _renderings(cfg, unknown_facts)
    assert set(lines) <= _renderings(cfg, known_facts)
    # Every known fact is stated in `paraphrases` different templates.
    assert len(lines) == paraphrases * len(known_facts)
    for fact in known_facts:
        assert len(set(lines) & _renderings(cfg, [fact])) == paraphrases, fact


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


def test_tokenizer_lines_cover_unknown_answers_without_pairing_them() -> None:
    cfg = _cfg()
    splits, tokenizer_lines, split = render_corpus(cfg, [])
    assert "Paris" in tokenizer_lines and "France" in tokenizer_lines
    assert not any("Paris" in line and "France" in line for line in tokenizer_lines)
    assert OmegaConf.to_container(cfg.kb.relations)["capital"]["questions"]


def test_questions_only_about_relations_the_pretraining_covered() -> None:
    pretrain_cfg = _cfg("data.relations=[capital]")
    split = split_subjects(load_facts(pretrain_cfg), pretrain_cfg)
    assert split["relations"] == ["capital"]
    sets = build_qa_sets(_cfg("data.finetune_size=20", "data.valid_size=6"), split, seed=0)
    assert {e.relation for name in sets for e in sets[name]} == {"capital"}
    with pytest.raises(UserError, match="share no relation"):
        build_qa_sets(_cfg("data.relations=[currency]"), split, seed=0)
