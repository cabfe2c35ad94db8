"""How well the SliCK probe finds what a model read: its categories against the ground truth.

On a model halluc pretrained with data=kbqa, the run's kb_split.json says which subjects' facts
the corpus stated. Fine-tune it as a foreign model (data.known_from=probe: the probe never reads
the split) and compare: a fact is truly unknown when its subject was not in the corpus, and the
probe calls it Unknown when no greedy or sampled answer was right. Per relation: precision and
recall of "Unknown" with 95% Wilson intervals (a binomial proportion each), the same with
WeaklyKnown counted as unknown too (on a relation a guess gets right, a sampled lucky guess is
what makes an unread fact WeaklyKnown), and the table of category by truth.

    python scripts/probe_agreement.py --split outputs/kbqa_unknown_sweep/pretrain/kb_split.json \
        outputs/own_model/finetune/unknown_0.5/seed_1/categories.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from halluc_cli.config import SLICK_CATEGORIES as CATEGORIES

Z = 1.959964  # the normal 97.5% quantile


def wilson(successes: int, trials: int) -> tuple[float, float, float] | None:
    """The share and its 95% Wilson score interval; None for no trials."""
    if trials == 0:
        return None
    share = successes / trials
    centre = (share + Z * Z / (2 * trials)) / (1 + Z * Z / trials)
    half = Z * math.sqrt(share * (1 - share) / trials + Z * Z / (4 * trials * trials)) / (1 + Z * Z / trials)
    return share, max(0.0, centre - half), min(1.0, centre + half)


def agreement(
    records: list[dict], unknown_subjects: set[str], called_unknown: tuple[str, ...] = ("Unknown",)
) -> dict[str, dict]:
    """relation (and "all") -> the counts of probe category by truth, and precision and
    recall of "unknown" (the categories in `called_unknown`)."""
    by_relation: dict[str, list[dict]] = {"all": records}
    for record in records:
        by_relation.setdefault(record["relation"], []).append(record)
    result = {}
    for relation, group in sorted(by_relation.items(), key=lambda item: (item[0] == "all", item[0])):
        truly = [r["subject"] in unknown_subjects for r in group]
        called = [r["category"] in called_unknown for r in group]
        both = sum(t and c for t, c in zip(truly, called))
        table = Counter((r["category"], t) for r, t in zip(group, truly))
        result[relation] = {
            "facts": len(group),
            "truly_unknown": sum(truly),
            "called_unknown": sum(called),
            "precision": wilson(both, sum(called)),
            "recall": wilson(both, sum(truly)),
            "categories": {c: {"known": table[(c, False)], "unknown": table[(c, True)]} for c in CATEGORIES},
        }
    return result


def _cell(stat: tuple[float, float, float] | None) -> str:
    return "-" if stat is None else f"{stat[0]:.2f} [{stat[1]:.2f}, {stat[2]:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("categories", type=Path, help="a finetune run's categories.jsonl (data.known_from=probe)")
    parser.add_argument("--split", type=Path, required=True, help="the pretraining run's kb_split.json")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    records = [json.loads(line) for line in args.categories.read_text().splitlines() if line.strip()]
    split = json.loads(args.split.read_text())
    # Only the relations the corpus covered: another relation's facts were never stated, known subject or not.
    records = [record for record in records if record["relation"] in split["relations"]]
    result = agreement(records, set(split["unknown"]))
    weakly = agreement(records, set(split["unknown"]), ("Unknown", "WeaklyKnown"))
    table = Table(title=f"SliCK probe vs the pretraining split: {args.categories}")
    for column in ("relation", "facts", "truly unknown", "probe: Unknown", "precision of Unknown [95%]",
                   "recall of Unknown [95%]", "Unknown or Weakly:\nprecision", "recall",
                   *(f"{c}\nknown / unknown" for c in CATEGORIES)):
        table.add_column(column, justify="right")
    for relation, row in result.items():
        table.add_row(relation, str(row["facts"]), str(row["truly_unknown"]), str(row["called_unknown"]),
                      _cell(row["precision"]), _cell(row["recall"]),
                      _cell(weakly[relation]["precision"]), _cell(weakly[relation]["recall"]),
                      *(f"{row['categories'][c]['known']} / {row['categories'][c]['unknown']}" for c in CATEGORIES))
    Console(width=240).print(table)
    if args.json:
        args.json.write_text(json.dumps({"unknown": result, "unknown_or_weakly_known": weakly}, indent=2))


if __name__ == "__main__":
    main()
