"""Batches for the training loop, with a position that a checkpoint can save and restore."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch


@dataclass
class Batch:
    """Inputs and next-token labels of the same shape (B, T); label -100 is not scored."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None = None
    # False when the batch continues the previous one's text, so a recurrent model carries
    # its state over (truncated backpropagation through time).
    new_sequence: bool = True

    @property
    def num_tokens(self) -> int:
        """How many tokens are scored."""
        return int((self.labels != -100).sum())


class TokenStream:
    """A token array cut into `batch_size` parallel streams read `seq_len` tokens at a time.

    As in the classic word LM: column b of every batch continues column b of the batch
    before, so an LSTM carries its hidden state across batches. For models with no carried
    state (`ordered=False`) the chunks of each epoch are shuffled with a generator seeded by
    (seed, epoch), so the order is reproducible and resumable from (epoch, position) alone.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, ordered: bool, seed: int = 0) -> None:
        columns = (len(tokens) - 1) // batch_size  # -1: every input needs its next token
        self.num_chunks = columns // seq_len
        if self.num_chunks == 0:
            raise ValueError(
                f"{len(tokens)} tokens are too few for one batch of {batch_size}x{seq_len}; "
                "lower train.batch_size or train.seq_len, or give more text"
            )
        usable = columns * batch_size + 1
        # Column b holds tokens [b*columns, (b+1)*columns]; the extra one is b's last label.
        data = np.asarray(tokens[:usable], dtype=np.int64)
        self.inputs = torch.from_numpy(data[:-1].reshape(batch_size, columns))
        self.targets = torch.from_numpy(data[1:].reshape(batch_size, columns))
        self.seq_len, self.ordered, self.seed = seq_len, ordered, seed
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> list[int]:
        if self.ordered:
            return list(range(self.num_chunks))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.num_chunks, generator=generator).tolist()

    def _chunk(self, index: int, new_sequence: bool) -> Batch:
        span = slice(index * self.seq_len, (index + 1) * self.seq_len)
        return Batch(self.inputs[:, span], self.targets[:, span], new_sequence=new_sequence)

    def next_batch(self) -> Batch:
        """The next training batch, wrapping into a new epoch at the end."""
        if self.position == self.num_chunks:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order()
        index = self._order[self.position]
        batch = self._chunk(index, new_sequence=index == 0 or not self.ordered)
        self.position += 1
        return batch

    def one_pass(self, max_batches: int | None = None) -> Iterator[Batch]:
        """Every chunk once, in order (evaluation); does not move the training position."""
        for index in range(min(self.num_chunks, max_batches or self.num_chunks)):
            yield self._chunk(index, new_sequence=index == 0)

    def state_dict(self) -> dict[str, int]:
        """Where the stream is: enough to continue with the very next batch."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order()
