"""The tokenized splits of a corpus on disk: written in shards by worker processes, read
back memory-mapped.

Each split becomes `<split>.npy`: the ids of every line followed by end-of-sequence, uint16
when the vocabulary fits in it (half the disk and page cache of int32), else int32. The
lines are cut into shards of `shard_lines`; each worker tokenizes a batch of lines at a
time and appends the ids to its shard's file, which takes its final name only once complete,
so memory stays at a batch per process whatever the corpus size. A rerun after a kill
finds the finished shards of the same text and tokenizer in `.shards-<fingerprint>/` and
tokenizes only the rest. Last, each split's shards are copied one after another into its
`.npy`, written beside it and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from transformers import PreTrainedTokenizerBase

from halluc_cli.console import print_note
from halluc_cli.data.corpus import SPLITS
from halluc_cli.data.lines import Lines
from halluc_cli.data.tokenizer import batched, encode_batch
from halluc_cli.io import atomic_path

BATCH_LINES = 1_000  # lines per tokenizer call: enough to amortize the call, little memory
SHARDS_PREFIX = ".shards-"
MAX_WORKERS = 8  # past this, reading and copying the text, not tokenizing, is the bottleneck


def default_workers() -> int:
    """The machine's cores, at most MAX_WORKERS."""
    return min(os.cpu_count() or 1, MAX_WORKERS)


def token_dtype(tokenizer: PreTrainedTokenizerBase) -> np.dtype:
    """uint16 where every id fits, else int32."""
    return np.dtype(np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.int32)


@dataclass(frozen=True)
class _Shard:
    split: str
    index: int
    lines: Lines

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}.bin"


@dataclass(frozen=True)
class _Job:
    """What every worker needs: handed over by fork, never pickled."""

    tokenizer: PreTrainedTokenizerBase
    dtype: np.dtype
    directory: Path
    shards: list[_Shard]


def tokenize_corpus(
    splits: dict[str, Lines],
    tokenizer: PreTrainedTokenizerBase,
    directory: Path,
    workers: int | None,
    shard_lines: int,
) -> None:
    """Encode each split into `<split>.npy` in `directory` with `workers` processes (None:
    `default_workers()`), `shard_lines` lines a shard."""
    dtype = token_dtype(tokenizer)
    shard_dir = directory / f"{SHARDS_PREFIX}{_fingerprint(splits, tokenizer, dtype, shard_lines)}"
    shards = [
        _Shard(split, index, lines[start : start + shard_lines])
        for split, lines in splits.items()
        for index, start in enumerate(range(0, len(lines), shard_lines))
    ]
    pending = [shard for shard in shards if not (shard_dir / shard.name).exists()]
    if len(pending) < len(shards):
        print_note(f"tokens: {len(shards) - len(pending)} of {len(shards)} shards done before, reused")
    shard_dir.mkdir(parents=True, exist_ok=True)
    _encode_shards(_Job(tokenizer, dtype, shard_dir, pending), workers or default_workers())
    for split in splits:
        parts = [shard_dir / shard.name for shard in shards if shard.split == split]
        _concatenate(parts, dtype, directory / f"{split}.npy")
    for stale in directory.glob(f"{SHARDS_PREFIX}*"):  # this run's, and any of other text or tokenizers
        shutil.rmtree(stale)


def load_token_arrays(directory: Path) -> dict[str, np.ndarray]:
    """The token arrays a run saved, memory-mapped (uint16 or int32: widen before use)."""
    return {split: np.load(directory / f"{split}.npy", mmap_mode="r") for split in SPLITS}


def _fingerprint(splits: dict[str, Lines], tokenizer: PreTrainedTokenizerBase, dtype: np.dtype, shard_lines: int) -> str:
    """Changes with anything that changes a shard's ids: the text, the tokenizer, the cuts."""
    vocab = tokenizer.backend_tokenizer.to_str() if tokenizer.is_fast else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    ranges = [(split, lines.source.fingerprint(), lines.start, lines.stop) for split, lines in splits.items()]
    identity = json.dumps([type(tokenizer).__name__, vocab, str(dtype), shard_lines, ranges])
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _encode_shards(job: _Job, workers: int) -> None:
    """Tokenize `job.shards`, in this process or in `workers` forked ones."""
    workers = min(workers, len(job.shards))
    # fork hands the workers the tokenizer and the line sources as they are (no pickling);
    # where there is none (Windows), one process does it all, to the same bytes.
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for index in range(len(job.shards)):
            _encode_shard(job, index)
        return
    with _one_thread_per_worker(), multiprocessing.get_context("fork").Pool(workers, _start_worker, (job,)) as pool:
        for _ in pool.imap_unordered(_encode_in_worker, range(len(job.shards))):
            pass


_worker_job: _Job | None = None  # set in each worker by _start_worker


def _start_worker(job: _Job) -> None:
    global _worker_job
    _worker_job = job


def _encode_in_worker(index: int) -> None:
    _encode_shard(_worker_job, index)


def _encode_shard(job: _Job, index: int) -> None:
    """Append the ids of shard `index`, a batch of lines at a time, to a file that takes the
    shard's name once every line is in it."""
    shard = job.shards[index]
    with atomic_path(job.directory / shard.name) as tmp, open(tmp, "wb") as handle:
        for batch in batched(shard.lines, BATCH_LINES):
            encode_batch(job.tokenizer, batch, job.dtype).tofile(handle)


@contextmanager
def _one_thread_per_worker() -> Iterator[None]:
    """Tell `tokenizers` in the forked workers to stay on one thread each (the workers fill
    the cores), which also keeps it from warning about the fork; as it was once they end."""
    key = "TOKENIZERS_PARALLELISM"
    previous = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[key]
        else:
            os.environ[key] = previous


def _concatenate(parts: list[Path], dtype: np.dtype, path: Path) -> None:
    """Write `parts` (raw ids) one after another as the `.npy` at `path`, atomically, by
    plain file copies: pages written through a memory map would count as the process's own."""
    count = sum(part.stat().st_size for part in parts) // dtype.itemsize
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (count,)}
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        np.lib.format.write_array_header_1_0(out, header)
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 20)
