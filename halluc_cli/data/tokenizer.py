"""Tokenizers learned on the training split with the `tokenizers` library.

Both kinds are wrapped as a `transformers` fast tokenizer, so a checkpoint's tokenizer loads
with `AutoTokenizer.from_pretrained(checkpoint_dir)` like any Hugging Face one.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from halluc_cli.config import TokenizerConfig
from halluc_cli.errors import UserError

UNK, EOS, PAD = "<unk>", "<eos>", "<pad>"
SPECIAL_TOKENS = [UNK, EOS, PAD]


def train_tokenizer(
    lines: Iterable[str], cfg: TokenizerConfig, required: Sequence[str] = ()
) -> PreTrainedTokenizerFast:
    """Learn a word-level or byte-level BPE vocabulary from `lines`, covering `required`.

    A word vocabulary keeps the corpus words by frequency (`min_frequency`, `vocab_size`),
    then gains every word of `required` it lacks (a name the corpus never states still gets
    its own entry rather than `<unk>`); byte-level BPE spells any text from its pieces.
    """
    builders = {"word": _word_level, "bpe": _byte_level_bpe}
    tokenizer, trainer = builders[cfg.kind](cfg)
    tokenizer.train_from_iterator(lines, trainer=trainer)
    if cfg.kind == "word":
        _add_missing_words(tokenizer, required)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token=UNK, eos_token=EOS, pad_token=PAD, bos_token=EOS
    )


def _word_level(cfg: TokenizerConfig) -> tuple[Tokenizer, trainers.Trainer]:
    # Whitespace words, as in the classic word-level language model (WikiText's own
    # tokenization already split punctuation off).
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    split = pre_tokenizers.Whitespace() if cfg.split_punctuation else pre_tokenizers.WhitespaceSplit()
    tokenizer.pre_tokenizer = split
    trainer = trainers.WordLevelTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=SPECIAL_TOKENS
    )
    return tokenizer, trainer


def _byte_level_bpe(cfg: TokenizerConfig) -> tuple[Tokenizer, trainers.Trainer]:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    return tokenizer, trainer


def _add_missing_words(tokenizer: Tokenizer, lines: Sequence[str]) -> None:
    """Give every word of `lines` an entry in a word-level vocabulary, after the learned ones."""
    vocab = tokenizer.get_vocab()
    words = {word for line in lines for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(line)}
    missing = sorted(words - vocab.keys())
    if missing:
        vocab.update({word: len(vocab) + index for index, word in enumerate(missing)})
        tokenizer.model = models.WordLevel(vocab, unk_token=UNK)


def check_coverage(tokenizer: PreTrainedTokenizerBase, lines: Sequence[str], fix: str) -> None:
    """Fail, naming a few of them, where lines encode to the unknown token."""
    unk = tokenizer.unk_token_id
    if unk is None or not lines:
        return
    encoded = tokenizer(list(lines), add_special_tokens=False)["input_ids"]
    uncovered = [line for line, ids in zip(lines, encoded) if unk in ids]
    if uncovered:
        shown = ", ".join(repr(line) for line in uncovered[:3])
        raise UserError(f"the tokenizer reads {len(uncovered)} of the KB's names and templates as {UNK} ({shown}); {fix}")


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved in Hugging Face form (a checkpoint dir or a hub name)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"no tokenizer could be loaded from {path} ({reason}); save it beside the model "
            "(tokenizer.save_pretrained(<model dir>))"
        ) from error
    if tokenizer.eos_token is None:
        raise UserError(f"the tokenizer in {path} has no end-of-sequence token; halluc needs one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out, so any id serves
    return tokenizer


def prompt_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A prompt's token ids, with what the tokenizer puts before a text (Llama's <s>) and
    nothing after it: a model that was trained with a start token expects it, and the answer
    follows the prompt. halluc's own tokenizers and GPT-2's add nothing."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    if ids and eos is not None and ids[-1] == eos and not text.endswith(tokenizer.eos_token):
        ids = ids[:-1]
    return ids


def encode_lines(tokenizer: PreTrainedTokenizerBase, lines: Iterable[str], chunk: int = 10_000) -> np.ndarray:
    """Token ids of every line followed by end-of-sequence, as one compact int32 array."""
    pieces = [encode_batch(tokenizer, batch, np.dtype(np.int32)) for batch in batched(lines, chunk)]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)


def encode_batch(tokenizer: PreTrainedTokenizerBase, lines: list[str], dtype: np.dtype) -> np.ndarray:
    """Token ids of `lines`, each followed by end-of-sequence, as one flat array of `dtype`."""
    # Only the ids: the attention mask and token types would cost a Python list a line each.
    ids = tokenizer(lines, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    return np.insert(flat, np.cumsum(lengths), tokenizer.eos_token_id)


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """`items` in lists of `size` (the last one shorter)."""
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
