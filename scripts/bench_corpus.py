"""Memory and speed of preparing a pretraining corpus (`halluc pretrain`'s token files).

Corpora of the chosen sizes are made by repeating WikiText-2's training text
(/work/shared/data/wikitext-2, else random words) into a temporary dir, never kept. One word
tokenizer, learned once on the source text, serves both sides:

- halluc: `load_text` (the files indexed, valid/test held out) then `tokenize_corpus` (forked
  workers writing shards, copied into one `.npy` per split);
- reference: nanoGPT's data/openwebtext/prepare.py on the same text: the `datasets` "text"
  loader, a per-example `map` with `num_proc`, then the ids written into a `np.memmap` in
  1024 contiguous shards (its train/val split left out).

Each preparation runs in a child process of its own, which reports its peak resident memory
(the largest of its own, `VmHWM`, and its workers', `getrusage(RUSAGE_CHILDREN)`; not its
own `getrusage`, which keeps the high-water mark of the process it was forked from) and its
time without the imports. The two outputs are compared id by id.

Usage:
    python scripts/bench_corpus.py                       # 2M, 20M and 200M tokens
    python scripts/bench_corpus.py --sizes 2M,20M        # quicker
    python scripts/bench_corpus.py --sizes 2M,20M,100M --reference-max 20M   # the reference is slow
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from halluc_cli.config import CorpusConfig, TokenizerConfig  # noqa: E402
from halluc_cli.data.corpus import load_text  # noqa: E402
from halluc_cli.data.tokenizer import EOS, load_tokenizer, train_tokenizer  # noqa: E402
from halluc_cli.data.tokens import default_workers, load_token_arrays, tokenize_corpus  # noqa: E402

WIKITEXT = Path("/work/shared/data/wikitext-2/train.txt")
SIDES = ("halluc", "reference")


def source_text(seed: int = 0) -> str:
    """WikiText-2's training text, or 2M tokens of random words where it is absent."""
    if WIKITEXT.is_file():
        return WIKITEXT.read_text(encoding="utf-8")
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(30_000)]
    lines = (" ".join(rng.choice(words, size=rng.integers(0, 120))) for _ in range(40_000))
    return "\n".join(lines) + "\n"


