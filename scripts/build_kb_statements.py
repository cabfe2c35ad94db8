"""Build halluc_cli/data/labelled/kb_statements.csv, labelled text from the bundled KB.

Each fact of the relations data=kbqa fine-tunes on (capital, continent, currency) gives two
rows: its first statement template filled with the true object, labelled true, and with the
object of another fact of the same relation (drawn by seed, never a true one for that
subject), labelled false. Real facts for `data=kb_statements`, the classification-as-generation
demo: a model pretrained with data=kbqa has read the true statements of the known subjects.
Deterministic: the same KB and templates give the same bytes.

Usage: python scripts/build_kb_statements.py [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, uninstalled
from halluc_cli.data.kb import KnowledgeBase, load_kb  # noqa: E402
from halluc_cli.io import atomic_write_text  # noqa: E402

OUT = ROOT / "halluc_cli" / "data" / "labelled" / "kb_statements.csv"
RELATIONS = ("capital", "continent", "currency")
SEED = 0


def build(kb: KnowledgeBase, templates: dict[str, str]) -> str:
    """The CSV text: a true and a false statement for each fact of RELATIONS, in KB order."""
    rng = random.Random(SEED)
    objects = {relation: sorted({f.object for f in kb.facts if f.relation == relation}) for relation in RELATIONS}
    # every true form for a subject: a country with two currencies must not get the other as false
    true_forms: dict[tuple[str, str], set[str]] = defaultdict(set)
    for fact in kb.facts:
        true_forms[fact.subject, fact.relation].update(fact.surface_forms)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text", "label"])
    for fact in kb.facts:
        if fact.relation not in RELATIONS:
            continue
        wrong = rng.choice([o for o in objects[fact.relation] if o not in true_forms[fact.subject, fact.relation]])
        template = templates[fact.relation]
        writer.writerow([template.format(subject=fact.subject, object=fact.object), "true"])
        writer.writerow([template.format(subject=fact.subject, object=wrong), "false"])
    return out.getvalue()


def statement_templates() -> dict[str, str]:
    """The first statement template of each relation in conf/kb/geonames.yaml."""
    relations = OmegaConf.load(ROOT / "conf" / "kb" / "geonames.yaml").relations
    return {relation: relations[relation].statements[0] for relation in RELATIONS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    text = build(load_kb("geonames"), statement_templates())
    atomic_write_text(args.out, text)
    print(f"wrote {text.count(chr(10)) - 1} statements to {args.out}")


if __name__ == "__main__":
    main()
