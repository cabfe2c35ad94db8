"""QA sets drawn from SliCK categories (data.known_from=probe)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from halluc_cli.config import KBQAConfig
from halluc_cli.data import categories
from halluc_cli.data.categories import category_sets, guessable_relations
from halluc_cli.data.qa import QAExample
from halluc_cli.errors import UserError

CATEGORIES = ["HighlyKnown"] * 20 + ["MaybeKnown"] * 10 + ["WeaklyKnown"] * 10 + ["Unknown"] * 40


def _pool() -> list[QAExample]:
    return [QAExample(f"pool-{i}", f"q{i}?", f"a{i}", [], f"s{i}", "capital", None, "pool") for i in range(80)]


def _cfg(**settings) -> KBQAConfig:
    return OmegaConf.structured(KBQAConfig(**{"finetune_size": 20, "valid_size": 10, "test_size": 5, **settings}))


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_the_unknown_share_is_exact_and_the_sets_are_disjoint(fraction: float) -> None:
    sets = category_sets(_pool(), CATEGORIES, _cfg(unknown_fraction=fraction), seed=0)
    assert sum(e.category == "Unknown" for e in sets["finetune"]) == round(20 * fraction)
    assert sum(e.category == "Unknown" for e in sets["valid"]) == round(10 * fraction)
    assert all(e.known == (e.category != "Unknown") for examples in sets.values() for e in examples)
    questions = [e.question for examples in sets.values() for e in examples]
    assert len(questions) == len(set(questions))
    assert {name for name in sets if name.startswith("test")} <= {categories.test_set_name(c) for c in set(CATEGORIES)}
    assert all({e.split for e in sets[name]} == {name} for name in sets)
    assert all(len(sets[name]) <= 5 for name in sets if name.startswith("test"))


def test_a_single_category_set() -> None:
    sets = category_sets(_pool(), CATEGORIES, _cfg(finetune_category="MaybeKnown", finetune_size=6, valid_size=2), 0)
    assert {e.category for e in sets["finetune"] + sets["valid"]} == {"MaybeKnown"}
    assert len(sets["test_maybe_known"]) == 2  # what the sets left of the 10


def test_too_few_facts_of_a_category_is_a_clear_error() -> None:
    with pytest.raises(UserError, match=r"finetune set needs 20 Unknown facts but only 5 are left"):
        category_sets(_pool()[:45], CATEGORIES[:45], _cfg(unknown_fraction=1.0), seed=0)


def test_unknown_answers_become_the_abstain_phrase_with_idk() -> None:
    sets = category_sets(_pool(), CATEGORIES, _cfg(unknown_label="idk"), seed=0)
    assert all(e.answer == "I don't know" for e in sets["finetune"] if not e.known)
    assert all(e.answer != "I don't know" for e in sets["test_unknown"])


def test_a_relation_whose_common_answer_is_often_right_is_guessable() -> None:
    continents = [QAExample(str(i), "q", "Africa" if i < 3 else f"C{i}", [], f"s{i}", "continent", None, "pool")
                  for i in range(10)]
    capitals = [QAExample(str(i), "q", f"City{i}", [], f"s{i}", "capital", None, "pool") for i in range(10)]
    assert guessable_relations(continents + capitals) == {"continent": ("africa", 0.3)}
