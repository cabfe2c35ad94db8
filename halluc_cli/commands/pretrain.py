"""`halluc pretrain`: train a language model from scratch on a corpus.

validate -> load corpus -> tokenizer -> model -> token streams -> train -> test perplexity.
Of several processes (torchrun), the main one prepares the data; the others read it back.
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from halluc_cli.commands.common import checkpoint_to_resume, describe_model, start_run
from halluc_cli.console import print_table
from halluc_cli.data.corpus import load_corpus
from halluc_cli.data.kbqa import save_split
from halluc_cli.data.lines import Lines
from halluc_cli.data.tokenizer import check_coverage, load_tokenizer, train_tokenizer
from halluc_cli.data.tokens import load_token_arrays, tokenize_corpus
from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_json
from halluc_cli.models import FAMILIES, LanguageModel, build_model, load_model
from halluc_cli.rundir import SUMMARY_FILE, TOKENS_DIR
from halluc_cli.training.batches import TokenStream
from halluc_cli.training.device import build_accelerator, pin_batches
from halluc_cli.training.loggers import build_trackers, check_trackers, flat_params
from halluc_cli.training.loop import Trainer


def run(cfg: DictConfig) -> None:
    """Pretrain the configured model; everything lands in the Hydra run dir."""
    check_trackers(cfg.logger)
    accelerator = build_accelerator(cfg.device)
    run_dir = start_run(cfg, accelerator, kept_on_resume=("model", "data"))
    resume_from = checkpoint_to_resume(run_dir, cfg.resume)
    if resume_from is None and accelerator.is_main_process:
        _prepare_data(cfg, run_dir / TOKENS_DIR)
    accelerator.wait_for_everyone()  # the others read what the main process wrote
    tokenizer = load_tokenizer(resume_from or run_dir / TOKENS_DIR)
    if resume_from is not None:
        model = load_model(resume_from, expected_family=cfg.model.name)
    else:
        model = _new_model(cfg.model, tokenizer)
    tokens = load_token_arrays(run_dir / TOKENS_DIR)
    _check_sequence_length(model, cfg.train.seq_len)
    describe_model(model)

    train_cfg = cfg.train
    line_end = tokenizer.eos_token_id if cfg.data.shuffle_lines else None
    train_data = _stream(tokens["train"], train_cfg, model.recurrent, cfg.seed, "train", line_end)
    valid_data = _stream(tokens["valid"], train_cfg, True, cfg.seed, "valid")
    train_data, valid_data = pin_batches(train_data, accelerator.device), pin_batches(valid_data, accelerator.device)
    trainer = Trainer(
        model, tokenizer, train_cfg, accelerator, run_dir, train_data, valid_data,
        trackers=build_trackers(cfg.logger, run_dir), hparams=flat_params(cfg),
    )
    result = trainer.fit(resume_from)

    test_data = _stream(tokens["test"], train_cfg, True, cfg.seed, "test")
    test_loss = trainer.mean_loss(test_data)
    # The training text's own perplexity (what was memorized), beside the held-out ones.
    train_text = _stream(tokens["train"], train_cfg, True, cfg.seed, "train")
    train_loss = trainer.mean_loss(train_text, train_cfg.eval_batches)
    summary = {
        "steps": result.steps,
        "train_loss": train_loss,
        "train_ppl": math.exp(min(train_loss, 50.0)),
        "val_loss": result.val_loss,
        "val_ppl": math.exp(min(result.val_loss, 50.0)),
        "test_loss": test_loss,
        "test_ppl": math.exp(min(test_loss, 50.0)),
        "seconds": result.seconds,
    }
    if accelerator.is_main_process:
        atomic_write_json(run_dir / SUMMARY_FILE, summary)
        print_table(f"pretrain {model.family}: {run_dir}", summary)


def _prepare_data(cfg: DictConfig, tokens_dir: Path) -> None:
    """Load the corpus, learn (or load) the tokenizer, and write both it and the tokenized
    splits to `tokens_dir`; a KB corpus also records which facts it states (kb_split.json)."""
    corpus = load_corpus(cfg.data)
    if corpus.kb_split is not None:
        save_split(tokens_dir.parent, corpus.kb_split)
    tokenizer = _new_tokenizer(cfg.model, corpus.splits["train"], corpus.required_lines)
    check_coverage(
        tokenizer, corpus.required_lines,
        "pretrain with model.tokenizer.kind=bpe, or with a tokenizer whose vocabulary has these words",
    )
    tokenize_corpus(corpus.splits, tokenizer, tokens_dir, cfg.prepare.num_workers, cfg.prepare.shard_lines)
    tokenizer.save_pretrained(tokens_dir)


def _new_tokenizer(
    model_cfg: DictConfig, train_lines: Lines, required_lines: list[str]
) -> PreTrainedTokenizerBase:
    """A pretrained model's tokenizer, or a fresh one learned on the corpus (read as it is learned)."""
    if model_cfg.get("pretrained"):
        return load_tokenizer(model_cfg.pretrained)
    return train_tokenizer(train_lines, model_cfg.tokenizer, required_lines)


def _new_model(model_cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> LanguageModel:
    """A pretrained model, or a new one sized by the config."""
    if model_cfg.get("pretrained"):
        return FAMILIES[model_cfg.name].from_pretrained(model_cfg.pretrained)
    return build_model(model_cfg, tokenizer)


def _check_sequence_length(model: LanguageModel, seq_len: int) -> None:
    limit = getattr(model, "max_positions", None)
    if limit is not None and seq_len > limit:
        raise UserError(f"train.seq_len={seq_len} exceeds the model's {limit} positions; lower train.seq_len")


def _stream(
    tokens, train_cfg: DictConfig, ordered: bool, seed: int, split: str, line_end: int | None = None
) -> TokenStream:
    try:
        return TokenStream(tokens, train_cfg.batch_size, train_cfg.seq_len, ordered, seed, line_end)
    except ValueError as error:
        raise UserError(f"the {split} split: {error}") from error
