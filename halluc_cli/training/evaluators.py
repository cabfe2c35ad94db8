"""Numbers computed at each evaluation besides the validation loss."""

from __future__ import annotations

import torch

from halluc_cli.models import LanguageModel
from halluc_cli.training.batches import ExampleBatches


@torch.no_grad()
def answers_fitted(model: LanguageModel, batches: ExampleBatches) -> list[bool]:
    """Per example: does the model predict every answer token (and the end) given the prompt?

    Under teacher forcing, the argmax matching each gold token is exactly the condition for
    greedy decoding to produce the answer, so this is greedy exact match in one forward pass.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    fitted: list[bool] = []
    for batch in batches.one_pass():
        logits, _ = model(batch.input_ids.to(device), None, batch.attention_mask.to(device))
        labels = batch.labels.to(device)
        scored = labels != -100
        right = (logits.argmax(-1) == labels) | ~scored
        fitted.extend(right.all(dim=1).tolist())
    model.train(was_training)
    return fitted


class FitAccuracy:
    """Share of examples the model answers exactly, per named group (e.g. known, unknown)."""

    def __init__(self, groups: dict[str, ExampleBatches]) -> None:
        self.groups = groups

    def __call__(self, model: LanguageModel) -> dict[str, float]:
        metrics = {}
        for name, batches in self.groups.items():
            fitted = answers_fitted(model, batches)
            metrics[name] = round(sum(fitted) / len(fitted), 4)
        return metrics
