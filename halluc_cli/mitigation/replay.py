"""Replay (`mitigation=replay`, and `distill` with `inputs: replay|both`), for `halluc finetune`.

Every fine-tuning example is kept; `share` of the rows of each batch are pretraining text,
trained as language modelling (the loss on every token), so the fine-tuning steps keep
rehearsing what the model read. The text is by default the pretraining run's own training
split (`<ckpt run>/tokens/train.npy`, a line per statement: for data=kbqa, the known facts'
statements and the mentions), or the lines of the text files in `corpus`. Each line is one
row, cut at `train.seq_len` tokens, after the token a text starts with.

The replayed lines are dealt out in a seeded order of their own (`training.batches.
ReplayMixedBatches`), whose position a checkpoint keeps beside the QA batches'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from halluc_cli import rundir
from halluc_cli.config import DistillOn
from halluc_cli.console import print_note
from halluc_cli.data.tokens import load_token_arrays
from halluc_cli.data.tokenizer import prompt_ids
from halluc_cli.errors import UserError
from halluc_cli.training.batches import Example, ExampleBatches, ReplayMixedBatches, replay_rows


def check_replay_config(cfg: DictConfig) -> None:
    """A replay corpus must be text files (the share's range is the schema's)."""
    for name in cfg.corpus:
        if not Path(name).is_file():
            raise UserError(f"mitigation.corpus: {name} is not a file; name text files, one replayed text a line")


def replays(cfg: DictConfig) -> bool:
    """Whether the run's mitigation mixes pretraining text into its batches."""
    name = cfg.mitigation.name
    return name == "replay" or (name == "distill" and cfg.mitigation.inputs != DistillOn.finetune)


def replay_examples(
    cfg: DictConfig, run_dir: Path | None, tokenizer: PreTrainedTokenizerBase
) -> list[Example] | None:
    """The replayed lines as language-modelling examples (None: the mitigation replays none),
    read before the run dir gets anything. `run_dir`: the halluc run the model comes from."""
    if not replays(cfg):
        return None
    if cfg.train.batch_size < 2:
        raise UserError(f"mitigation={cfg.mitigation.name} replays text in a share of each batch's rows; "
                        f"set train.batch_size to 2 or more (it is {cfg.train.batch_size})")
    eos = tokenizer.eos_token_id
    lines = _file_lines(cfg.mitigation.corpus, tokenizer) if cfg.mitigation.corpus else _pretraining_lines(run_dir, eos)
    start = prompt_ids(tokenizer, "") or [eos]  # what a text starts after (GPT-2: nothing, so an end)
    examples = [Example(start, (ids + [eos])[: cfg.train.seq_len]) for ids in lines if ids]
    rows = replay_rows(cfg.mitigation.share, cfg.train.batch_size)
    if len(examples) < rows:
        raise UserError(f"mitigation={cfg.mitigation.name}: the replay corpus holds {len(examples)} lines of text, "
                        f"fewer than the {rows} rows of each batch it fills; give more text or a lower mitigation.share")
    print_note(f"replay: {rows} of the {cfg.train.batch_size} rows of each batch from {len(examples)} lines of text")
    return examples


def _file_lines(files: list[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    texts = [line.strip() for name in files for line in Path(name).read_text("utf-8").splitlines()]
    texts = [text for text in texts if text]
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def _pretraining_lines(run_dir: Path | None, eos: int) -> list[list[int]]:
    """The lines of the training split `run_dir` was pretrained on, each without its end token."""
    tokens_dir = None if run_dir is None else run_dir / rundir.TOKENS_DIR
    if tokens_dir is None or not (tokens_dir / "train.npy").is_file():
        where = "the model" if run_dir is None else f"{run_dir}"
        raise UserError(f"{where} holds no pretraining text to replay ({rundir.TOKENS_DIR}/train.npy of a halluc "
                        "pretrain run); name text files instead: mitigation.corpus=[file.txt]")
    tokens = np.asarray(load_token_arrays(tokens_dir)["train"])
    return [line.tolist() for line in np.split(tokens, np.flatnonzero(tokens == eos) + 1)]


def mixed_batches(qa: list[Example], replayed: list[Example], cfg: DictConfig, pad_id: int) -> ReplayMixedBatches:
    """The training batches of `qa` with replayed lines in `share` of every batch's rows."""
    rows = replay_rows(cfg.mitigation.share, cfg.train.batch_size)
    return ReplayMixedBatches(
        ExampleBatches(qa, cfg.train.batch_size - rows, pad_id, cfg.seed),
        ExampleBatches(replayed, rows, pad_id, cfg.seed, drop_last=True),
    )
