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
