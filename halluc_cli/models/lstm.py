"""The classic word-level LSTM language model (Zaremba et al. 2014; PyTorch's word LM example).

embedding -> dropout -> LSTM layer 1 -> dropout -> ... -> LSTM layer N -> dropout -> decoder.
Each layer is its own `nn.LSTM` so freeze strategies can freeze layers one by one; on CPU
this costs nothing against a stacked `nn.LSTM`, and on GPU each layer still runs in cuDNN.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from transformers import PreTrainedTokenizerBase

from halluc_cli.config import LSTMConfig
from halluc_cli.errors import UserError
from halluc_cli.models.base import WEIGHTS_FILE, LanguageModel, State, read_json

CONFIG_FILE = "config.json"


class LSTMLanguageModel(LanguageModel):
    """Embedding, stacked LSTM layers with dropout between them, linear decoder."""

    family = "lstm"
    recurrent = True

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 650,
        hidden_dim: int = 650,
        num_layers: int = 2,
        dropout: float = 0.5,
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        if tie_weights and embedding_dim != hidden_dim:
            raise UserError(
                f"model.tie_weights=true needs model.embedding_dim == model.hidden_dim "
                f"(got {embedding_dim} and {hidden_dim})"
            )
        self.hparams = dict(
            vocab_size=vocab_size,
            embedding_dim=embedding_dim,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            dropout=dropout,
            tie_weights=tie_weights,
        )
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.dropout = nn.Dropout(dropout)
        sizes = [embedding_dim] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList(nn.LSTM(sizes[i], sizes[i + 1], batch_first=True) for i in range(num_layers))
        self.decoder = nn.Linear(hidden_dim, vocab_size)
        if tie_weights:  # Press & Wolf 2017: share input and output word vectors
            self.decoder.weight = self.embedding.weight
        self._init_weights()

    def _init_weights(self) -> None:
        # As in the classic example: small uniform embeddings and decoder, zero decoder bias.
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if self.decoder.weight is not self.embedding.weight:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    @classmethod
    def from_config(cls, cfg: LSTMConfig, tokenizer: PreTrainedTokenizerBase) -> "LSTMLanguageModel":
        """Build an untrained model of the configured shape for `tokenizer`."""
        return cls(
            vocab_size=len(tokenizer),
            embedding_dim=cfg.embedding_dim or cfg.hidden_dim,
            hidden_dim=cfg.hidden_dim,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout,
            tie_weights=cfg.tie_weights,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        state: State = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, State]:
        # logits_to_keep: logits of the last this many positions only (0: all, as x[:, -0:] is
        # all of x), as in `transformers`: a decoder's pass over the prompts needs the last one,
        # and the H x vocabulary decoder layer is most of the cost of the others.
        # Padding on the right needs no mask: a recurrent model never looks ahead. Padding on
        # the left (batched decoding of prompts) would run through the state, so those rows
        # are packed to skip it.
        if attention_mask is not None and state is None and _left_padded(attention_mask):
            return self._forward_left_padded(input_ids, attention_mask, logits_to_keep)
        x = self.dropout(self.embedding(input_ids))  # (B, T, E)
        state = state or [None] * len(self.layers)
        new_state = []
        one_step = x.shape[1] == 1 and not torch.is_grad_enabled()  # a decoding step
        for layer, layer_state in zip(self.layers, state):
            if one_step and layer_state is not None:
                x, layer_state = _lstm_step(layer, x, layer_state)
            else:
                x, layer_state = layer(x, layer_state)  # (B, T, H), ((1, B, H), (1, B, H))
            x = self.dropout(x)
            new_state.append(layer_state)
        return self.decoder(x[:, -logits_to_keep:]), new_state  # (B, T or logits_to_keep, V)

    def _forward_left_padded(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int = 0
    ) -> tuple[torch.Tensor, State]:
        """Run left-padded rows as if each were alone; logits at padding are zeros."""
        width = input_ids.shape[1]
        lengths = attention_mask.sum(-1)
        # Move each row's tokens to the left (right padding), pack them by length, and back.
        shift = (torch.arange(width, device=input_ids.device) + (width - lengths)[:, None]) % width  # (B, T)
        left_aligned = input_ids.gather(1, shift)
        x = self.dropout(self.embedding(left_aligned))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        new_state = []
        for layer in self.layers:
            packed, layer_state = layer(packed)
            packed = PackedSequence(self.dropout(packed.data), packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
            new_state.append(layer_state)
        x, _ = pad_packed_sequence(packed, batch_first=True, total_length=width)
        real = torch.arange(width, device=x.device) < lengths[:, None]  # (B, T)
        # Back to left padding before the decoder layer: the gather then moves H-wide rows,
        # not vocabulary-wide ones, and only the kept positions reach the decoder.
        unshift = (torch.arange(width, device=input_ids.device) - (width - lengths)[:, None]) % width
        x = x.gather(1, unshift[..., None].expand_as(x))[:, -logits_to_keep:]
        real = real.gather(1, unshift)[:, -logits_to_keep:]
        return self.decoder(x) * real[..., None], new_state

    def detach_state(self, state: State) -> State:
        if state is None:
            return None
        return [(h.detach(), c.detach()) for h, c in state]

    def repeat_state(self, state: State, repeats: int) -> State:
        # Each layer's h and c are (1, B, H), as nn.LSTM returns them: the batch is dim 1.
        return [(h.repeat_interleave(repeats, dim=1), c.repeat_interleave(repeats, dim=1)) for h, c in state]

    def input_embeddings(self) -> nn.Module:
        return self.embedding

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def output_head(self) -> nn.Module:
        return self.decoder

    def last_position(self, block_output: Any) -> torch.Tensor:
        # nn.LSTM returns (output, (h, c)); h (1, B, H) is each row's state after its last real
        # token, also when the rows were packed to skip left padding.
        _, (hidden, _) = block_output
        return hidden[-1]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: tensor.detach().contiguous() for name, tensor in self.state_dict().items()}
        if self.hparams["tie_weights"]:
            del tensors["decoder.weight"]  # safetensors refuses shared storage; rebuilt on load
        save_file(tensors, str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(self.hparams, indent=2) + "\n")
        self.write_family(directory)

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> "LSTMLanguageModel":
        """Load a halluc LSTM checkpoint dir (there is no hub for these)."""
        return cls.load(Path(name_or_path))

    @classmethod
    def load(cls, directory: Path, dtype: torch.dtype | str | None = None) -> "LSTMLanguageModel":
        """The model `save` wrote to `directory`, its weights in `dtype` (None, "auto": as saved, float32)."""
        model = cls(**read_json(directory / CONFIG_FILE))
        tensors = load_file(str(directory / WEIGHTS_FILE))
        if model.hparams["tie_weights"]:
            tensors["decoder.weight"] = tensors["embedding.weight"]
        model.load_state_dict(tensors)
        return model.to(dtype) if isinstance(dtype, torch.dtype) else model


def _lstm_step(
    layer: nn.LSTM, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """`layer(x, state)` for a single time step, by the LSTM cell itself (equal up to float
    rounding). nn.LSTM's per-call set-up (its oneDNN path on a CPU) costs more than the step:
    at H=200 on 2 CPU cores about 7x the cell's time at batch 1 and 1.5x at batch 32."""
    h, c = torch.lstm_cell(
        x[:, 0], (state[0][0], state[1][0]), layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0
    )  # (B, H) each
    return h[:, None], (h[None], c[None])


def _left_padded(attention_mask: torch.Tensor) -> bool:
    """Whether some row starts with padding."""
    return bool((attention_mask[:, 0] == 0).any())
