"""Corpora read on demand and tokenized in shards: the same lines as the `datasets` text
loader, the same ids whatever the workers and shard size, and a killed preparation that a
rerun finishes from the shards it left."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from halluc_cli.config import CorpusConfig, TokenizerConfig
from halluc_cli.data import lines as lines_module
from halluc_cli.data import tokens as tokens_module
from halluc_cli.data.corpus import load_text
from halluc_cli.data.lines import Lines, TableColumn, TextFiles
from halluc_cli.data.tokenizer import encode_lines, train_tokenizer
from halluc_cli.data.tokens import load_token_arrays, token_dtype, tokenize_corpus
from halluc_cli.errors import UserError
from halluc_cli.training.batches import TokenStream

# Every line break `datasets` knows, blank lines, a last line with no break, and non-ASCII.
AWKWARD = "the cat sat\r\non the mat\n\n  a bird  \rsang über\n\nthe dog\r\r\nran"
WORDS = "the cat sat on a mat and the dog ran to the log while a bird sang".split()


def _corpus_file(path: Path, lines: int = 60) -> Path:
    rng = np.random.default_rng(0)
    text = "\n".join(" ".join(rng.choice(WORDS, size=rng.integers(0, 12))) for _ in range(lines))
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _datasets_lines(paths: list[Path]) -> list[str]:
    """The lines as the `datasets` "text" loader (what halluc read corpora with before) reads them."""
    loaded = datasets.load_dataset("text", data_files={"train": [str(p) for p in paths]}, keep_in_memory=True)
    return list(loaded["train"]["text"])


def test_text_files_read_like_the_datasets_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lines_module, "PIECE_BYTES", 5)  # many pieces, cut anywhere in a line
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_bytes(AWKWARD.encode("utf-8"))
    second.write_bytes(b"one\ntwo\n")
    expected = _datasets_lines([first, second])
    lines = Lines.of(TextFiles([str(first), str(second)]))
    assert list(lines) == expected and len(lines) == len(expected)
    for start in range(len(expected)):
        for stop in range(start, len(expected) + 1):
            assert list(lines[start:stop]) == expected[start:stop], (start, stop)


def test_a_file_that_is_not_utf8_is_one_user_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.txt is not UTF-8 text"):
        list(Lines.of(TextFiles([str(path)])))


def test_held_out_splits_are_the_last_lines_of_train(tmp_path: Path) -> None:
    path = _corpus_file(tmp_path / "corpus.txt")
    everything = _datasets_lines([path])
    splits = load_text(CorpusConfig(train=[str(path)], heldout_fraction=0.1))
    assert list(splits["test"]) == everything[-6:]
    assert list(splits["valid"]) == everything[-12:-6]
    assert list(splits["train"]) == everything[:-12]


def test_a_hub_table_column_reads_in_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lines_module, "TABLE_BATCH", 2)
    table = datasets.Dataset.from_dict({"text": [f"line {i}" for i in range(7)], "id": list(range(7))})
    lines = Lines.of(TableColumn(table, "text"))
    assert list(lines[1:6]) == [f"line {i}" for i in range(1, 6)]
    with pytest.raises(UserError, match="no column 'body'"):
        TableColumn(table, "body")


def _prepared(tmp_path: Path) -> tuple[dict[str, Lines], object]:
    splits = load_text(CorpusConfig(train=[str(_corpus_file(tmp_path / "corpus.txt", lines=200))]))
    return splits, train_tokenizer(splits["train"], TokenizerConfig(kind="word"))


@pytest.mark.parametrize("workers, shard_lines", [(1, 7), (2, 7), (3, 1000)])
def test_shards_and_workers_give_the_single_process_ids(tmp_path: Path, workers: int, shard_lines: int) -> None:
    splits, tokenizer = _prepared(tmp_path)
    tokenize_corpus(splits, tokenizer, tmp_path / "tokens", workers, shard_lines)
    arrays = load_token_arrays(tmp_path / "tokens")
    for split, lines in splits.items():
        assert np.array_equal(arrays[split], encode_lines(tokenizer, list(lines))), split
        assert arrays[split].dtype == np.uint16
    assert sorted(p.name for p in (tmp_path / "tokens").iterdir()) == ["test.npy", "train.npy", "valid.npy"]


def test_a_killed_preparation_leaves_no_token_file_and_a_rerun_reuses_its_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits, tokenizer = _prepared(tmp_path)
    tokenize_corpus(splits, tokenizer, tmp_path / "whole", 1, 7)
    encode_shard = tokens_module._encode_shard
    done_before: list[str] = []

    def killed_after_five(job, index: int) -> None:
        if len(done_before) == 5:
            (job.directory / f".{job.shards[index].name}.partial.tmp").write_bytes(b"\x01\x02")  # half written
            raise KeyboardInterrupt  # as a kill looks from inside
        encode_shard(job, index)
        done_before.append(job.shards[index].name)

    monkeypatch.setattr(tokens_module, "_encode_shard", killed_after_five)
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus(splits, tokenizer, tmp_path / "tokens", 1, 7)
    assert not list((tmp_path / "tokens").glob("*.npy"))  # nothing a rerun could take for done

    redone: list[str] = []

    def counted(job, index: int) -> None:
        redone.append(job.shards[index].name)
        encode_shard(job, index)

    monkeypatch.setattr(tokens_module, "_encode_shard", counted)
    tokenize_corpus(splits, tokenizer, tmp_path / "tokens", 1, 7)
    assert redone and not set(redone) & set(done_before)  # the finished shards were not redone
    whole, again = load_token_arrays(tmp_path / "whole"), load_token_arrays(tmp_path / "tokens")
    assert all(np.array_equal(whole[split], again[split]) for split in splits)
    assert sorted(p.name for p in (tmp_path / "tokens").iterdir()) == ["test.npy", "train.npy", "valid.npy"]


def test_shards_of_another_tokenizer_are_not_reused(tmp_path: Path) -> None:
    splits, tokenizer = _prepared(tmp_path)
    other = train_tokenizer(["cat dog"], TokenizerConfig(kind="word"))
    tokenize_corpus(splits, other, tmp_path / "tokens", 1, 7)
    tokenize_corpus(splits, tokenizer, tmp_path / "tokens", 2, 7)
    assert np.array_equal(load_token_arrays(tmp_path / "tokens")["train"], encode_lines(tokenizer, list(splits["train"])))


def test_a_worker_error_reaches_the_user(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n" * 20 + "café\n".encode("latin-1"))
    splits = {split: Lines.of(TextFiles([str(bad)])) for split in ("train", "valid", "test")}
    tokenizer = train_tokenizer(["fine"], TokenizerConfig(kind="word"))
    with pytest.raises(UserError, match="bad.txt is not UTF-8 text"):
        tokenize_corpus(splits, tokenizer, tmp_path / "tokens", 2, 5)
    assert not list((tmp_path / "tokens").glob("*.npy"))


def test_a_vocabulary_past_uint16_keeps_int32_and_training_widens_either() -> None:
    assert token_dtype(train_tokenizer(["a b"], TokenizerConfig(kind="word"))) == np.uint16
    many = train_tokenizer([" ".join(f"w{i}" for i in range(70_000))], TokenizerConfig(kind="word", vocab_size=80_000))
    assert token_dtype(many) == np.int32
    stream = TokenStream(np.arange(41, dtype=np.uint16), batch_size=2, seq_len=5, ordered=True)
    assert stream.next_batch().input_ids.dtype == torch.int64
