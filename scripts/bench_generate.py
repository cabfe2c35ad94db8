"""Speed (generated tokens/s) of halluc's batched greedy `Decoder` against `transformers`' `generate`.

Everything is built and timed in this one process, from a fixed seed, untrained:

- gpt2: a 4-layer, 4-head, 128-dim GPT-2 (`TransformerLanguageModel`, Hugging Face GPT-2
  inside, word vocabulary of --gpt2-vocab) decoded three ways on the same left-padded
  prompts:
    generate  `model.hf.generate` greedy (do_sample=False, num_beams=1), max_new_tokens =
              min_new_tokens = N so it never stops early, pad_token_id set, attention_mask
              given; its own KV cache.
    naive     a loop that re-runs the whole sequence at every step (no cache), argmax.
    halluc    our `Decoder` (decoding=greedy) through `generate_ids`, which also decodes the
              continuations to text.
- lstm: a 2x200 `LSTMLanguageModel` (the classic word LM's small shape; vocabulary
  --lstm-vocab, by default WikiText-2's 33,278 words, several sizes allowed): our `Decoder`;
  as the reference a plain loop over the same modules, as PyTorch's word LM example's
  generate.py decodes (embedding -> each nn.LSTM layer -> decoder -> argmax, the state
  carried; no masks, no packing, no text); and as a bound the decoder layer (200 x
  vocabulary) and argmax alone on a fixed hidden state: no decoder of this model can beat
  it, as every token needs that product.

So that no side stops early, the `Decoder` is built as usual and its stop set emptied
afterwards (`decoder.stop_ids = torch.empty(0, dtype=torch.long)`): it then always makes N
tokens, as `generate` with min_new_tokens does. That is the only change to it.

Each batch size (1 and 32) is timed in --repeats rounds; in every round each side decodes
once, and the order of the sides rotates from round to round (A B C, B C A, ...) so drift on
a busy machine falls on all sides alike. The figures are medians over the rounds, and the
ratios are against `generate` (gpt2) or the plain loop (lstm) measured in the same run.
On a machine that other jobs share, --threads 1 gives steadier figures: two threads each in
two busy processes on two cores spend much of their time waiting on each other.

Usage:
    python scripts/bench_generate.py                       # both models, ~1-2 minutes on 2 cores
    python scripts/bench_generate.py --only lstm --repeats 9
    python scripts/bench_generate.py --only gpt2 --profile # where our decoder's time goes
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from halluc_cli.config import DecodingConfig, LSTMConfig, TokenizerConfig, TransformerConfig  # noqa: E402
from halluc_cli.data.tokenizer import train_tokenizer  # noqa: E402
from halluc_cli.decoding import Decoder, _left_pad  # noqa: E402
from halluc_cli.models import LanguageModel  # noqa: E402
from halluc_cli.models.lstm import LSTMLanguageModel  # noqa: E402
from halluc_cli.models.transformer import TransformerLanguageModel  # noqa: E402

GPT_LAYERS, GPT_HEADS, GPT_DIM = 4, 4, 128
LSTM_LAYERS, LSTM_DIM = 2, 200
WIKITEXT_VOCAB = 33_278  # the classic word LM's WikiText-2 vocabulary
BATCHES = (1, 32)
PROMPT_LENGTHS = (4, 16)  # each prompt's length is drawn from this range: left padding at batch 32
LSTM_TARGET = 20_000  # the requirement: the 2x200 LSTM decodes above this many tokens/s at batch 32

console = Console(width=max(Console().width, 110))  # the table stays readable in a log


@dataclass
class Side:
    """One way to decode a batch: `run()` decodes it once and returns the tokens generated."""

    label: str
    run: Callable[[], int]
    rates: list[float] = field(default_factory=list)  # tokens/s, one per round

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def time_rounds(sides: list[Side], repeats: int) -> None:
    """One untimed warmup each, then `repeats` rounds with the sides' order rotating."""
    for side in sides:
        side.run()  # lazy init, allocator, oneDNN primitive caches: not timed
    for round_index in range(repeats):
        shift = round_index % len(sides)
        for side in sides[shift:] + sides[:shift]:
            started = time.perf_counter()
            tokens = side.run()
            side.rates.append(tokens / (time.perf_counter() - started))


# --------------------------------------------------------------------------- set-up


def word_tokenizer(vocab: int):
    """A word tokenizer with exactly `vocab` entries (<unk>, <eos>, <pad> and words w0, w1...)."""
    tokenizer = train_tokenizer([" ".join(f"w{i}" for i in range(vocab - 3))], TokenizerConfig(kind="word"))
    assert len(tokenizer) == vocab, len(tokenizer)
    return tokenizer


def random_prompts(tokenizer, batch: int, seed: int) -> list[list[int]]:
    """`batch` prompts of random words (never a special token), of random lengths."""
    generator = torch.Generator().manual_seed(seed)
    low = max(tokenizer.all_special_ids) + 1
    prompts = []
    for _ in range(batch):
        length = int(torch.randint(PROMPT_LENGTHS[0], PROMPT_LENGTHS[1] + 1, (1,), generator=generator))
        prompts.append(torch.randint(low, len(tokenizer), (length,), generator=generator).tolist())
    return prompts


