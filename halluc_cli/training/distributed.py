"""Data parallel training over several processes (`torchrun`, `accelerate launch`).

`train.batch_size` is the global batch. Every process draws the same global batch from the
same seeded batch source and trains on its own contiguous block of rows, so N processes with
batch_size / N rows each take the same optimizer steps as one process with all of them.
The LSTM's carried state is per row: a checkpoint holds it for the whole global batch
(gathered from every process) and each process takes its rows back on resume, so a
checkpoint does not depend on how many processes wrote it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from halluc_cli.errors import UserError
from halluc_cli.training.batches import Batch


def check_batch_split(batch_size: int, num_processes: int) -> None:
    """Refuse a global batch that does not split evenly across the processes."""
    if batch_size % num_processes:
        raise UserError(
            f"train.batch_size={batch_size} (the global batch) does not split across {num_processes} processes; "
            f"set it to a multiple of {num_processes}"
        )


def check_last_batch(num_examples: int, batch_size: int, num_processes: int) -> None:
    """Refuse a set whose last, smaller batch would leave a process without rows."""
    last = num_examples % batch_size
    if 0 < last < num_processes:
        raise UserError(
            f"the last batch of each epoch holds {last} of {num_examples} examples, fewer than the "
            f"{num_processes} processes; choose a train.batch_size that leaves at least {num_processes} "
            "(or none) over"
        )


def process_rows(size: int, accelerator: Accelerator) -> slice:
    """This process's contiguous block of a global batch of `size` rows."""
    # Balanced like torch.tensor_split: a smaller last batch still gives every process a row.
    rank, count = accelerator.process_index, accelerator.num_processes
    return slice(rank * size // count, (rank + 1) * size // count)


def process_batch(batch: Batch, accelerator: Accelerator) -> Batch:
    """This process's rows of a global batch."""
    rows = process_rows(batch.input_ids.shape[0], accelerator)
    mask = None if batch.attention_mask is None else batch.attention_mask[rows]
    replayed = None if batch.replayed is None else batch.replayed[rows]
    return Batch(batch.input_ids[rows], batch.labels[rows], mask, batch.new_sequence, replayed)


def gather_state(state: Any) -> Any:
    """The carried state of the whole global batch from each process's rows (every process calls it)."""
    # Carried tensors are (layers, B, H), like torch's LSTM state. Blocks may differ in size
    # (a smaller last batch), so they travel as objects rather than through all_gather.
    return _map_tensors(state, lambda t: torch.cat(gather_object([t.cpu()]), dim=1))


def scatter_state(state: Any, accelerator: Accelerator) -> Any:
    """This process's rows of a global batch's carried state, on its device."""
    return _map_tensors(state, lambda t: t[:, process_rows(t.shape[1], accelerator)].to(accelerator.device))


def shared_run_dir(run_dir: Path, accelerator: Accelerator) -> Path:
    """The main process's run dir, for every process.

    Each process resolves Hydra's timestamped default run dir on its own clock, so two may
    disagree by a second; the others' empty dir is removed.
    """
    shared = [str(run_dir)]
    broadcast_object_list(shared, from_process=0)
    if Path(shared[0]) != run_dir and not any(run_dir.iterdir()):
        run_dir.rmdir()
    return Path(shared[0])


def _map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value