def write_corpus(text: str, tokens_per_copy: int, tokens: int, path: Path) -> None:
    """`text` repeated until it holds at least `tokens` tokens."""
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(max(1, -(-tokens // tokens_per_copy))):
            handle.write(text)


def prepare_halluc(text_file: Path, tokenizer_dir: Path, out: Path, workers: int) -> int:
    """halluc's preparation; returns the tokens written."""
    tokenizer = load_tokenizer(tokenizer_dir)
    splits = load_text(CorpusConfig(train=[str(text_file)]))
    tokenize_corpus(splits, tokenizer, out, workers, 100_000)
    return sum(len(lines) for lines in load_token_arrays(out).values())


def prepare_reference(text_file: Path, tokenizer_dir: Path, out: Path, workers: int) -> int:
    """nanoGPT's data/openwebtext/prepare.py, with our tokenizer for tiktoken's."""
    import datasets
    from tokenizers import Tokenizer

    datasets.disable_progress_bars()
    enc = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    eot = enc.token_to_id(EOS)

    def process(example):
        ids = enc.encode(example["text"], add_special_tokens=False).ids  # encode_ordinary
        ids.append(eot)
        return {"ids": ids, "len": len(ids)}

    dataset = datasets.load_dataset("text", data_files={"train": [str(text_file)]}, cache_dir=str(out / "cache"))
    tokenized = dataset.map(process, remove_columns=["text"], num_proc=workers)
    dset = tokenized["train"]
    arr_len = int(np.sum(dset["len"], dtype=np.uint64))
    arr = np.memmap(out / "train.bin", dtype=np.uint16, mode="w+", shape=(arr_len,))
    total_batches = 1024
    idx = 0
    for batch_idx in range(total_batches):
        batch = dset.shard(num_shards=total_batches, index=batch_idx, contiguous=True).with_format("numpy")
        arr_batch = np.concatenate(batch["ids"])
        arr[idx : idx + len(arr_batch)] = arr_batch
        idx += len(arr_batch)
    arr.flush()
    return arr_len


def child(side: str, text_file: Path, tokenizer_dir: Path, out: Path, workers: int) -> None:
    """Run one side's preparation and print what it cost, as JSON."""
    prepare = {"halluc": prepare_halluc, "reference": prepare_reference}[side]
    start = time.perf_counter()
    tokens = prepare(text_file, tokenizer_dir, out, workers)
    seconds = time.perf_counter() - start
    peak_kb = max(own_peak_kb(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"tokens": tokens, "seconds": seconds, "peak_mb": peak_kb / 1024}))


def own_peak_kb() -> int:
    """This process's peak resident memory since it started (its exec), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure(side: str, text_file: Path, tokenizer_dir: Path, out: Path, workers: int) -> dict:
    """`side`'s preparation in a fresh child process."""
    out.mkdir(parents=True)
    command = [sys.executable, __file__, "--child", side, str(text_file), str(tokenizer_dir), str(out), f"--workers={workers}"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def same_ids(halluc_dir: Path, reference_bin: Path) -> bool:
    """Whether halluc's train, valid and test, one after another, are the reference's ids."""
    reference = np.memmap(reference_bin, dtype=np.uint16, mode="r")
    start = 0
    for split, ids in load_token_arrays(halluc_dir).items():
        for offset in range(0, len(ids), 1 << 24):
            block = ids[offset : offset + (1 << 24)]
            if not np.array_equal(block, reference[start + offset : start + offset + len(block)]):
                return False
        start += len(ids)
    return start == len(reference)


def parse_size(text: str) -> int:
    """2M -> 2,000,000 tokens."""
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}
    return int(float(text[:-1]) * scale[text[-1].upper()]) if text[-1].upper() in scale else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2M,20M,200M", help="corpus sizes in tokens, comma-separated")
    parser.add_argument("--reference-max", default="200M", help="measure the reference up to this size only")
    parser.add_argument("--workers", type=int, default=default_workers(), help="worker processes, both sides")
    parser.add_argument("--child", nargs=4, metavar=("SIDE", "TEXT", "TOKENIZER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, text_file, tokenizer_dir, out = args.child
        child(side, Path(text_file), Path(tokenizer_dir), Path(out), args.workers)
        return

    console = Console(width=120)
    text = source_text()
    lines = text.splitlines()
    tokenizer = train_tokenizer(lines, TokenizerConfig(kind="word"))
    tokens_per_copy = sum(len(ids) + 1 for ids in tokenizer(lines, add_special_tokens=False)["input_ids"])  # +1: eos
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_corpus_") as tmp:
        tokenizer_dir = Path(tmp) / "tokenizer"
        tokenizer.save_pretrained(tokenizer_dir)
        for size in args.sizes.split(","):
            text_file = Path(tmp) / f"corpus_{size}.txt"
            write_corpus(text, tokens_per_copy, parse_size(size), text_file)
            sides = SIDES if parse_size(size) <= parse_size(args.reference_max) else SIDES[:1]
            results = {side: measure(side, text_file, tokenizer_dir, Path(tmp) / size / side, args.workers) for side in sides}
            reference_bin = Path(tmp) / size / "reference" / "train.bin"
            same = same_ids(Path(tmp) / size / "halluc", reference_bin) if "reference" in results else None
            rows.append((size, results, same))
            console.print(f"{size}: {results}" + ("" if same is None else f" same ids: {same}"), highlight=False)
            shutil.rmtree(Path(tmp) / size)
            text_file.unlink()

    table = Table(title=f"corpus preparation, {args.workers} workers each (peak RSS of the largest process)")
    for header in ("tokens", "halluc MB", "reference MB", "halluc tok/s", "reference tok/s", "x reference speed", "same ids"):
        table.add_column(header, justify="right")
    for size, results, same in rows:
        ours = results["halluc"]
        ours_rate = ours["tokens"] / ours["seconds"]
        cells = [f"{ours['tokens']:,}", f"{ours['peak_mb']:,.0f}", "-", f"{ours_rate:,.0f}", "-", "-", "-"]
        if "reference" in results:
            ref = results["reference"]
            ref_rate = ref["tokens"] / ref["seconds"]
            cells[2], cells[4:] = f"{ref['peak_mb']:,.0f}", [f"{ref_rate:,.0f}", f"{ours_rate / ref_rate:.2f}", "yes" if same else "NO"]
        table.add_row(*cells)
    console.print(table)
    for side in SIDES:
        measured = [(size, results[side]["peak_mb"]) for size, results, _ in rows if side in results]
        (first, first_mb), (last, last_mb) = measured[0], measured[-1]
        console.print(f"{side}: peak memory at {last} is {last_mb / first_mb:.2f}x that at {first}", highlight=False)


if __name__ == "__main__":
    main()
