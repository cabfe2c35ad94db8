"""Training throughput (tokens/s) of halluc's models against the classic reference code.

Two comparisons, each run side by side in this one process on the same tokens:

- lstm: PyTorch's word-language-model example (embedding -> dropout -> one stacked seq-first
  nn.LSTM -> dropout -> linear decoder; repackaged hidden state; clip 0.25 and the manual
  update `p.data.add_(p.grad, alpha=-lr)`; batch 20, bptt 35) against halluc's
  `LSTMLanguageModel` trained by halluc's `Trainer` (SGD, clip 0.25, fp32 on the CPU).
  Tokens: WikiText-2 (`../shared/data/wikitext-2/train.txt`, word level, ~33k words) when
  present, else a random stream over a 33,278-word vocabulary.
- transformer: a compact nanoGPT (model.py's GPT as train.py builds it: fused qkv,
  scaled_dot_product_attention, exact GELU MLP, LayerNorm, no biases, tied head, dropout 0;
  train.py's loop: memmapped random batches, AdamW, clip 1.0) at its small CPU shape
  (4 layers, 4 heads, 128 dims, block 64, batch 12) against halluc's
  `TransformerLanguageModel` (a Hugging Face GPT-2 of that shape) trained by the `Trainer`.
  Tokens: the characters of tiny Shakespeare (vocabulary 65) when present, else random.

Each pair is timed in alternating rounds (A B, B A, A B, ...) after untimed warmup steps, so
drift falls on both sides alike. On a shared machine, a round pair during which other
processes took more than --max-other-load of the CPUs (read from /proc/stat) is run again;
the table's caption says how busy the machine was. Expect a few percent of run-to-run
spread in the ratio even so: compare ratios over --steps long enough to shrink it.

Usage:
    python scripts/bench_pretrain.py                       # everything, ~2-3 minutes on 2 cores
    python scripts/bench_pretrain.py --only lstm --shape 650 --steps 30
    python scripts/bench_pretrain.py --only transformer --profile   # where a step's time goes
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from halluc_cli.config import DeviceConfig, TokenizerConfig, TrainConfig, TransformerConfig  # noqa: E402
from halluc_cli.data.tokenizer import encode_lines, train_tokenizer  # noqa: E402
from halluc_cli.models.lstm import LSTMLanguageModel  # noqa: E402
from halluc_cli.models.transformer import TransformerLanguageModel  # noqa: E402
from halluc_cli.training.batches import TokenStream  # noqa: E402
from halluc_cli.training.device import build_accelerator  # noqa: E402
from halluc_cli.training.loop import Trainer  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data from the checkout
WIKITEXT_VOCAB = 33_278  # the word LM example's WikiText-2 vocabulary, for the random fallback
SYNTHETIC_TOKENS = 2_000_000  # about WikiText-2's training words
CHAR_VOCAB = 65  # tiny Shakespeare's characters, for the random fallback

# The word LM example's settings per shape (its README: 200 is the default, 650 the "medium"
# model with dropout 0.5), and measured steps per side when --steps is not given.
LSTM_SHAPES = {200: dict(dropout=0.2, steps=32), 650: dict(dropout=0.5, steps=16)}
LSTM_BATCH, LSTM_BPTT, LSTM_LR, LSTM_CLIP = 20, 35, 20.0, 0.25
# nanoGPT's CPU example: train_shakespeare_char with --block_size=64 --batch_size=12
# --n_layer=4 --n_head=4 --n_embd=128 --dropout=0.0 (and its AdamW settings).
GPT_LAYERS, GPT_HEADS, GPT_DIM, GPT_BLOCK, GPT_BATCH = 4, 4, 128, 64, 12
GPT_LR, GPT_WEIGHT_DECAY, GPT_BETAS, GPT_CLIP, GPT_WARMUP = 1e-3, 0.1, (0.9, 0.99), 1.0, 100
GPT_STEPS = 240

console = Console(width=max(Console().width, 110))  # the table stays readable in a log


# --------------------------------------------------------------------------- timing


@dataclass
class Side:
    """One implementation under test: `step()` trains one step and returns its token count."""

    label: str
    step: Callable[[], int]
    seconds: list[float] = field(default_factory=list)  # per timed round
    tokens: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)

    def run(self, steps: int) -> tuple[int, float]:
        started = time.perf_counter()
        tokens = sum(self.step() for _ in range(steps))
        return tokens, time.perf_counter() - started

    @property
    def tokens_per_s(self) -> float:
        return sum(self.tokens) / sum(self.seconds)

    @property
    def round_rates(self) -> list[float]:
        return [t / s for t, s in zip(self.tokens, self.seconds)]


@dataclass
class Timing:
    """How a comparison's timed rounds went on a possibly shared machine."""

    other_load: float | None = None  # share of all CPUs other processes took in the kept rounds
    discarded: int = 0  # round pairs re-run because other processes were busy


