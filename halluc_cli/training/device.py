"""Device and precision from `conf/device/`, through `accelerate`.

`accelerate` owns device placement, autocast and (under torchrun / accelerate launch) the
process group, so this module only turns the config into an `Accelerator`.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from halluc_cli.config import DeviceConfig
from halluc_cli.errors import UserError

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def build_accelerator(cfg: DeviceConfig) -> Accelerator:
    """An `Accelerator` for the configured device and precision."""
    if cfg.name not in ("auto", "cpu", "gpu"):
        raise UserError(f"unknown device {cfg.name!r}; choose device=auto, device=cpu or device=gpu")
    has_cuda = torch.cuda.is_available()
    if cfg.name == "gpu" and not has_cuda:
        raise UserError("device=gpu but no CUDA GPU is visible; use device=cpu or device=auto")
    on_gpu = has_cuda and cfg.name != "cpu"
    precision = _resolve_precision(cfg.precision, on_gpu)
    if on_gpu and cfg.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # Each command builds its own Accelerator; forget the previous one's settings (several
    # commands may run in one process: tests, or `finetune` evaluating at its end).
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(cpu=not on_gpu, mixed_precision=precision)


def _resolve_precision(precision: str, on_gpu: bool) -> str:
    if precision == "auto":
        return "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"
    if precision not in PRECISIONS:
        raise UserError(f"unknown device.precision {precision!r}; choose one of auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and not on_gpu:
        raise UserError("device.precision=fp16 needs a GPU; on CPU use fp32 or bf16")
    return PRECISIONS[precision]
