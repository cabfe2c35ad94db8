"""The one interface both model families implement.

Training, freezing and decoding only talk to a `LanguageModel`: a forward pass that takes
token ids and an optional carried state (the LSTM's hidden state; None at the start of a
sequence and always for a Transformer)
and returns next-token logits and the new state, plus the handles that freeze strategies
need (embeddings, ordered blocks, output head).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_json

# What a model carries from one call to the next: the LSTM's per-layer (h, c); the
# Transformer's key-value cache when asked for one (use_cache); None otherwise.
State = Any
FAMILY_FILE = "halluc_model.json"
WEIGHTS_FILE = "model.safetensors"  # what both families (and `save_pretrained`) name the weights
# What to do about a checkpoint file that is damaged (a full disk or a copy cut short).
DAMAGED_FIX = "re-run the training that wrote it (resume=false starts it over), or point ckpt at another run"


class LanguageModel(nn.Module, ABC):
    """A causal language model over token ids."""

    family: ClassVar[str]
    # True when the state carries information across consecutive chunks of a text stream,
    # so training keeps the stream in order (truncated BPTT) instead of shuffling chunks.
    recurrent: ClassVar[bool] = False

    @abstractmethod
    def forward(
        self,
        input_ids: torch.Tensor,
        state: State = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, State]:
        """Logits (B, T, vocab) for ids (B, T), and the state after the last position.

        `attention_mask` (B, T_state + T) marks real tokens with 1; padding may be on the
        right (training) or the left (batched decoding). `use_cache` asks for the state that
        lets the next call continue this one (the Transformer's key-value cache); a
        recurrent model always returns it. `logits_to_keep` > 0 computes the logits of the
        last that many positions only (decoding needs one; the output layer dominates).
        """

    def detach_state(self, state: State) -> State:
        """Cut the graph behind a carried state (truncated backpropagation through time)."""
        return state

    @abstractmethod
    def repeat_state(self, state: State, repeats: int) -> State:
        """The state with each batch row repeated `repeats` times in a row (row i becomes rows
        i * repeats ... i * repeats + repeats - 1), as `repeat_interleave` on the batch: several
        continuations of one prompt then share the prompt's pass. May reuse `state`'s storage."""

    @abstractmethod
    def input_embeddings(self) -> nn.Module:
        """The token embedding layer."""

    @abstractmethod
    def blocks(self) -> list[nn.Module]:
        """The stacked layers, input side first."""

    @abstractmethod
    def output_head(self) -> nn.Module:
        """The layer that maps hidden states to vocabulary logits."""

    @abstractmethod
    def last_position(self, block_output: Any) -> torch.Tensor:
        """The hidden state (B, H) that a block's output (what its forward returned) holds at
        each row's last token, for `capture_last_hidden`."""

    @contextmanager
    def capture_last_hidden(self, layer: int) -> Iterator[list[torch.Tensor]]:
        """While open, every forward pass appends to the yielded list the hidden state (B, H,
        float32, on the CPU) that block `layer` (negative: from the top) leaves at each row's
        last token: with left-padded prompts, the end of each prompt. A forward hook, so the
        pass that decodes also yields it, at no extra cost."""
        blocks = self.blocks()
        check_layer(layer, len(blocks))
        captured: list[torch.Tensor] = []

        def keep(module: nn.Module, inputs: Any, output: Any) -> None:
            captured.append(self.last_position(output).detach().float().cpu())

        handle = blocks[layer].register_forward_hook(keep)
        try:
            yield captured
        finally:
            handle.remove()

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write weights (safetensors) and config to `directory`."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, dtype: torch.dtype | None = None) -> "LanguageModel":
        """Rebuild the model from what `save` wrote, its weights in `dtype` (None: float32)."""

    def write_family(self, directory: Path, **extra: Any) -> None:
        """Record which family saved `directory`, so loading needs no config."""
        atomic_write_json(directory / FAMILY_FILE, {"family": self.family, **extra})


def check_layer(layer: int, depth: int) -> None:
    """Fail unless `layer` names one of `depth` blocks (negative counts from the top)."""
    if not -depth <= layer < depth:
        raise UserError(f"detector.layer={layer}, but the model has {depth} layers; choose one in [{-depth}, {depth - 1}]")


def read_family(directory: Path) -> dict[str, Any]:
    """The family record a model wrote into its checkpoint dir."""
    return read_json(directory / FAMILY_FILE)


def read_json(path: Path) -> Any:
    """A JSON file of a checkpoint dir; a damaged one is a UserError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); {DAMAGED_FIX}") from error


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
