"""Training throughput (tokens/s) and model FLOPs utilization (MFU) of halluc's models on a GPU.

Two models at their classic shapes, built by halluc's `build_model` and stepped by halluc's
`Trainer` (forward under autocast, loss, backward, clip, optimizer step: what `pretrain` runs),
in every asked combination of precision (fp32 with TF32 matmuls, bf16 autocast) and
`device.compile` (torch.compile through accelerate):

- transformer: GPT-2 small (12 layers, 12 heads, 768 dims, tied head, vocabulary 50,257),
  sequences of 1,024 tokens, batch 12 (nanoGPT's micro-batch), AdamW (fused), clip 1.0.
- lstm: the word LM example's medium LSTM (650x2, dropout 0.5, vocabulary 33,278 as
  WikiText-2's), bptt 35, batch 20, SGD, clip 0.25, hidden state carried across batches.

The reference, measured nowhere but known per GPU, is its peak dense bf16 FLOP/s (PEAK_TFLOPS
by the device's name, or --peak-tflops); MFU = the model FLOP/s achieved / that peak, for
every row alike (fp32 rows too, so the rows compare). Model FLOPs per token (PaLM, appendix B;
nanoGPT's estimate_mfu): 6 N for the N weights that multiply (embedding lookups are not
counted, a tied output layer is counted once), plus 12 L d T for the attention scores and
their weighted sum (L layers, d dims, T tokens per sequence; counted in full though causal
attention needs half). Recomputation and optimizer FLOPs are not model FLOPs.

Tokens are random: throughput does not depend on them. Each configuration runs untimed
warmup steps first (compilation happens there), then its timed steps; a step ends with the
loss on the host (`loss.item()`), so the GPU has finished it when the clock reads.

Usage:
    python scripts/bench_gpu.py                          # both models, fp32/bf16 x compile off/on
    python scripts/bench_gpu.py --only transformer --precision bf16 --compile on --batch 16
    python scripts/bench_gpu.py --device cpu --tiny      # a smoke run of the same code, seconds
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from halluc_cli.config import DeviceConfig, LSTMConfig, TrainConfig, TransformerConfig  # noqa: E402
from halluc_cli.models import LanguageModel, build_model  # noqa: E402
from halluc_cli.training.batches import TokenStream  # noqa: E402
from halluc_cli.training.device import build_accelerator  # noqa: E402
from halluc_cli.training.loop import Trainer  # noqa: E402

# Peak dense (no sparsity) bf16 tensor-core TFLOP/s from NVIDIA's datasheets, by a pattern of
# torch.cuda.get_device_name(); first match wins, so the specific names come first. GPUs
# without bf16 (V100, T4) list their fp16 peak.
PEAK_TFLOPS = [
    (r"H100 NVL", 835.5),
    (r"H100 PCIe", 756.5),
    (r"GH200|H100|H200", 989.4),  # SXM ("NVIDIA H100 80GB HBM3"), H200, Grace Hopper
    (r"B200", 2250.0),
    (r"A100", 312.0),
    (r"L40S", 362.1),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
    (r"V100", 125.0),
    (r"\bT4\b", 65.0),
]


@dataclass(frozen=True)
class Shape:
    """One benchmarked model: its config, vocabulary, batch and training settings."""

    title: str
    model: LSTMConfig | TransformerConfig
    vocab: int
    batch: int
    seq_len: int
    train: TrainConfig
    steps: int  # timed steps (default)
    warmup: int  # untimed steps first (default); compilation happens in them


def shapes(tiny: bool) -> dict[str, Shape]:
    """The two models at full size, or at a tiny size that runs in seconds on a CPU."""
    adamw = dict(optimizer="adamw", lr=6e-4, weight_decay=0.1, clip_grad=1.0, schedule="constant", progress=False)
    sgd = dict(optimizer="sgd", lr=20.0, clip_grad=0.25, schedule="constant", progress=False)
    if tiny:
        gpt = TransformerConfig(hidden_dim=64, num_layers=2, num_heads=4, max_positions=32, tie_weights=True)
        lstm = LSTMConfig(hidden_dim=32, num_layers=2, dropout=0.5)
        return {
            "transformer": Shape("GPT 2L 64d T32 (tiny)", gpt, 1000, 4, 32, TrainConfig(**adamw), 3, 1),
            "lstm": Shape("LSTM 2x32 bptt 8 (tiny)", lstm, 1000, 4, 8, TrainConfig(**sgd), 3, 1),
        }
    gpt = TransformerConfig(hidden_dim=768, num_layers=12, num_heads=12, max_positions=1024, tie_weights=True)
    lstm = LSTMConfig(hidden_dim=650, num_layers=2, dropout=0.5)
    return {
        "transformer": Shape("GPT-2 small, B12 T1024", gpt, 50_257, 12, 1024, TrainConfig(**adamw), 20, 5),
        "lstm": Shape("LSTM 2x650, B20 bptt 35", lstm, 33_278, 20, 35, TrainConfig(**sgd), 100, 10),
    }


class _Vocab:
    """What `build_model` reads from a tokenizer: its size and special token ids."""

    bos_token_id = eos_token_id = pad_token_id = None

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


# --------------------------------------------------------------------------- FLOPs


def matmul_parameters(model: LanguageModel) -> int:
    """Weights that multiply activations: all but embedding tables that are only looked up.

    A token embedding tied to the output layer multiplies there and counts (once, as
    `parameters()` yields a shared tensor once); position embeddings never do.
    """
    head = model.output_head().weight
    lookups = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding) and m.weight is not head)
    return sum(p.numel() for p in model.parameters()) - lookups


def flops_per_token(model: LanguageModel, seq_len: int) -> int:
    """Model FLOPs to train on one token: forward and backward of the weights, plus attention."""
    flops = 6 * matmul_parameters(model)
    config = getattr(getattr(model, "hf", None), "config", None)
    if config is not None:  # a Transformer: attention over the sequence, 12 L d T per token
        flops += 12 * config.num_hidden_layers * config.hidden_size * seq_len
    return flops


def peak_tflops(device_name: str) -> float | None:
    """The GPU's peak dense bf16 TFLOP/s from PEAK_TFLOPS, or None for an unknown device."""
    for pattern, tflops in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


