"""Self-distillation (`mitigation=distill`, Kaplan, Gekhman et al. 2026), for `halluc finetune`.

Every fine-tuning example is kept; the loss gains `weight * T^2 * KL(p_ref || p_model)`, the
mean over the positions it covers, where p_ref is the frozen model the run started from
(eval mode, no gradients) and both distributions are softened by the temperature T.

- Direction: KL(p_ref || p_model), the usual distillation loss (Hinton et al.). Its gradient
  is that of a cross-entropy with the reference's distribution as soft targets, so the model
  is pushed to keep all the mass the reference spreads (mass-covering); the other direction
  lets the model drop the reference's less likely tokens, which is forgetting.
- T^2 keeps the term's gradients at the same scale whatever the temperature (Hinton et al.).
- Positions (`inputs`): `finetune` covers the QA inputs' prompt positions, those the answer loss
  does not score (each predicts the next token of the question). The answer positions are
  left to the answer loss: a KL there would pull an unknown fact's answer back to the
  reference's guess, against fitting the very examples this mitigation keeps. `replay`
  covers every position of the replayed pretraining text (mitigation=replay's rows), `both`
  the two.

The reference is a second copy of the starting weights (in the frozen weights' precision),
whatever the freeze strategy: it doubles the model's memory and adds a forward pass a step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from omegaconf import DictConfig

from halluc_cli.config import DistillOn
from halluc_cli.models import LanguageModel, open_model
from halluc_cli.training.batches import Batch
from halluc_cli.training.device import load_dtype


def kl_to_reference(logits: torch.Tensor, reference_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sum over rows of KL(p_ref || p_model) between the softmaxes of (N, V) logits at
    `temperature`, in fp32 (the softmax over a large vocabulary needs the range)."""
    log_model = F.log_softmax(logits.float() / temperature, dim=-1)
    log_reference = F.log_softmax(reference_logits.float() / temperature, dim=-1)
    return F.kl_div(log_model, log_reference, log_target=True, reduction="sum")


class SelfDistillation:
    """The loss term of mitigation=distill (a `training.loop.LossTerm`)."""

    def __init__(self, reference: LanguageModel, weight: float, temperature: float, inputs: DistillOn) -> None:
        self.reference = reference.eval().requires_grad_(False)
        self.weight, self.temperature, self.inputs = weight, temperature, DistillOn(inputs)

    def positions(self, batch: Batch) -> torch.Tensor:
        """(B, T) the positions the term covers (`inputs`)."""
        real = torch.ones_like(batch.labels, dtype=torch.bool) if batch.attention_mask is None \
            else batch.attention_mask.bool()
        replayed = torch.zeros(len(real), dtype=torch.bool) if batch.replayed is None else batch.replayed
        replayed = replayed.to(real.device)[:, None]
        prompts = real & (batch.labels == -100) & ~replayed
        replay = real & replayed
        return {DistillOn.finetune: prompts, DistillOn.replay: replay, DistillOn.both: prompts | replay}[self.inputs]

    def count(self, batch: Batch) -> int:
        """How many positions of `batch` the term covers."""
        return int(self.positions(batch).sum())

    def __call__(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        """weight * T^2 * the sum of KL(p_ref || p_model) over the covered positions of `batch`."""
        device = logits.device
        positions = self.positions(batch).to(device)
        mask = None if batch.attention_mask is None else batch.attention_mask.to(device)
        with torch.no_grad():
            reference_logits, _ = self.reference(batch.input_ids.to(device), None, mask)
        kl = kl_to_reference(logits[positions], reference_logits[positions], self.temperature)
        return self.weight * self.temperature**2 * kl


def self_distillation(cfg: DictConfig, model_dir: str, accelerator: Accelerator) -> SelfDistillation:
    """mitigation=distill's term, its reference the model in `model_dir` (what the run starts from)."""
    reference = open_model(
        model_dir, trust_remote_code=cfg.trust_remote_code, dtype=load_dtype(accelerator, training=False)
    )
    mitigation = cfg.mitigation
    return SelfDistillation(reference.to(accelerator.device), mitigation.weight, mitigation.temperature, mitigation.inputs)
