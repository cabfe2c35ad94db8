"""Tokenizers learned on a corpus: round trip, unknown words, Hugging Face form."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from halluc_cli.config import TokenizerConfig
from halluc_cli.data.tokenizer import EOS, UNK, encode_lines, load_tokenizer, train_tokenizer

LINES = ["the cat sat on the mat .", "the dog sat on the log .", "a bird sang ."]


def test_word_level_round_trip_and_unknown_words() -> None:
    tokenizer = train_tokenizer(LINES, TokenizerConfig(kind="word"))
    ids = tokenizer("the dog sat on the mat .", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "the dog sat on the mat ."
    assert tokenizer.convert_ids_to_tokens(tokenizer("the zebra")["input_ids"]) == ["the", UNK]


def test_word_level_vocabulary_is_capped() -> None:
    tokenizer = train_tokenizer(LINES, TokenizerConfig(kind="word", vocab_size=6))
    assert len(tokenizer) == 6


def test_byte_level_bpe_round_trips_any_text() -> None:
    tokenizer = train_tokenizer(LINES * 20, TokenizerConfig(kind="bpe", vocab_size=300))
    text = "Zebras — naïve über café 42!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert UNK not in tokenizer.convert_ids_to_tokens(ids)


def test_encode_lines_ends_each_line_with_eos() -> None:
    tokenizer = train_tokenizer(LINES, TokenizerConfig(kind="word"))
    ids = encode_lines(tokenizer, ["the cat", "a bird"])
    assert ids.dtype.name == "int32"
    assert tokenizer.convert_ids_to_tokens(ids.tolist()) == ["the", "cat", EOS, "a", "bird", EOS]


def test_saved_tokenizer_loads_with_autotokenizer(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(LINES, TokenizerConfig(kind="word"))
    tokenizer.save_pretrained(tmp_path)
    for loaded in (AutoTokenizer.from_pretrained(tmp_path), load_tokenizer(tmp_path)):
        assert loaded("the cat")["input_ids"] == tokenizer("the cat")["input_ids"]
        assert loaded.eos_token == EOS
