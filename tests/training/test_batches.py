"""TokenStream: classic batchify layout, reproducible shuffles, resumable position."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from halluc_cli.training.batches import TokenStream


def test_columns_continue_from_batch_to_batch() -> None:
    stream = TokenStream(np.arange(41), batch_size=2, seq_len=5, ordered=True)
    first, second = stream.next_batch(), stream.next_batch()
    assert first.input_ids.tolist() == [[0, 1, 2, 3, 4], [20, 21, 22, 23, 24]]
    assert first.labels.tolist() == [[1, 2, 3, 4, 5], [21, 22, 23, 24, 25]]
    assert second.input_ids[0].tolist() == [5, 6, 7, 8, 9] and not second.new_sequence
    assert first.new_sequence


def test_unordered_epochs_are_shuffled_reproducibly() -> None:
    def epoch_starts(seed: int) -> list[int]:
        stream = TokenStream(np.arange(401), 2, 5, ordered=False, seed=seed)
        return [stream.next_batch().input_ids[0, 0].item() for _ in range(stream.num_chunks)]

    starts = epoch_starts(seed=1)
    assert starts == epoch_starts(seed=1) and starts != epoch_starts(seed=2)
    assert sorted(starts) == list(range(0, 200, 5)) and starts != sorted(starts)


def test_position_restores_the_next_batch() -> None:
    stream = TokenStream(np.arange(401), 2, 5, ordered=False, seed=3)
    for _ in range(57):  # into the second epoch
        stream.next_batch()
    saved = stream.state_dict()
    expected = stream.next_batch().input_ids
    fresh = TokenStream(np.arange(401), 2, 5, ordered=False, seed=3)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.next_batch().input_ids, expected)


def test_too_few_tokens_is_an_error() -> None:
    with pytest.raises(ValueError, match="too few for one batch"):
        TokenStream(np.arange(10), batch_size=4, seq_len=5, ordered=True)


def _lines_of(tokens: list[int], end: int) -> list[tuple[int, ...]]:
    lines, line = [], []
    for token in tokens:
        line.append(token)
        if token == end:
            lines.append(tuple(line))
            line = []
    return lines


def _epoch_text(stream: TokenStream) -> list[int]:
    """The training text of a one-column stream's epoch: its inputs and the last label."""
    batches = [stream.next_batch() for _ in range(stream.num_chunks)]
    return [int(t) for b in batches for t in b.input_ids[0]] + [int(batches[-1].labels[0, -1])]


def test_line_shuffle_deals_whole_lines_in_a_new_order_each_epoch() -> None:
    # 30 lines "k k+1 k+2 END" (END = -1), read in order by an LSTM-style stream
    tokens = np.array([t for k in range(0, 300, 10) for t in (k, k + 1, k + 2, -1)])
    stream = TokenStream(tokens, batch_size=1, seq_len=7, ordered=True, seed=5, line_end=-1)  # 17 chunks: all of it
    original = _lines_of(tokens.tolist(), -1)
    first, second = _lines_of(_epoch_text(stream), -1), _lines_of(_epoch_text(stream), -1)
    assert sorted(first) == sorted(original) and sorted(second) == sorted(original)
    assert first != original and second != first
    # evaluation reads the text as written
    assert [int(t) for b in stream.one_pass() for t in b.input_ids[0]] == tokens[:-1].tolist()


def test_line_shuffle_resumes_at_the_same_batch() -> None:
    tokens = np.array([t for k in range(0, 400, 10) for t in (k, k + 1, -1)])
    stream = TokenStream(tokens, 2, 3, ordered=False, seed=2, line_end=-1)
    for _ in range(stream.num_chunks + 3):  # into the second epoch
        stream.next_batch()
    fresh = TokenStream(tokens, 2, 3, ordered=False, seed=2, line_end=-1)
    fresh.load_state_dict(stream.state_dict())
    assert torch.equal(fresh.next_batch().input_ids, stream.next_batch().input_ids)
