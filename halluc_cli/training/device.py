"""Device and precision from `conf/device/`, through `accelerate`.

`accelerate` owns device placement, autocast, the fp16 gradient scaler, `torch.compile`
(applied in `prepare`, after any DDP wrapping) and (under torchrun / accelerate launch) the
process group, so this module only turns the config into an `Accelerator`. The choices
themselves are pure functions of the config and the GPU's abilities, testable without one.
"""

from __future__ import annotations

import gc
from dataclasses import replace
from typing import TYPE_CHECKING, Iterator

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from halluc_cli.config import DeviceConfig
from halluc_cli.errors import UserError
from halluc_cli.training.batches import Batch

if TYPE_CHECKING:
    from halluc_cli.training.loop import BatchSource

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def build_accelerator(cfg: DeviceConfig) -> Accelerator:
    """An `Accelerator` for the configured device, precision and compilation."""
    on_gpu = use_gpu(cfg.name, torch.cuda.is_available())
    precision = resolve_precision(cfg.precision, on_gpu, on_gpu and _native_bf16())
    if on_gpu and cfg.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # Each command builds its own Accelerator; forget the previous one's settings (several
    # commands may run in one process: tests, or `finetune` evaluating at its end).
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # "inductor": `prepare` wraps the model in torch.compile; `unwrap_model(...,
    # keep_torch_compile=False)` gives back the module itself, whose state dict has clean keys.
    return Accelerator(
        cpu=not on_gpu, mixed_precision=precision, dynamo_backend="inductor" if cfg.compile else "no"
    )


def use_gpu(name: str, has_cuda: bool) -> bool:
    """Whether `device=<name>` runs on a CUDA GPU, given whether one is visible."""
    if name == "gpu" and not has_cuda:
        raise UserError("device=gpu but no CUDA GPU is visible; use device=cpu or device=auto")
    return has_cuda and name != "cpu"


def resolve_precision(precision: str, on_gpu: bool, native_bf16: bool) -> str:
    """`accelerate`'s mixed_precision for `device.precision`.

    auto: bf16 on a GPU that computes it natively (Ampere and newer); fp16 on an older GPU,
    with the gradient scaler `accelerate` adds for fp16 (bf16 has fp32's range and needs
    none); fp32 on the CPU, where autocast rarely pays.
    """
    if precision == "auto":
        if not on_gpu:
            return "no"
        return "bf16" if native_bf16 else "fp16"
    if precision == "fp16" and not on_gpu:
        raise UserError("device.precision=fp16 needs a GPU; on CPU use fp32 or bf16")
    return PRECISIONS[precision]


WEIGHT_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def weights_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype to load a model's weights in, for `accelerate`'s `mixed_precision`.

    Under bf16/fp16 autocast every matmul runs in the low precision anyway, so frozen weights
    stored in it lose nothing that matters, and take half the memory (a 7B model's 28 GB
    become 14). What trains is cast back to float32 after freezing (`cast_for_training`): the
    optimizer must update full-precision weights, or small updates round away.
    """
    return WEIGHT_DTYPES[mixed_precision]


def load_dtype(accelerator: Accelerator, training: bool) -> torch.dtype | str:
    """The dtype a command loads its model's weights in.

    On the CPU float32: its autocast leaves LayerNorm in its input's dtype (fp32 activations
    would meet bf16 frozen norms and fail), and its bf16 matmuls are slow anyway. On a GPU, for
    inference `weights_dtype`; for training the checkpoint's own ("auto"), so that what trains
    is not rounded to bf16 first: `cast_for_training` then stores the frozen rest in low precision.
    """
    if accelerator.device.type != "cuda":
        return torch.float32
    return "auto" if training else weights_dtype(accelerator.mixed_precision)


def release_memory(device: torch.device) -> None:
    """Give the memory of dropped tensors back (a GPU's caching allocator keeps it otherwise)."""
    gc.collect()  # a model's modules refer to each other: cycles only the collector frees
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _native_bf16() -> bool:
    # Not torch.cuda.is_bf16_supported() alone: by default it also says yes for pre-Ampere
    # GPUs that only emulate bf16, several times slower than their fp16 tensor cores.
    return torch.cuda.is_bf16_supported(including_emulation=False)


def pin_batches(source: BatchSource, device: torch.device) -> BatchSource:
    """`source` with its batches in page-locked host memory when training runs on a GPU."""
    return PinnedBatches(source) if device.type == "cuda" else source


class PinnedBatches:
    """A batch source whose batches come in page-locked (pinned) host memory.

    The loop copies batches to the GPU with non_blocking=True; from ordinary pageable memory
    that copy still makes the host wait, from pinned memory it overlaps with the GPU's work.
    """

    def __init__(self, source: BatchSource) -> None:
        self.source = source

    def next_batch(self) -> Batch:
        """The source's next training batch, pinned."""
        return _pinned(self.source.next_batch())

    def one_pass(self, max_batches: int | None = None) -> Iterator[Batch]:
        """The source's evaluation pass, pinned."""
        return (_pinned(batch) for batch in self.source.one_pass(max_batches))

    def state_dict(self) -> dict[str, int]:
        """The source's position (pinning changes nothing a checkpoint needs)."""
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the source from a saved position."""
        self.source.load_state_dict(state)


def _pinned(batch: Batch) -> Batch:
    mask = batch.attention_mask
    return replace(
        batch,
        input_ids=batch.input_ids.pin_memory(),
        labels=batch.labels.pin_memory(),
        attention_mask=None if mask is None else mask.pin_memory(),
    )
