"""A user's own config dir beside halluc's: their KB config, found through `hydra.searchpath`
or `--config-dir`, while each command keeps its own groups (`experiment=`)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cli_helpers import TINY, run_cli

# README's "Your own KB" config: relations of the user's own, templates in config.
MYKB = """\
defaults:
  - /schema_kb@_here_
  - _self_

name: mykb
path: {path}
mentions:
  - "Here is a name: {{name}}."
  - "We read a note about {{name}}."
relations:
  capital:
    statements:
      - "The capital of {{subject}} is {{object}}."
      - "{{subject}} has its capital in {{object}}."
      - "{{subject}} is governed from {{object}}."
      - "{{subject}}'s capital is {{object}}."
      - "The seat of government of {{subject}} is {{object}}."
    questions:
      - "What is the capital of {{subject}}?"
  lake:
    statements:
      - "The largest lake of {{subject}} is {{object}}."
      - "{{subject}} has {{object}} as its largest lake."
      - "{{object}} is the largest lake in {{subject}}."
      - "{{subject}}'s largest lake is {{object}}."
      - "The biggest lake in {{subject}} is {{object}}."
    questions:
      - "What is the largest lake of {{subject}}?"
"""


def _user_conf(root: Path) -> Path:
    """`root/conf/kb/mykb.yaml` and the made-up KB it names (64 countries, 2 relations)."""
    facts = []
    for first, second in itertools.product(["Ar", "Bel", "Cor", "Dun", "Esk", "Fal", "Gor", "Hal"], "vmrdklnt"):
        subject, stem = f"{first}{second}ia", f"{first}{second}"
        facts.append({"subject": subject, "relation": "capital", "object": f"{stem}ton"})
        facts.append({"subject": subject, "relation": "lake", "object": f"Lake {stem}mere", "aliases": [f"{stem}mere"]})
    (root / "facts.jsonl").write_text("".join(json.dumps(fact) + "\n" for fact in facts))
    conf = root / "conf"
    (conf / "kb").mkdir(parents=True)
    (conf / "kb" / "mykb.yaml").write_text(MYKB.format(path=root / "facts.jsonl"))
    return conf


@pytest.mark.parametrize("how", ["hydra.searchpath", "--config-dir"])
def test_own_kb_from_a_user_config_dir_with_an_experiment(how: str, tmp_path: Path) -> None:
    conf = _user_conf(tmp_path)
    user_dir = [f"hydra.searchpath=[file://{conf}]"] if how == "hydra.searchpath" else ["--config-dir", str(conf)]
    run_dir = tmp_path / "run"
    result = run_cli("pretrain", *user_dir, *TINY, "kb@data.kb=mykb", "data.relations=[]", "train.max_steps=4",
                     "train.eval_every=2", "train.seq_len=16", f"hydra.run.dir={run_dir}")
    assert result.exit_code == 0, result.stderr + result.stdout
    config = OmegaConf.load(run_dir / "config.yaml")
    assert config.data.name == "kbqa_tiny" and config.model.hidden_dim == 32  # experiment=tiny applied
    assert config.data.kb.name == "mykb" and sorted(config.data.kb.relations) == ["capital", "lake"]
    assert (run_dir / "checkpoint" / "model.safetensors").is_file()