def our_decoder(model: LanguageModel, tokenizer, new_tokens: int, batch: int) -> Decoder:
    decoder = Decoder(model, tokenizer, DecodingConfig(max_new_tokens=new_tokens, batch_size=batch))
    decoder.stop_ids = torch.empty(0, dtype=torch.long)  # never stop early (see the module docstring)
    return decoder


# --------------------------------------------------------------------------- the sides


def generate_side(model: TransformerLanguageModel, tokenizer, prompts: list[list[int]], new_tokens: int) -> Side:
    input_ids, mask = _left_pad(prompts, tokenizer.pad_token_id, torch.device("cpu"))

    @torch.inference_mode()
    def run() -> int:
        output = model.hf.generate(
            input_ids=input_ids, attention_mask=mask, do_sample=False, num_beams=1,
            max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        generated = output.shape[1] - input_ids.shape[1]
        assert generated == new_tokens, generated
        return output.shape[0] * generated

    return Side("transformers generate", run)


def naive_side(model: LanguageModel, tokenizer, prompts: list[list[int]], new_tokens: int) -> Side:
    """Greedy without a cache: the whole (left-padded) sequence through the model at every step."""
    input_ids, mask = _left_pad(prompts, tokenizer.pad_token_id, torch.device("cpu"))

    @torch.inference_mode()
    def run() -> int:
        ids, attention = input_ids, mask
        for _ in range(new_tokens):
            logits, _ = model(ids, None, attention)
            token = logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, token], dim=1)
            attention = torch.cat([attention, torch.ones_like(token)], dim=1)
        return ids.shape[0] * new_tokens

    return Side("naive loop (no cache)", run)


def halluc_side(model: LanguageModel, tokenizer, prompts: list[list[int]], new_tokens: int) -> Side:
    decoder = our_decoder(model, tokenizer, new_tokens, len(prompts))

    def run() -> int:
        decoder.generate_ids(prompts)
        return len(prompts) * new_tokens

    return Side("halluc Decoder", run)


def lstm_plain_loop_side(model: LSTMLanguageModel, prompts: list[list[int]], new_tokens: int) -> Side:
    """The LSTM's modules called by hand, one token a step, as the word LM example generates.

    The prompts are run unpadded one by one (no packing), then decoded together.
    """
    layers, embedding, head = list(model.layers), model.embedding, model.decoder

    @torch.inference_mode()
    def run() -> int:
        states, last = [], []
        for row in prompts:  # the prompts, one by one: their own lengths, no padding
            x, row_state = embedding(torch.tensor([row])), []
            for layer in layers:
                x, layer_state = layer(x)
                row_state.append(layer_state)
            states.append(row_state)
            last.append(x[:, -1])
        state = [tuple(torch.cat([s[i][j] for s in states], dim=1) for j in range(2)) for i in range(len(layers))]
        token = head(torch.cat(last)).argmax(-1)  # one product for the batch, as at every step
        out = [token]
        for _ in range(new_tokens - 1):
            x = embedding(token[:, None])
            new_state = []
            for layer, layer_state in zip(layers, state):
                x, layer_state = layer(x, layer_state)
                new_state.append(layer_state)
            state = new_state
            token = head(x[:, -1]).argmax(-1)
            out.append(token)
        torch.stack(out, dim=1).tolist()
        return len(prompts) * new_tokens

    return Side("plain loop over nn.LSTM", run)


def lstm_head_bound_side(model: LSTMLanguageModel, batch: int, new_tokens: int) -> Side:
    """Only the decoder layer and argmax of every step: the part no LSTM decoder avoids."""
    hidden = torch.randn(batch, model.decoder.in_features, generator=torch.Generator().manual_seed(0))

    @torch.inference_mode()
    def run() -> int:
        for _ in range(new_tokens):
            model.decoder(hidden).argmax(-1)
        return batch * new_tokens

    return Side("bound: decoder layer + argmax", run)


# --------------------------------------------------------------------------- models


