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
    # (B,) True for the rows of replayed pretraining text (mitigation=replay, distill); None: none
    replayed: torch.Tensor | None = None

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

    `line_end`: the token that ends each line. Given, the lines are dealt out in a new order
    every epoch (from the same seeded generator). For a corpus of independent statements
    (KB facts) this matters: in one fixed order, a model learns each fact from the lines
    before it, and then cannot recall it from its subject alone.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        ordered: bool,
        seed: int = 0,
        line_end: int | None = None,
    ) -> None:
        self.tokens = tokens
        self.batch_size, self.seq_len, self.ordered, self.seed = batch_size, seq_len, ordered, seed
        self._line_spans = None if line_end is None else _line_spans(np.asarray(tokens), line_end)
        columns = (len(tokens) - 1) // batch_size  # -1: every input needs its next token
        self.num_chunks = columns // seq_len
        if self.num_chunks == 0:
            raise ValueError(
                f"{len(tokens)} tokens are too few for one batch of {batch_size}x{seq_len}; "
                "lower train.batch_size or train.seq_len, or give more text"
            )
        self.epoch, self.position = 0, 0
        self.inputs, self.targets = self._columns(np.asarray(tokens))
        self._start_epoch()

    def _columns(self, tokens: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        columns = (len(tokens) - 1) // self.batch_size
        usable = columns * self.batch_size + 1
        # Column b holds tokens [b*columns, (b+1)*columns]; the extra one is b's last label.
        data = np.asarray(tokens[:usable], dtype=np.int64)
        inputs = torch.from_numpy(data[:-1].reshape(self.batch_size, columns))
        targets = torch.from_numpy(data[1:].reshape(self.batch_size, columns))
        return inputs, targets

    def _start_epoch(self) -> None:
        """This epoch's chunk order and, with `line_end`, its order of lines."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self._line_spans is not None:
            order = torch.randperm(len(self._line_spans), generator=generator).numpy()
            shuffled = np.concatenate([self.tokens[start:end] for start, end in self._line_spans[order]])
            self._train_inputs, self._train_targets = self._columns(shuffled)
        else:
            self._train_inputs, self._train_targets = self.inputs, self.targets
        if self.ordered:
            self._order = list(range(self.num_chunks))
        else:
            self._order = torch.randperm(self.num_chunks, generator=generator).tolist()

    def _chunk(self, inputs: torch.Tensor, targets: torch.Tensor, index: int, new_sequence: bool) -> Batch:
        span = slice(index * self.seq_len, (index + 1) * self.seq_len)
        return Batch(inputs[:, span], targets[:, span], new_sequence=new_sequence)

    def next_batch(self) -> Batch:
        """The next training batch, wrapping into a new epoch at the end."""
        if self.position == self.num_chunks:
            self.epoch, self.position = self.epoch + 1, 0
            self._start_epoch()
        index = self._order[self.position]
        new_sequence = index == 0 or not self.ordered
        batch = self._chunk(self._train_inputs, self._train_targets, index, new_sequence)
        self.position += 1
        return batch

    def one_pass(self, max_batches: int | None = None) -> Iterator[Batch]:
        """Every chunk once, in order (evaluation); does not move the training position."""
        for index in range(min(self.num_chunks, max_batches or self.num_chunks)):
            yield self._chunk(self.inputs, self.targets, index, new_sequence=index == 0)

    def state_dict(self) -> dict[str, int]:
        """Where the stream is: enough to continue with the very next batch."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._start_epoch()


def _line_spans(tokens: np.ndarray, line_end: int) -> np.ndarray:
    """(start, end) of each line, its end token included; a last unended line counts too."""
    ends = np.flatnonzero(tokens == line_end) + 1
    if len(ends) == 0 or ends[-1] != len(tokens):
        ends = np.append(ends, len(tokens))
    starts = np.concatenate([[0], ends[:-1]])
    return np.stack([starts, ends], axis=1)


@dataclass
class Example:
    """A prompt and its answer as token ids; the loss is on the answer (and its end) only."""

    prompt_ids: list[int]
    answer_ids: list[int]  # ends with end-of-sequence


class ExampleBatches:
    """Prompt-answer examples in shuffled, right-padded batches (fine-tuning).

    Each epoch's order comes from a generator seeded by (seed, epoch), so (epoch, position)
    is all a checkpoint needs to continue with the very next batch. `drop_last`: every batch
    is full, the epoch's last few examples wait for another epoch's order.
    """

    def __init__(
        self, examples: list[Example], batch_size: int, pad_id: int, seed: int = 0, drop_last: bool = False
    ) -> None:
        if len(examples) < (batch_size if drop_last else 1):
            raise ValueError(f"{len(examples)} examples are too few for a batch of {batch_size}")
        self.examples, self.batch_size, self.pad_id, self.seed = examples, batch_size, pad_id, seed
        self.num_batches = len(examples) // batch_size if drop_last else -(-len(examples) // batch_size)
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.examples), generator=generator).tolist()

    def next_batch(self) -> Batch:
        """The next training batch, reshuffling at each new epoch."""
        return self.collate(self.next_examples())

    def next_examples(self) -> list[Example]:
        """The examples of the next training batch, reshuffling at each new epoch."""
        if self.position == self.num_batches:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order()
        start = self.position * self.batch_size
        self.position += 1
        return [self.examples[i] for i in self._order[start : start + self.batch_size]]

    def one_pass(self, max_batches: int | None = None) -> Iterator[Batch]:
        """Every example once, in order (evaluation); does not move the training position."""
        for index in range(min(self.num_batches, max_batches or self.num_batches)):
            yield self.collate(self.examples[index * self.batch_size : (index + 1) * self.batch_size])

    def collate(self, examples: list[Example]) -> Batch:
        """Inputs, answer-only labels and attention mask, right-padded to the longest."""
        sequences = [e.prompt_ids + e.answer_ids for e in examples]
        width = max(len(s) for s in sequences) - 1
        inputs = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, (example, sequence) in enumerate(zip(examples, sequences)):
            length = len(sequence) - 1
            inputs[row, :length] = torch.tensor(sequence[:-1])
            mask[row, :length] = 1
            # Position t predicts token t+1: the answer starts at the prompt's last position.
            first = len(example.prompt_ids) - 1
            labels[row, first:length] = torch.tensor(example.answer_ids)
        return Batch(inputs, labels, mask)

    def state_dict(self) -> dict[str, int]:
        """Where the batches are: enough to continue with the very next one."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order()


class ReplayMixedBatches:
    """Fine-tuning batches with replayed pretraining text in a fixed number of their rows
    (mitigation=replay, distill): each batch is the next `qa`'s examples, then the next
    `replay`'s (built with drop_last, so every batch has as many), collated together with
    those last rows marked `replayed`.

    Each source keeps its own epochs and order, so a checkpoint holds both positions.
    """

    def __init__(self, qa: ExampleBatches, replay: ExampleBatches) -> None:
        self.qa, self.replay = qa, replay

    def next_batch(self) -> Batch:
        """The next training batch: its QA rows, then its replayed rows."""
        qa, replay = self.qa.next_examples(), self.replay.next_examples()
        batch = self.qa.collate(qa + replay)
        batch.replayed = torch.arange(len(qa) + len(replay)) >= len(qa)
        return batch

    def one_pass(self, max_batches: int | None = None) -> Iterator[Batch]:
        """The QA examples once, in order (evaluation), as `ExampleBatches.one_pass`."""
        return self.qa.one_pass(max_batches)

    def state_dict(self) -> dict[str, dict[str, int]]:
        """Where both sources are."""
        return {"qa": self.qa.state_dict(), "replay": self.replay.state_dict()}

    def load_state_dict(self, state: dict[str, dict[str, int]]) -> None:
        """Continue both sources from a saved position."""
        self.qa.load_state_dict(state["qa"])
        self.replay.load_state_dict(state["replay"])


def replay_rows(share: float, batch_size: int) -> int:
    """How many of `batch_size` rows replay text at `share`: the nearest count, at least one
    and leaving at least one QA row (None of either kind would not be the mitigation asked for)."""
    return min(max(round(share * batch_size), 1), batch_size - 1)
