"""`halluc pretrain`: train a language model from scratch on a corpus.

validate -> load corpus -> tokenizer -> model -> token streams -> train -> test perplexity.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from halluc_cli.commands.common import checkpoint_to_resume, describe_model, print_table, start_run
from halluc_cli.data.corpus import load_corpus, load_token_arrays, tokenize_corpus
from halluc_cli.data.kbqa import save_split
from halluc_cli.data.tokenizer import load_tokenizer, train_tokenizer
from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_json
from halluc_cli.models import FAMILIES, LanguageModel, build_model, load_model
from halluc_cli.training.batches import TokenStream
from halluc_cli.training.device import build_accelerator, pin_batches
from halluc_cli.training.loop import Trainer


def run(cfg: DictConfig) -> None:
    """Pretrain the configured model; everything lands in the Hydra run dir."""
    run_dir = start_run(cfg)
    resume_from = checkpoint_to_resume(run_dir, cfg.resume)
    accelerator = build_accelerator(cfg.device)
    if resume_from is not None:
        tokenizer = load_tokenizer(resume_from)
        model = load_model(resume_from, expected_family=cfg.model.name)
        tokens = load_token_arrays(run_dir / "tokens")
    else:
        corpus = load_corpus(cfg.data)
        if corpus.kb_split is not None:
            save_split(run_dir, corpus.kb_split)
        tokenizer, model = _new_model(cfg.model, corpus.splits["train"] + corpus.tokenizer_lines)
        tokens = tokenize_corpus(corpus.splits, tokenizer, run_dir / "tokens")
    _check_sequence_length(model, cfg.train.seq_len)
    describe_model(model)

    train_cfg = cfg.train
    train_data = _stream(tokens["train"], train_cfg, ordered=model.recurrent, seed=cfg.seed, split="train")
    valid_data = _stream(tokens["valid"], train_cfg, ordered=True, seed=cfg.seed, split="valid")
    train_data, valid_data = pin_batches(train_data, accelerator.device), pin_batches(valid_data, accelerator.device)
    trainer = Trainer(model, tokenizer, train_cfg, accelerator, run_dir, train_data, valid_data)
    result = trainer.fit(resume_from)

    test_data = _stream(tokens["test"], train_cfg, ordered=True, seed=cfg.seed, split="test")
    test_loss = trainer.mean_loss(test_data)
    summary = {
        "steps": result.steps,
        "val_loss": result.val_loss,
        "val_ppl": math.exp(min(result.val_loss, 50.0)),
        "test_loss": test_loss,
        "test_ppl": math.exp(min(test_loss, 50.0)),
        "seconds": result.seconds,
    }
    if accelerator.is_main_process:
        atomic_write_json(run_dir / "summary.json", summary)
        print_table(f"pretrain {model.family}: {run_dir}", summary)


def _new_model(model_cfg: DictConfig, tokenizer_lines: list[str]) -> tuple[PreTrainedTokenizerBase, LanguageModel]:
    """A pretrained model and its tokenizer, or a fresh tokenizer learned on the corpus and a new model."""
    if model_cfg.get("pretrained"):
        return load_tokenizer(model_cfg.pretrained), FAMILIES[model_cfg.name].from_pretrained(model_cfg.pretrained)
    tokenizer = train_tokenizer(tokenizer_lines, model_cfg.tokenizer)
    return tokenizer, build_model(model_cfg, tokenizer)


def _check_sequence_length(model: LanguageModel, seq_len: int) -> None:
    limit = getattr(model, "max_positions", None)
    if limit is not None and seq_len > limit:
        raise UserError(f"train.seq_len={seq_len} exceeds the model's {limit} positions; lower train.seq_len")


def _stream(tokens, train_cfg: DictConfig, ordered: bool, seed: int, split: str) -> TokenStream:
    try:
        return TokenStream(tokens, train_cfg.batch_size, train_cfg.seq_len, ordered=ordered, seed=seed)
    except ValueError as error:
        raise UserError(f"the {split} split: {error}") from error