def compare(reference: Side, ours: Side, steps: int, warmup: int, rounds: int, max_other_load: float) -> Timing:
    """Time both sides for `steps` steps each, in `rounds` alternating rounds after warmup.

    A round pair (one round of each side, back to back) during which other processes took
    more than `max_other_load` of the CPUs is thrown away and run again, at most `rounds`
    times in all: two busy threads of another program can halve a 2-core machine's speed,
    unevenly between the sides.
    """
    for side in (reference, ours):
        side.run(warmup)  # allocator, oneDNN primitive caches, lazy init: not timed
    rounds = max(1, min(rounds, steps))
    sizes = [steps // rounds + (i < steps % rounds) for i in range(rounds)]
    timing, loads, index = Timing(), [], 0
    while index < len(sizes):
        before = _cpu_ticks()
        # A B, B A, A B...: each side goes first in half the rounds.
        pair = [(side, *side.run(sizes[index])) for side in ((reference, ours) if index % 2 == 0 else (ours, reference))]
        load = _other_load(before, _cpu_ticks())
        if load is not None and load > max_other_load and timing.discarded < rounds:
            timing.discarded += 1
            time.sleep(1.0)  # let a burst of other work pass
            continue
        for side, tokens, seconds in pair:
            side.tokens.append(tokens)
            side.seconds.append(seconds)
            side.steps.append(sizes[index])
        loads.append(load)
        index += 1
    if None not in loads:
        timing.other_load = statistics.mean(loads)
    return timing


def _other_load(before: tuple[int, int, float] | None, after: tuple[int, int, float] | None) -> float | None:
    """The share of all CPU time between two `_cpu_ticks()` that other processes used."""
    if before is None or after is None:
        return None
    (total0, busy0, own0), (total1, busy1, own1) = before, after
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(1, total1 - total0)


def _cpu_ticks() -> tuple[int, int, float] | None:
    """(all CPU ticks, busy ticks) from /proc/stat, and this process's own CPU ticks."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    own = os.times()
    total, idle = sum(fields), fields[3] + fields[4]  # idle + iowait
    return total, total - idle, (own.user + own.system) * os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- LSTM: the word LM example


class WordLMExampleModel(nn.Module):
    """The RNNModel of PyTorch's examples/word_language_model/model.py, LSTM branch."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float) -> None:
        super().__init__()
        self.ntoken, self.nhid, self.nlayers = ntoken, nhid, nlayers
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)  # seq-first, one stacked module
        self.decoder = nn.Linear(nhid, ntoken)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, input: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]):
        emb = self.drop(self.encoder(input))  # (T, B, E)
        output, hidden = self.rnn(emb, hidden)  # (T, B, H)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)  # (T*B, V)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz: int) -> tuple[torch.Tensor, torch.Tensor]:
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))


def word_lm_example_side(tokens: np.ndarray, vocab: int, hidden: int, dropout: float) -> Side:
    """The example's main.py train(): batchify, get_batch, repackage_hidden, clip, manual SGD."""
    model = WordLMExampleModel(vocab, hidden, hidden, 2, dropout)
    model.train()
    criterion = nn.NLLLoss()
    data = torch.from_numpy(tokens.astype(np.int64))
    nbatch = data.size(0) // LSTM_BATCH
    train_data = data[: nbatch * LSTM_BATCH].view(LSTM_BATCH, -1).t().contiguous()  # batchify: (N, B)
    state = {"i": 0, "hidden": model.init_hidden(LSTM_BATCH)}

    def step() -> int:
        i = state["i"]
        if i + LSTM_BPTT + 1 > train_data.size(0):  # a new epoch
            i, state["hidden"] = 0, model.init_hidden(LSTM_BATCH)
        data, targets = train_data[i : i + LSTM_BPTT], train_data[i + 1 : i + 1 + LSTM_BPTT].reshape(-1)
        model.zero_grad()
        hidden = tuple(h.detach() for h in state["hidden"])  # repackage_hidden
        output, state["hidden"] = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), LSTM_CLIP)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-LSTM_LR)
        loss.item()  # main.py adds it to total_loss every batch
        state["i"] = i + LSTM_BPTT
        return data.numel()

    return Side("word LM example", step)