# --------------------------------------------------------------------------- timing


@dataclass
class Result:
    """One configuration's timed steps."""

    title: str
    precision: str
    compiled: bool
    tokens_per_s: float
    ms_per_step: float
    model_tflops: float  # achieved model TFLOP/s


def run_one(shape: Shape, device: str, precision: str, compiled: bool, steps: int, warmup: int, run_dir: Path) -> Result:
    """Train `shape` for `warmup` untimed and `steps` timed steps; its throughput."""
    torch.manual_seed(0)
    model = build_model(OmegaConf.structured(shape.model), _Vocab(shape.vocab))
    accelerator = build_accelerator(DeviceConfig(name=device, precision=precision, compile=compiled))
    tokens = np.random.default_rng(0).integers(0, shape.vocab, shape.batch * shape.seq_len * 64 + 1)
    stream = TokenStream(tokens, shape.batch, shape.seq_len, ordered=model.recurrent)
    trainer = Trainer(model, None, shape.train, accelerator, run_dir, stream, stream)
    per_token = flops_per_token(model, shape.seq_len)
    for _ in range(warmup):
        trainer._train_step()
    _synchronize(accelerator.device)
    started, tokens_seen = time.perf_counter(), 0
    for _ in range(steps):
        tokens_seen += trainer._train_step()[1]
    _synchronize(accelerator.device)
    seconds = time.perf_counter() - started
    rate = tokens_seen / seconds
    return Result(shape.title, precision, compiled, rate, 1000 * seconds / steps, rate * per_token / 1e12)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release() -> None:
    """Free the last configuration's memory and compiled graphs before the next one."""
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["transformer", "lstm"], help="benchmark one model only")
    parser.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=None,
                        help="default: fp32 bf16 on a GPU, fp32 on the CPU")  # fmt: skip
    parser.add_argument("--compile", nargs="+", choices=["off", "on"], default=None,
                        help="torch.compile (device.compile); default: off on on a GPU, off on the CPU")  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and few steps: a smoke run")
    parser.add_argument("--steps", type=int, help="timed steps per configuration (default: per model)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: per model)")
    parser.add_argument("--batch", type=int, help="batch size (default: per model)")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak dense bf16 TFLOP/s, for a GPU missing from PEAK_TFLOPS (or the CPU)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Result]:
    """Run the asked configurations, print the table, and return its rows."""
    args = parse_args(argv)
    on_gpu = args.device == "gpu"
    if on_gpu and not torch.cuda.is_available():
        sys.exit("no CUDA GPU is visible; run with --device cpu --tiny for a smoke run")
    device_name = torch.cuda.get_device_name() if on_gpu and torch.cuda.is_available() else "CPU"
    peak = args.peak_tflops or (peak_tflops(device_name) if on_gpu else None)
    precisions = args.precision or (["fp32", "bf16"] if on_gpu else ["fp32"])
    compiles = [mode == "on" for mode in (args.compile or (["off", "on"] if on_gpu else ["off"]))]
    console = Console(width=max(Console().width, 110))
    console.print(f"{device_name}, torch {torch.__version__}, peak bf16 {peak or 'unknown'} TFLOP/s", highlight=False)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        for name, shape in shapes(args.tiny).items():
            if args.only not in (None, name):
                continue
            if args.batch:
                shape = replace(shape, batch=args.batch)
            for precision in precisions:
                for compiled in compiles:
                    console.print(f"{shape.title}: {precision}, compile {'on' if compiled else 'off'}...", highlight=False)
                    steps, warmup = args.steps or shape.steps, args.warmup if args.warmup is not None else shape.warmup
                    results.append(run_one(shape, args.device, precision, compiled, steps, warmup, Path(tmp)))
                    _release()
    console.print(_table(results, device_name, peak))
    return results


def _table(results: list[Result], device_name: str, peak: float | None) -> Table:
    table = Table(title=f"training throughput and MFU on {device_name}")
    for column in ("model", "precision", "compile", "tokens/s", "ms/step", "model TFLOP/s", "MFU"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in results:
        mfu = f"[bold]{r.model_tflops / peak:.1%}[/bold]" if peak else "n/a"
        table.add_row(
            r.title, r.precision, "on" if r.compiled else "off", f"{r.tokens_per_s:,.0f}", f"{r.ms_per_step:.1f}",
            f"{r.model_tflops:.2f}", mfu,
        )  # fmt: skip
    table.caption = (
        f"MFU: model FLOP/s / peak dense bf16 {peak} TFLOP/s (6N + 12LdT per token)"
        if peak
        else "MFU: n/a, the peak of this device is unknown: give --peak-tflops"
    )
    return table


if __name__ == "__main__":
    main()
