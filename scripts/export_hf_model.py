"""Save a halluc model as a plain Hugging Face model dir, as any `transformers` tool would:
the "foreign" model of the README's CPU example of the central experiment on your own model.

    python scripts/export_hf_model.py outputs/kbqa_unknown_sweep/pretrain/checkpoint outputs/own_model/model
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer


def export(source: Path, target: Path) -> None:
    """Load with `transformers` alone and `save_pretrained` the model and its tokenizer."""
    AutoModelForCausalLM.from_pretrained(source).save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a halluc Transformer's model dir (a run's checkpoint/)")
    parser.add_argument("target", type=Path, help="the dir to write")
    args = parser.parse_args()
    export(args.source, args.target)
    print(f"saved {args.target}")


if __name__ == "__main__":
    main()