def halluc_side(model, stream: TokenStream, train_cfg: TrainConfig, run_dir: Path, label: str) -> Side:
    """halluc's `Trainer` on the CPU in fp32, stepped as `fit` steps it (no evaluation, no saving)."""
    accelerator = build_accelerator(DeviceConfig(name="cpu", precision="fp32"))
    trainer = Trainer(model, None, train_cfg, accelerator, run_dir, stream, stream)

    def step() -> int:
        _, tokens = trainer._train_step()
        trainer.step += 1
        return tokens

    return Side(label, step)


def wikitext_tokens(data_dir: Path) -> tuple[np.ndarray, int, str]:
    """WikiText-2's training words as halluc tokenizes them, or a random stream when absent."""
    train = data_dir / "wikitext-2" / "train.txt"
    if train.is_file():
        lines = train.read_text(encoding="utf-8").splitlines()
        tokenizer = train_tokenizer(lines, TokenizerConfig(kind="word", vocab_size=50_000))
        tokens = encode_lines(tokenizer, lines)
        return tokens, len(tokenizer), f"WikiText-2 train ({len(tokens):,} words, vocabulary {len(tokenizer):,})"
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, WIKITEXT_VOCAB, SYNTHETIC_TOKENS, dtype=np.int32)
    return tokens, WIKITEXT_VOCAB, f"RANDOM tokens, vocabulary {WIKITEXT_VOCAB:,} ({train} is absent)"


def lstm_sides(tokens: np.ndarray, vocab: int, hidden: int, run_dir: Path) -> tuple[Side, Side]:
    dropout = LSTM_SHAPES[hidden]["dropout"]
    torch.manual_seed(0)
    reference = word_lm_example_side(tokens, vocab, hidden, dropout)
    model = LSTMLanguageModel(vocab, embedding_dim=hidden, hidden_dim=hidden, num_layers=2, dropout=dropout)
    train_cfg = TrainConfig(
        max_steps=1_000_000, batch_size=LSTM_BATCH, seq_len=LSTM_BPTT, optimizer="sgd", lr=LSTM_LR,
        momentum=0.0, weight_decay=0.0, schedule="constant", clip_grad=LSTM_CLIP, progress=False,
    )  # fmt: skip
    stream = TokenStream(tokens, LSTM_BATCH, LSTM_BPTT, ordered=True)
    return reference, halluc_side(model, stream, train_cfg, run_dir, "halluc LSTM + Trainer")


# --------------------------------------------------------------------------- Transformer: nanoGPT


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.n_head, self.n_embd, self.dropout = n_head, n_embd, dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v for all heads in one matmul
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=dropout, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, bias, dropout)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, bias, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's model.py GPT, as train.py builds it: no biases (`bias = False`), tied head."""

    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, n_embd: int, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, n_embd),
                wpe=nn.Embedding(block, n_embd),
                drop=nn.Dropout(dropout),
                h=nn.ModuleList(Block(n_embd, n_head, bias, dropout) for _ in range(n_layer)),
                ln_f=nn.LayerNorm(n_embd, bias=bias),
            )
        )
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = idx.size(1)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # As nanoGPT: decay the matrices only; fused AdamW only on CUDA, so the default on a CPU.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": GPT_WEIGHT_DECAY},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=GPT_LR, betas=GPT_BETAS)