def gpt2_model(vocab: int, new_tokens: int):
    tokenizer = word_tokenizer(vocab)
    cfg = TransformerConfig(
        architecture="gpt2", hidden_dim=GPT_DIM, num_layers=GPT_LAYERS, num_heads=GPT_HEADS,
        max_positions=PROMPT_LENGTHS[1] + new_tokens, dropout=0.0, tie_weights=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return TransformerLanguageModel.from_config(cfg, tokenizer).eval(), tokenizer


def lstm_model(vocab: int):
    tokenizer = word_tokenizer(vocab)
    torch.manual_seed(0)
    cfg = LSTMConfig(hidden_dim=LSTM_DIM, num_layers=LSTM_LAYERS, dropout=0.0)
    return LSTMLanguageModel.from_config(cfg, tokenizer).eval(), tokenizer


def same_tokens(model, tokenizer, prompts, new_tokens: int) -> str:
    """Whether our decoder's text equals `generate`'s at this batch (rows that agree / rows)."""
    ours = [c.text for c in our_decoder(model, tokenizer, new_tokens, len(prompts)).generate_ids(prompts)]
    input_ids, mask = _left_pad(prompts, tokenizer.pad_token_id, torch.device("cpu"))
    with torch.inference_mode():
        output = model.hf.generate(
            input_ids=input_ids, attention_mask=mask, do_sample=False, num_beams=1,
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    theirs = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in output[:, input_ids.shape[1] :].tolist()]
    return f"{sum(a == b for a, b in zip(ours, theirs))}/{len(prompts)}"


# --------------------------------------------------------------------------- report


def profile_decoder(model, tokenizer, prompts, new_tokens: int, label: str) -> None:
    decoder = our_decoder(model, tokenizer, new_tokens, len(prompts))
    decoder.generate_ids(prompts)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(3):
        decoder.generate_ids(prompts)
    profiler.disable()
    console.rule(f"profile: halluc Decoder, {label}, batch {len(prompts)} (3 runs, cumulative time)")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per batch size")
    parser.add_argument("--only", choices=["gpt2", "lstm"], help="one model only")
    parser.add_argument("--gpt2-vocab", type=int, default=8_000)
    parser.add_argument("--lstm-vocab", type=int, nargs="+", default=[WIKITEXT_VOCAB], help="one or more sizes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--profile", action="store_true", help="also profile our decoder (cProfile)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.new_tokens

    table = Table(title=f"Greedy decoding, {n} new tokens per prompt, median of {args.repeats} rounds")
    for column in ("model", "batch", "side", "tokens/s", "vs reference", "rounds: min-max"):
        table.add_column(column, justify="left" if column in ("model", "side") else "right")
    notes = [f"torch {torch.__version__}, {torch.get_num_threads()} threads"]

    if args.only in (None, "gpt2"):
        model, tokenizer = gpt2_model(args.gpt2_vocab, n)
        label = f"GPT-2 {GPT_LAYERS}x{GPT_DIM}, {GPT_HEADS} heads, vocab {len(tokenizer):,}"
        for batch in BATCHES:
            prompts = random_prompts(tokenizer, batch, seed=batch)
            sides = [
                generate_side(model, tokenizer, prompts, n),
                naive_side(model, tokenizer, prompts, n),
                halluc_side(model, tokenizer, prompts, n),
            ]
            time_rounds(sides, args.repeats)
            add_rows(table, label, batch, sides)
            notes.append(f"GPT-2, batch {batch}: our text equals generate's in {same_tokens(model, tokenizer, prompts, n)} rows")
            if args.profile:
                profile_decoder(model, tokenizer, prompts, n, label)

    for vocab in args.lstm_vocab if args.only in (None, "lstm") else []:
        model, tokenizer = lstm_model(vocab)
        label = f"LSTM {LSTM_LAYERS}x{LSTM_DIM}, vocab {len(tokenizer):,}"
        for batch in BATCHES:
            prompts = random_prompts(tokenizer, batch, seed=batch)
            sides = [
                lstm_plain_loop_side(model, prompts, n),
                halluc_side(model, tokenizer, prompts, n),
                lstm_head_bound_side(model, batch, n),
            ]
            time_rounds(sides, args.repeats)
            add_rows(table, label, batch, sides)
            if args.profile:
                profile_decoder(model, tokenizer, prompts, n, label)
        notes.append(lstm_note(model, sides))

    console.print(table)
    for note in notes:
        console.print(note)


def lstm_note(model: LSTMLanguageModel, sides: list[Side]) -> str:
    """The largest batch's figure against the target, and what the decoder layer's arithmetic asks for it."""
    vocab, hidden = model.decoder.out_features, model.decoder.in_features
    head = 2 * hidden * vocab  # FLOPs per token of the decoder layer
    cells = sum(2 * 4 * layer.hidden_size * (layer.input_size + layer.hidden_size) for layer in model.layers)
    ours, bound = sides[1].median, sides[2].median
    verdict = "met" if ours > LSTM_TARGET else "NOT met"
    return (
        f"LSTM vocab {vocab:,}, batch {BATCHES[-1]}: {ours:,.0f} tokens/s, target > {LSTM_TARGET:,} {verdict}. Per token the "
        f"decoder layer is {head / 1e6:.1f} MFLOP ({head / (head + cells):.0%} of the model's), so "
        f"{LSTM_TARGET:,} tokens/s needs {LSTM_TARGET * head / 1e9:.0f} GFLOP/s for it alone; it ran at "
        f"{bound * head / 1e9:.0f} GFLOP/s here (the bound row)."
    )


def add_rows(table: Table, label: str, batch: int, sides: list[Side]) -> None:
    reference = sides[0].median
    for index, side in enumerate(sides):
        table.add_row(
            label if index == 0 else "",
            str(batch),
            side.label,
            f"{side.median:,.0f}",
            "reference" if index == 0 else f"{side.median / reference:.2f}x",
            f"{min(side.rates):,.0f}-{max(side.rates):,.0f}",
            end_section=index == len(sides) - 1,
        )


if __name__ == "__main__":
    main()
