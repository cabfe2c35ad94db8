"""scripts/statement_recall.py: every fact of the asked side is asked once, per relation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cli_helpers import import_script
from halluc_cli.data.kb import load_kb
from halluc_cli.data.kbqa import load_split


def _facts_per_relation(run_dir: Path, side: str) -> Counter:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    split = load_split(run_dir)
    subjects = set(split[side])
    return Counter(f.relation for f in load_kb(cfg.data.kb.path).facts if f.subject in subjects and f.relation in split["relations"])


def test_each_fact_of_the_side_is_asked_once(transformer_run: Path) -> None:
    script = import_script("statement_recall")
    for side in ("known", "unknown"):
        result = script.recall(transformer_run, template=0, side=side)
        assert {relation: asked for relation, (_, asked) in result.items()} == _facts_per_relation(transformer_run, side)
        assert all(0 <= right <= asked for right, asked in result.values())


def test_a_frame_of_your_own_for_the_relations_named(transformer_run: Path, monkeypatch) -> None:
    script = import_script("statement_recall")
    cfg = OmegaConf.load(transformer_run / "config.yaml")
    relation = sorted(load_split(transformer_run)["relations"])[0]
    first = cfg.data.kb.relations[relation].statements[0]
    by_template = script.recall(transformer_run, template=0, side="known")
    assert script.recall(transformer_run, 0, "known", frame=first, relations=[relation]) == {relation: by_template[relation]}
    # the frame is what the facts are asked in
    asked_in = []
    complete = script.complete_statements
    monkeypatch.setattr(script, "complete_statements",
                        lambda answerer, examples, templates: asked_in.append(templates) or complete(answerer, examples, templates))
    framed = script.recall(transformer_run, 0, "known", frame="Zebra zebra " + first, relations=[relation])
    assert framed[relation][1] == by_template[relation][1]
    assert list(asked_in[0]) == [relation] and asked_in[0][relation].startswith("Zebra zebra ")
    with pytest.raises(SystemExit, match="no_such_relation"):
        script.recall(transformer_run, 0, "known", frame=first, relations=["no_such_relation"])
