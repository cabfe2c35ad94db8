"""How many of the facts it read can a pretrained model complete from a statement prompt?

For each pretraining run dir given (data=kbqa), every known fact of every relation is asked
as the cloze of one statement template ("The capital of France is"), greedy, and judged as
the SliCK probe judges (the object or one of its aliases, up to the template's stop). This is
storage as the pretraining format shows it, apart from what QA fine-tuning can extract:

    python scripts/statement_recall.py outputs/augmentation/pretrain/paraphrases_*
    python scripts/statement_recall.py outputs/kbqa_unknown_sweep/pretrain --template 2

prints, per run and relation, completed / asked facts (`--facts unknown`: the held-out side).
`--frame` asks in a frame of your own instead, for the relations it names: how much of the
recall survives words the pretraining never put before the subject (README Results 9, LSTM):

    python scripts/statement_recall.py outputs/lstm_baseline/pretrain --relation capital \
        --frame "What is the capital of {subject} is {object}."
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch
import transformers
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from halluc_cli.config import ProbeConfig
from halluc_cli.data.kb import load_kb
from halluc_cli.data.kbqa import load_split
from halluc_cli.data.qa import QAExample
from halluc_cli.data.tokenizer import load_tokenizer
from halluc_cli.models import load_model
from halluc_cli.probe import ModelAnswerer, cloze_templates, complete_statements


def recall(
    run_dir: Path, template: int, side: str, frame: str | None = None, relations: list[str] | None = None
) -> dict[str, tuple[int, int]]:
    """relation -> (facts completed, facts asked) for one pretraining run; `side`: the known
    facts (read in pretraining) or the unknown ones (a check: never stated, rarely guessed);
    `frame`: a statement of your own ({subject} ... {object}) asked instead of the template."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    split = load_split(run_dir)
    subjects = set(split[side])
    if relations and not set(relations) <= set(split["relations"]):
        raise SystemExit(f"{run_dir}: --relation {sorted(set(relations) - set(split['relations']))} not among its "
                         f"relations {split['relations']}")
    asked_relations = [r for r in split["relations"] if not relations or r in relations]
    facts = [f for f in load_kb(cfg.data.kb.path).facts if f.subject in subjects and f.relation in asked_relations]
    templates = cloze_templates(
        {r: [frame or cfg.data.kb.relations[r].statements[template]] for r in asked_relations})
    model_dir = run_dir / "checkpoint"
    answerer = ModelAnswerer(load_model(model_dir), load_tokenizer(model_dir), ProbeConfig(), torch.device("cpu"))
    examples = [QAExample("", "", f.object, list(f.aliases), f.subject, f.relation, True, "") for f in facts]
    asked, right = Counter(), Counter()
    for example, completion in zip(examples, complete_statements(answerer, examples, templates)):
        asked[example.relation] += 1
        right[example.relation] += completion.right
    return {relation: (right[relation], asked[relation]) for relation in sorted(asked)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="pretraining run dirs (data=kbqa)")
    parser.add_argument("--template", type=int, default=0, help="which statement template of each relation to ask")
    parser.add_argument("--facts", choices=("known", "unknown"), default="known", help="which side of the split")
    parser.add_argument("--frame", help="a statement of your own to ask in: {subject} ... {object}")
    parser.add_argument("--relation", action="append", help="ask these relations only (repeatable)")
    args = parser.parse_args()
    if args.frame and not args.relation:
        parser.error("--frame states one relation's facts: name it with --relation")
    transformers.utils.logging.disable_progress_bar()
    asked = repr(args.frame) if args.frame else f"statement template {args.template}"
    table = Table(title=f"{args.facts} facts completed from {asked}")
    table.add_column("run", overflow="fold")
    results = {run: recall(run, args.template, args.facts, args.frame, args.relation) for run in args.runs}
    relations = sorted({relation for result in results.values() for relation in result})
    for relation in relations:
        table.add_column(relation, justify="right")
    for run, result in results.items():
        table.add_row(str(run), *(f"{result[r][0]}/{result[r][1]}" if r in result else "-" for r in relations))
    Console().print(table)


if __name__ == "__main__":
    main()
