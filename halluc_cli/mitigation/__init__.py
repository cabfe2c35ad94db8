"""Mitigations that act on the fine-tuning data (`conf/finetune/mitigation/`, `halluc finetune`).

`prepare_finetune_set` turns the fine-tuning set into the one the model trains on:
`none` keeps it, `clean` runs the data cleaning of `clean.py`. `distill` and `replay` keep
every example and act on training instead: `distill.py` adds a loss term (KL to the starting
model), `replay.py` mixes pretraining text into the batches. `kb_verify` acts on
predictions, so it is `halluc score`'s (`conf/score/mitigation/`, `halluc_cli/scoring/verify.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from halluc_cli.data.qa import QAExample
from halluc_cli.errors import UserError
from halluc_cli.mitigation.clean import check_clean_config, clean_finetune_set
from halluc_cli.mitigation.replay import check_replay_config
from halluc_cli.models import LanguageModel


def _keep(cfg: DictConfig, examples: list[QAExample], *args, **kwargs) -> list[QAExample]:
    return examples


# name -> (check of its settings, what it does to the fine-tuning set)
FINETUNE_MITIGATIONS: dict[str, tuple[Callable[[DictConfig], None], Callable[..., list[QAExample]]]] = {
    "none": (lambda cfg: None, _keep),
    "clean": (check_clean_config, clean_finetune_set),
    "distill": (check_replay_config, _keep),
    "replay": (check_replay_config, _keep),
}


def check_finetune_mitigation(cfg: DictConfig) -> None:
    """Reject a mitigation `halluc finetune` cannot apply, or bad settings of one, at the start."""
    name = cfg.name  # a user's own conf/finetune/mitigation/ file may name anything
    if name not in FINETUNE_MITIGATIONS:
        raise UserError(
            f"unknown mitigation {name!r} for halluc finetune; use mitigation={' or '.join(FINETUNE_MITIGATIONS)}"
        )
    check, _ = FINETUNE_MITIGATIONS[name]
    check(cfg)


def prepare_finetune_set(
    cfg: DictConfig,
    examples: list[QAExample],
    model: LanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    run_dir: Path,
    resuming: bool = False,
) -> list[QAExample]:
    """The set to fine-tune on under `cfg.mitigation` (`cfg`: the finetune run's config).

    `model` must still be the pretrained one (the clean probe asks it what it knows);
    `resuming`: the run continues from a checkpoint, so the set it trained on is read back.
    """
    _, prepare = FINETUNE_MITIGATIONS[cfg.mitigation.name]
    return prepare(cfg, examples, model, tokenizer, device, run_dir, resuming)
