"""Speed of post-hoc KB verification (`mitigation=kb_verify`) on 100,000 predictions.

The predictions are built from the bundled GeoNames KB and its question templates
(conf/kb/geonames.yaml): real facts, about 20% of the answers corrupted to another object of
the same relation, 10% abstentions; half the records carry `subject` and `relation` (as
`halluc generate` copies them from the QA data), half only their question, which the
verifier must match against the templates.

The reference, timed in the same run on the same records, is the floor of any verifier: a
plain dict lookup of the true (subject, relation) with an exact string comparison, no
normalization, no template matching. Each side is timed as the best of --repeats runs.

Usage:
    python scripts/bench_verify.py                  # 100,000 predictions, a few seconds
    python scripts/bench_verify.py --n 1000000 --repeats 1
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from halluc_cli.data.kb import Fact, KnowledgeBase, load_kb  # noqa: E402
from halluc_cli.scoring.verify import KBVerifier  # noqa: E402

KB_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "kb" / "geonames.yaml"
ABSTAIN = "I don't know"
BUDGET_S = 60.0  # the requirement: 100,000 predictions well under a minute


def synthetic_predictions(
    kb: KnowledgeBase, questions: dict[str, list[str]], n: int, seed: int
) -> list[dict[str, Any]]:
    """`n` prediction records about random KB facts (see the module docstring for the mix)."""
    rng = random.Random(seed)
    by_relation = {relation: facts for relation, facts in kb.by_relation().items() if questions.get(relation)}
    relations = list(by_relation)
    records = []
    for index in range(n):
        relation = rng.choice(relations)
        fact: Fact = rng.choice(by_relation[relation])
        draw = rng.random()
        abstained = draw < 0.1
        prediction = fact.object
        if abstained:
            prediction = ABSTAIN
        elif draw < 0.3:
            prediction = rng.choice(by_relation[relation]).object  # usually wrong
        record = {
            "id": f"q{index}",
            "question": rng.choice(questions[relation]).format(subject=fact.subject),
            "prediction": prediction,
            "answer": fact.object,
            "aliases": list(fact.aliases),
            "known": rng.random() < 0.5,
            "abstained": abstained,
            # kept out of the record for the free half; the reference reads it from here
            "_truth": (fact.subject, relation),
        }
        if index % 2 == 0:
            record["subject"], record["relation"] = fact.subject, relation
        records.append(record)
    return records


def reference_lookup(kb: KnowledgeBase) -> Callable[[list[dict[str, Any]]], int]:
    """The floor: exact-string dict lookup of each record's true fact; returns the number supported."""
    truth = {(fact.subject, fact.relation): fact.object for fact in kb.facts}

    def run(records: list[dict[str, Any]]) -> int:
        return sum(truth.get(record["_truth"]) == record["prediction"] for record in records)

    return run


def best_time(function: Callable[[], Any], repeats: int) -> float:
    """The fastest of `repeats` timed calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="predictions to verify")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    templates = OmegaConf.to_container(OmegaConf.load(KB_CONFIG).relations)
    kb = load_kb("geonames")
    verifier = KBVerifier(kb, templates, ABSTAIN)
    records = synthetic_predictions(kb, {r: t["questions"] for r, t in templates.items()}, args.n, args.seed)
    with_fields = [record for record in records if "relation" in record]
    free = [record for record in records if "relation" not in record]

    reference = reference_lookup(kb)
    reference_s = best_time(lambda: reference(records), args.repeats)
    rows = {"reference: dict lookup, exact strings": (len(records), reference_s)}
    for what, subset in (
        ("verify + flag, all records", records),
        ("  records with subject, relation", with_fields),
        ("  free questions (template match)", free),
    ):
        rows[what] = (len(subset), best_time(lambda: verifier.apply_policy(subset, "flag"), args.repeats))
    statuses = Counter(record["verified"] for record in verifier.apply_policy(records, "flag"))

    table = Table(title=f"KB verification of {len(records):,} predictions (best of {args.repeats})")
    for header in ("what", "records", "seconds", "predictions/s", "x reference"):
        table.add_column(header, justify="left" if header == "what" else "right")
    for what, (count, seconds) in rows.items():
        per_record_ratio = (seconds / count) / (reference_s / len(records))
        table.add_row(what, f"{count:,}", f"{seconds:.3f}", f"{count / seconds:,.0f}", f"{per_record_ratio:.1f}")
    console = Console()
    console.print(table)
    total = rows["verify + flag, all records"][1]
    console.print(f"verdicts: {dict(statuses)}")
    console.print(
        f"{len(records):,} predictions verified in {total:.2f} s: {total / BUDGET_S:.1%} of the one-minute budget "
        f"({total / reference_s:.0f}x the bare dict lookup)"
    )


if __name__ == "__main__":
    main()