def nanogpt_side(data: np.ndarray, vocab: int, run_dir: Path) -> Side:
    """nanoGPT's train.py loop: memmapped random-offset batch, forward, backward, clip, step, log."""
    model = NanoGPT(vocab, GPT_BLOCK, GPT_LAYERS, GPT_HEADS, GPT_DIM)
    model.train()
    optimizer = model.configure_optimizers()
    ctx = nullcontext()  # train.py: no autocast on a CPU
    scaler = torch.amp.GradScaler("cpu", enabled=False)  # only enabled for float16 on CUDA
    run_dir.mkdir(parents=True, exist_ok=True)
    train_bin = run_dir / "train.bin"  # prepare.py's output: uint16 token ids
    data.astype(np.uint16).tofile(train_bin)
    state = {"iter": 0}

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        # train.py re-opens the memmap every batch (to avoid a memory leak, it says).
        mm = np.memmap(train_bin, dtype=np.uint16, mode="r")
        ix = torch.randint(len(mm) - GPT_BLOCK, (GPT_BATCH,))
        x = torch.stack([torch.from_numpy(mm[i : i + GPT_BLOCK].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(mm[i + 1 : i + 1 + GPT_BLOCK].astype(np.int64)) for i in ix])
        return x, y

    def get_lr(it: int) -> float:
        if it < GPT_WARMUP:
            return GPT_LR * (it + 1) / (GPT_WARMUP + 1)
        ratio = min(1.0, (it - GPT_WARMUP) / 5000)
        return GPT_LR / 10 + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (GPT_LR - GPT_LR / 10)

    def step() -> int:
        lr = get_lr(state["iter"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch()
        with ctx:
            _, loss = model(x, y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), GPT_CLIP)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # log_interval=1 in nanoGPT's CPU command
        state["iter"] += 1
        return x.numel()

    return Side("nanoGPT", step)


class _CharVocab:
    """What `TransformerLanguageModel.from_config` reads from a tokenizer, for a character vocabulary."""

    bos_token_id = eos_token_id = pad_token_id = None

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def shakespeare_chars(data_dir: Path) -> tuple[np.ndarray, int, str]:
    """The first 90% of tiny Shakespeare as character ids (nanoGPT's train split), or random."""
    path = data_dir / "tinyshakespeare" / "input.txt"
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        chars = sorted(set(text))
        index = {c: i for i, c in enumerate(chars)}
        ids = np.array([index[c] for c in text], dtype=np.uint16)
        return ids[: int(0.9 * len(ids))], len(chars), f"tiny Shakespeare characters (vocabulary {len(chars)})"
    ids = np.random.default_rng(0).integers(0, CHAR_VOCAB, 1_000_000, dtype=np.uint16)
    return ids, CHAR_VOCAB, f"RANDOM characters, vocabulary {CHAR_VOCAB} ({path} is absent)"


def transformer_sides(data: np.ndarray, vocab: int, run_dir: Path) -> tuple[Side, Side]:
    torch.manual_seed(0)
    reference = nanogpt_side(data, vocab, run_dir / "nanogpt")
    model_cfg = TransformerConfig(
        architecture="gpt2", hidden_dim=GPT_DIM, num_layers=GPT_LAYERS, num_heads=GPT_HEADS,
        max_positions=GPT_BLOCK, dropout=0.0, tie_weights=True,
    )  # fmt: skip
    model = TransformerLanguageModel.from_config(model_cfg, _CharVocab(vocab))
    train_cfg = TrainConfig(
        max_steps=5000, batch_size=GPT_BATCH, seq_len=GPT_BLOCK, optimizer="adamw", lr=GPT_LR,
        weight_decay=GPT_WEIGHT_DECAY, schedule="cosine", warmup_steps=GPT_WARMUP, clip_grad=GPT_CLIP,
        progress=False,
    )  # fmt: skip
    stream = TokenStream(data.astype(np.int64), GPT_BATCH, GPT_BLOCK, ordered=False)
    return reference, halluc_side(model, stream, train_cfg, run_dir, "halluc HF GPT-2 + Trainer")


# --------------------------------------------------------------------------- main


def profile(sides: tuple[Side, Side], steps: int, rows: int) -> None:
    """torch.profiler tables of both sides: the ops that take the time, self time first."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for side in sides:
        side.run(5)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            tokens, seconds = side.run(steps)
        console.rule(f"{side.label}: {steps} steps, {1000 * seconds / steps:.1f} ms/step, {tokens / seconds:,.0f} tokens/s")
        # print, not the console: the table is wider than a terminal and must not wrap
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=50))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["lstm", "transformer"], help="run one comparison only")
    parser.add_argument("--shape", type=int, nargs="+", choices=sorted(LSTM_SHAPES), default=sorted(LSTM_SHAPES),
                        help="LSTM sizes (embedding = hidden, 2 layers); default: all")  # fmt: skip
    parser.add_argument("--steps", type=int, help="timed steps per side (default: LSTM 200: 32, 650: 16; transformer: 240)")
    parser.add_argument("--warmup", type=int, help="untimed steps per side first (default: steps / 8, at least 2)")
    parser.add_argument("--rounds", type=int, default=8, help="alternating timed rounds the steps are split into")
    parser.add_argument("--max-other-load", type=float, default=0.15,
                        help="re-run a round pair when other processes took more than this share of the CPUs")  # fmt: skip
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA,
                        help=f"holds wikitext-2/train.txt and tinyshakespeare/input.txt (default: {SHARED_DATA})")  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables instead of timing")
    parser.add_argument("--profile-rows", type=int, default=25)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console.print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"transformers {__import__('transformers').__version__}",
        highlight=False,
    )
    table = Table(title="training throughput, fp32 on the CPU, side by side in alternating rounds")
    for column in ("model", "implementation", "tokens/s", "ms/step", "tokens/s per round", "ours / ref", "per round pair"):
        table.add_column(column, justify="left" if column in ("model", "implementation") else "right")
    notes: list[str] = []

    def report(title: str, reference: Side, ours: Side, timing: Timing) -> None:
        # tokens/s: all timed tokens over all timed seconds. Each round pair ran back to back,
        # so the median of the per-pair ratios shrugs off a burst of load that hit one round.
        ratio = ours.tokens_per_s / reference.tokens_per_s
        pairs = [o / r for o, r in zip(ours.round_rates, reference.round_rates)]
        for side in (reference, ours):
            rates = side.round_rates
            mine = side is ours
            table.add_row(
                title, side.label, f"{side.tokens_per_s:,.0f}", f"{1000 * sum(side.seconds) / sum(side.steps):.1f}",
                f"{min(rates):,.0f}-{max(rates):,.0f}", f"[bold]{ratio:.2f}[/bold]" if mine else "",
                f"median {statistics.median(pairs):.2f} ({min(pairs):.2f}-{max(pairs):.2f})" if mine else "",
            )  # fmt: skip
        table.add_section()
        if timing.other_load is not None:
            notes.append(
                f"{title}: other processes used {timing.other_load:.0%} of the CPUs in the kept rounds; "
                f"{timing.discarded} busy round pair(s) re-run"
            )

    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        if args.only in (None, "lstm"):
            tokens, vocab, note = wikitext_tokens(args.data_dir)
            console.print(f"LSTM data: {note}", highlight=False)
            notes.append(f"LSTM data: {note}")
            for hidden in args.shape:
                title = f"LSTM 2x{hidden}, B{LSTM_BATCH} bptt {LSTM_BPTT}"
                sides = lstm_sides(tokens, vocab, hidden, Path(tmp) / f"lstm{hidden}")
                steps = args.steps or LSTM_SHAPES[hidden]["steps"]
                if args.profile:
                    profile(sides, steps, args.profile_rows)
                    continue
                console.print(f"timing {title}: {steps} steps per side...", highlight=False)
                report(title, *sides, compare(*sides, steps, _warmup(args, steps), args.rounds, args.max_other_load))
                del sides  # the 650 pair needs the memory
        if args.only in (None, "transformer"):
            data, vocab, note = shakespeare_chars(args.data_dir)
            console.print(f"Transformer data: {note}", highlight=False)
            notes.append(f"Transformer data: {note}")
            title = f"GPT {GPT_LAYERS}L {GPT_HEADS}H {GPT_DIM}d, B{GPT_BATCH} T{GPT_BLOCK}"
            sides = transformer_sides(data, vocab, Path(tmp) / "transformer")
            steps = args.steps or GPT_STEPS
            if args.profile:
                profile(sides, steps, args.profile_rows)
            else:
                console.print(f"timing {title}: {steps} steps per side...", highlight=False)
                report(title, *sides, compare(*sides, steps, _warmup(args, steps), args.rounds, args.max_other_load))
    if not args.profile:
        table.caption = "\n".join(notes)
        console.print(table)


def _warmup(args: argparse.Namespace, steps: int) -> int:
    return args.warmup if args.warmup is not None else max(2, steps // 8)


if __name__ == "__main__":
    main()
