"""Speed (facts/s) of the SliCK probe (`ModelAnswerer`) against a plain loop over `generate`.

A fact is asked with `--exemplar-sets` k-shot prompts ("Q: What is the capital of Peru? A:
Lima" x 4, then its question: `halluc_cli.probe.build_probes` on the bundled geonames KB),
each answered once greedily and `--num-samples` times sampled at `--temperature`, with at
most `--max-new-tokens` tokens, stopping at end-of-sequence or a newline (the probe's own
settings, `ProbeConfig`). Two ways to do it, on the same random-weight model in this run:

    loop    for each prompt, `model.hf.generate` twice: greedy (do_sample=False), then sampled
            (do_sample=True, the temperature, top_k=0, num_return_sequences=num_samples), the
            stop tokens as eos_token_id; each call prefills the prompt anew, the sampled one
            for every return sequence. Text decoded as the probe decodes it.
    probe   `ModelAnswerer.answer` on all prompts: batches of `--batch-size` prompts, each
            prompt prefilled once and its greedy and sampled rows decoded together.

The loop asks `--loop-facts` facts, the probe `--facts`: the loop's rate does not grow with
more facts, and the probe is timed on the batches it runs on in use. Both get one untimed
warm-up prompt first, then `--rounds` timed rounds in alternating order; the figures are
medians. On a machine that other jobs share, --threads 1 gives steadier figures (two
threads each in two busy processes on two cores spend much of their time waiting). The probe's greedy answers are also checked against `generate`'s for
the loop's facts (they should agree, as both are greedy decoding of the same model).

Sizes (random weights, nothing downloaded):
    demo        the demo's model (conf/pretrain/experiment/kbqa_unknown_sweep.yaml): GPT-2,
                4 layers x 4 heads x 128 dims, a word vocabulary learned from the KB's
                statements and the prompts (max_positions 256: the demo's 64 would not hold
                a 4-shot prompt)
    gpt2-small  GPT-2 small's shape: 12 layers x 12 heads x 768 dims, a word vocabulary
                padded to GPT-2's 50,257 entries
    tiny        2 layers x 2 heads x 32 dims, for a smoke run

Usage:
    python scripts/bench_probe.py --threads 1                     # demo size, ~1 min on 2 cores
    python scripts/bench_probe.py --size gpt2-small --facts 4 --loop-facts 1 --batch-size 8
    python scripts/bench_probe.py --size gpt2-small --device cuda --facts 64 --loop-facts 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from halluc_cli.config import (  # noqa: E402
    CONF_DIR,
    KBConfig,
    KBQAConfig,
    ProbeConfig,
    ProbePrompts,
    RelationTemplates,
    TokenizerConfig,
    TransformerConfig,
)
from halluc_cli.data.kb import load_kb  # noqa: E402
from halluc_cli.data.qa import QAExample  # noqa: E402
from halluc_cli.data.tokenizer import train_tokenizer  # noqa: E402
from halluc_cli.decoding import _stop_token_ids  # noqa: E402
from halluc_cli.models.transformer import TransformerLanguageModel  # noqa: E402
from halluc_cli.probe import Answers, ModelAnswerer, build_probes  # noqa: E402

# (layers, heads, hidden dims, vocabulary: None keeps the words of the text)
SIZES = {"demo": (4, 4, 128, None), "gpt2-small": (12, 12, 768, 50_257), "tiny": (2, 2, 32, None)}
RELATIONS = ("capital", "continent", "currency")  # the demo's facts
TARGET = 5.0  # the goal: the probe at least this many times the loop's facts/s
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def probe_prompts(cfg: ProbeConfig, facts: int, seed: int) -> tuple[list[list[str]], list[str]]:
    """The k-shot question prompts of the first `facts` facts of the KB (relations in turn),
    one list a fact, and the statements of every fact (the text a vocabulary is learned from)."""
    relations = OmegaConf.load(CONF_DIR / "kb" / "geonames.yaml").relations
    templates = {name: RelationTemplates(list(relations[name].statements), list(relations[name].questions)) for name in RELATIONS}
    by_relation = {name: [f for f in load_kb("geonames").facts if f.relation == name] for name in RELATIONS}
    examples = [
        QAExample(f"{fact.relation}-{i}", templates[fact.relation].questions[0].format(subject=fact.subject),
                  fact.object, [], fact.subject, fact.relation, True, "finetune")
        for i, group in enumerate(zip(*by_relation.values())) for fact in group
    ]  # fmt: skip
    data_cfg = OmegaConf.structured(KBQAConfig(kb=KBConfig(relations=templates)))
    # Every fact takes part (its relation's exemplars come from all of them); the first are asked.
    probes = build_probes(examples, cfg, data_cfg, seed)[:facts]
    statements = [t.format(subject=e.subject, object=e.answer) for e in examples for t in templates[e.relation].statements]
    return [[prompt.text for prompt in prompts] for prompts in probes], statements


def build_model(size: str, lines: Sequence[str]) -> tuple[TransformerLanguageModel, object]:
    """A random-weight GPT-2 of `size` and a word tokenizer for `lines`."""
    layers, heads, dims, vocab = SIZES[size]
    tokenizer = train_tokenizer(lines, TokenizerConfig(kind="word", split_punctuation=True))
    if vocab:  # pad with made-up words to the size's vocabulary: the output layer is its cost
        filler = " ".join(f"w{i}" for i in range(vocab - len(tokenizer)))
        tokenizer = train_tokenizer([*lines, filler], TokenizerConfig(kind="word", split_punctuation=True, vocab_size=vocab))
    cfg = TransformerConfig(hidden_dim=dims, num_layers=layers, num_heads=heads, max_positions=256, dropout=0.0)
    torch.manual_seed(0)
    return TransformerLanguageModel.from_config(cfg, tokenizer).eval(), tokenizer


def loop_answers(model: TransformerLanguageModel, tokenizer, cfg: ProbeConfig, prompts: list[str]) -> list[Answers]:
    """The reference: each prompt on its own through `generate`, greedy once, sampled once."""
    device = next(model.parameters()).device
    stops = sorted(_stop_token_ids(tokenizer, stop_at_newline=True))
    settings = dict(max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
    answers = []
    for prompt in prompts:
        encoded = tokenizer((tokenizer.bos_token or "") + prompt, add_special_tokens=False, return_tensors="pt").to(device)
        with torch.inference_mode():
            greedy = model.hf.generate(**encoded, do_sample=False, **settings)
            sampled = model.hf.generate(
                **encoded, do_sample=True, temperature=cfg.temperature, top_k=0, top_p=1.0,
                num_return_sequences=cfg.num_samples, **settings,
            )  # fmt: skip
        width = encoded["input_ids"].shape[1]
        greedy_text, *sampled_texts = [
            text.strip() for rows in (greedy, sampled) for text in tokenizer.batch_decode(rows[:, width:], skip_special_tokens=True)
        ]
        answers.append(Answers(greedy_text, sampled_texts))
    return answers


def time_rounds(sides: dict[str, tuple[int, Callable[[], list[Answers]]]], rounds: int) -> tuple[dict, dict]:
    """Each side's median facts/s over `rounds` rounds and its last answers. A side is (facts,
    run). The order of the sides alternates, so drift on a shared machine falls on both alike."""
    rates: dict[str, list[float]] = {name: [] for name in sides}
    answers: dict[str, list[Answers]] = {}
    names = list(sides)
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            facts, run = sides[name]
            started = time.perf_counter()
            answers[name] = run()
            rates[name].append(facts / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}, answers


def main(argv: Sequence[str] | None = None) -> float:
    """Run the benchmark; returns the probe's speed-up over the loop (facts/s over facts/s)."""
    defaults = ProbeConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="demo")
    parser.add_argument("--facts", type=int, default=32, help="facts the probe asks")
    parser.add_argument("--loop-facts", type=int, default=2, help="facts the generate loop asks (at most --facts)")
    parser.add_argument("--exemplar-sets", type=int, default=defaults.exemplar_sets, help="prompts a fact")
    parser.add_argument("--shots", type=int, default=defaults.shots, help="solved exemplars before a question")
    parser.add_argument("--num-samples", type=int, default=defaults.num_samples)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="the probe's prompts a batch")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each side (medians are reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ProbeConfig(
        prompts=ProbePrompts.questions, exemplar_sets=args.exemplar_sets, shots=args.shots, num_samples=args.num_samples,
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
    )  # fmt: skip
    per_fact, statements = probe_prompts(cfg, args.facts, seed=0)
    prompts = [prompt for prompts in per_fact for prompt in prompts]
    loop_prompts = [prompt for prompts in per_fact[: args.loop_facts] for prompt in prompts]
    model, tokenizer = build_model(args.size, [*statements, *prompts])
    device = torch.device(args.device)
    model.to(device=device, dtype=DTYPES[args.dtype])
    answerer = ModelAnswerer(model, tokenizer, cfg, device, seed=0)
    layers, heads, dims, _ = SIZES[args.size]
    print(f"model: {args.size}, GPT-2 {layers} layers x {heads} heads x {dims} dims, vocabulary {len(tokenizer):,}, "
          f"{args.device} {args.dtype}, torch {torch.__version__} ({torch.get_num_threads()} CPU threads)")  # fmt: skip
    print(f"probe: {args.exemplar_sets} prompts a fact ({args.shots}-shot, ~{_mean_tokens(tokenizer, prompts):.0f} tokens), "
          f"1 greedy + {args.num_samples} samples at T={args.temperature}, {args.max_new_tokens} new tokens; "
          f"probe batches of {args.batch_size} prompts")  # fmt: skip

    loop_answers(model, tokenizer, cfg, prompts[:1])  # warm-up, untimed
    answerer.answer(prompts[:1])
    loop_facts = len(per_fact[: args.loop_facts])
    sides = {
        "loop": (loop_facts, lambda: loop_answers(model, tokenizer, cfg, loop_prompts)),
        "probe": (len(per_fact), lambda: answerer.answer(prompts)),
    }
    rates, answers = time_rounds(sides, args.rounds)
    ratio = rates["probe"] / rates["loop"]
    agree = sum(a.greedy == b.greedy for a, b in zip(answers["probe"], answers["loop"]))
    print(f"loop over generate:    {rates['loop']:7.2f} facts/s ({loop_facts} facts a round, median of {args.rounds})")
    print(f"probe (ModelAnswerer): {rates['probe']:7.2f} facts/s ({len(per_fact)} facts a round, median of {args.rounds})")
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(f"speed-up: {ratio:.1f}x (target >= {TARGET:.0f}x: {verdict}); "
          f"greedy answers equal generate's in {agree}/{len(loop_prompts)} prompts")  # fmt: skip
    return ratio


def _mean_tokens(tokenizer, prompts: list[str]) -> float:
    return sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts) / len(prompts)


if __name__ == "__main__":
    main()
