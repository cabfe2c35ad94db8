"""Batched decoding for both model families: greedy or sampled, with stop tokens.

Prompts are left-padded so every row's next token sits in the last column; the attention
mask (and, for the LSTM, packing) makes a padded row behave exactly as it would alone.
After the prompt, each step feeds one token per row and carries the model's state: the
Transformer's key-value cache or the LSTM's hidden state, so no step recomputes the past.
Several continuations of a prompt (samples; SliCK's greedy answer beside them) share one
pass over the prompt: its state is copied to each of its rows before the first step.
`continuations` also says how sure the model was of each: the log-probability and the
entropy of the distributions its tokens came from, read off the decoding pass itself, and,
given a `hidden_layer`, the hidden state that layer left at the end of its prompt (for a
hidden-state probe: `halluc_cli/hidden_probe.py`), read off the prompt's pass by a hook.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from halluc_cli.config import DecodingConfig
from halluc_cli.data.tokenizer import prompt_ids
from halluc_cli.errors import UserError
from halluc_cli.models import LanguageModel


@dataclass(frozen=True)
class Continuation:
    """A decoded continuation, and how sure the model was of it (its own distribution, T=1)."""

    text: str
    logprob: float  # log P of its tokens and of the stop token that ended it, if one did
    tokens: int  # the tokens `logprob` covers
    entropy: float  # mean entropy (nats) of the next-token distributions of those tokens
    hidden: torch.Tensor | None = None  # (H,) the prompt's last hidden state at the decoder's hidden_layer


@dataclass
class Decoder:
    """Turns prompts into continuations with a model, its tokenizer and a decoding config."""

    model: LanguageModel
    tokenizer: PreTrainedTokenizerBase
    cfg: DecodingConfig
    device: torch.device = torch.device("cpu")
    seed: int = 0  # of the sampling generator
    hidden_layer: int | None = None  # keep each prompt's last hidden state of this layer (Continuation.hidden)

    def __post_init__(self) -> None:
        self.samples = self.cfg.num_samples if self.cfg.name == "sample" else 1  # continuations a prompt
        self.stop_ids = torch.tensor(sorted(_stop_token_ids(self.tokenizer, self.cfg.stop_at_newline)), device=self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)

    def generate(self, prompts: list[str]) -> list[list[str]]:
        """`num_samples` continuations of each prompt (greedy: one), as text without the stop token."""
        return _texts(self._generate(prompts, greedy_first=False, scored=False))

    def generate_with_greedy(self, prompts: list[str]) -> list[list[str]]:
        """Each prompt's greedy continuation, then its `num_samples` sampled ones (decoding=sample):
        what SliCK's probe asks for, all from one pass over the prompt."""
        return _texts(self._generate(prompts, greedy_first=True, scored=False))

    def continuations(self, prompts: list[str], greedy_first: bool = False) -> list[list[Continuation]]:
        """As `generate` (`generate_with_greedy`), each continuation with its log-probability
        and entropy."""
        return self._generate(prompts, greedy_first, scored=True)

    def _generate(self, prompts: list[str], greedy_first: bool, scored: bool) -> list[list[Continuation]]:
        ids = [prompt_ids(self.tokenizer, prompt) for prompt in prompts]
        self._check_positions(max(map(len, ids), default=0))
        # Batches of prompts of about one length: little padding for every row of a prompt to
        # store and attend over. Each prompt decodes as it would alone, whatever its batch.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        n = self.samples + greedy_first  # rows a prompt
        texts: list[list[Continuation]] = [[] for _ in prompts]
        for start in range(0, len(order), self.cfg.batch_size):  # batch_size prompts, each with its rows
            batch = order[start : start + self.cfg.batch_size]
            try:
                rows = self.generate_ids([ids[i] for i in batch], greedy_first, scored)
            except torch.cuda.OutOfMemoryError as error:
                raise UserError(
                    f"out of GPU memory decoding {len(batch)} prompts x {n} rows; lower the batch size "
                    "(decoding.batch_size, or probe.batch_size for the probe)"
                ) from error
            for index, i in enumerate(batch):
                texts[i] = rows[index * n : (index + 1) * n]
        return texts

    def _check_positions(self, longest: int) -> None:
        """Refuse prompts whose answers would run past a Transformer's position table."""
        limit = getattr(self.model, "max_positions", None)
        if limit is not None and longest + self.cfg.max_new_tokens > limit:
            raise UserError(
                f"a prompt of {longest} tokens plus max_new_tokens={self.cfg.max_new_tokens} exceeds the model's "
                f"{limit} positions; shorten the prompts (the probe: fewer probe.shots, or probe.prompts=statements)"
            )

    @torch.inference_mode()
    def generate_ids(
        self, prompts: list[list[int]], greedy_first: bool = False, scored: bool = False
    ) -> list[Continuation]:
        """Decode one batch of tokenized prompts: each prompt's `num_samples` continuations (greedy:
        one), after its greedy one if `greedy_first`, prompt after prompt; `scored`: with their
        log-probabilities and entropies (a log-softmax over the vocabulary a step; with
        `greedy_first`, of the greedy rows alone, the answers kept), else NaN.

        The prompts go through the model once; a prompt's rows then continue from copies of
        its state (`repeat_state`), so its prefix is not computed again for every sample.
        """
        if greedy_first and self.cfg.name != "sample":
            raise ValueError("greedy_first adds a greedy row to sampled ones; it needs decoding=sample")
        self.model.eval()
        per_prompt = self.samples + greedy_first  # rows a prompt
        input_ids, mask = _left_pad(prompts, self.tokenizer.pad_token_id, self.device)
        width = input_ids.shape[1]
        steps = self.cfg.max_new_tokens
        # Without padding the mask says nothing the model does not assume anyway, and leaving it
        # out spares the Transformer building an attention mask (and position ids) every step.
        padded = not bool(mask.all())
        # The prompts' pass needs the logits at their last position only (the head is most of its cost).
        capture = self.model.capture_last_hidden(self.hidden_layer) if self.hidden_layer is not None else nullcontext([])
        with capture as captured:
            logits, state = self.model(input_ids, None, mask if padded else None, use_cache=True, logits_to_keep=1)
        hidden = captured[0] if captured else [None] * len(prompts)  # (prompts, H)
        if per_prompt > 1:
            state = self.model.repeat_state(state, per_prompt)
            logits = logits.repeat_interleave(per_prompt, dim=0)
            mask = mask.repeat_interleave(per_prompt, dim=0)
        rows = logits.shape[0]
        # Each step's mask is a prefix of this one: the prompts', then ones for the new tokens.
        full_mask = torch.cat([mask, mask.new_ones(rows, steps)], dim=1) if padded else None
        sampled = self._sampled_rows(len(prompts), per_prompt, greedy_first)
        # The scores of the answer that is kept: with a greedy row beside samples, that row alone.
        scored_rows = torch.arange(len(prompts), device=self.device) * per_prompt if greedy_first else slice(None)
        is_stop = self._stop_table(logits.shape[-1])  # (V,): one lookup a step instead of isin
        tokens = torch.empty((rows, steps), dtype=torch.long, device=self.device)
        logprobs = torch.zeros((rows, steps), device=self.device)
        entropies = torch.zeros((rows, steps), device=self.device)
        finished = torch.zeros(rows, dtype=torch.bool, device=self.device)
        made = 0
        while made < steps:
            token = self._choose(logits[:, -1, :], sampled)  # (B,)
            tokens[:, made] = token
            if scored:  # the model's own distribution (T=1), whatever the sampling temperature
                log_p = torch.log_softmax(logits[scored_rows, -1, :].float(), dim=-1)
                logprobs[scored_rows, made] = log_p.gather(-1, token[scored_rows, None]).squeeze(-1)
                entropies[scored_rows, made] = torch.special.entr(log_p.exp()).sum(-1)  # a -inf logit adds 0
            made += 1
            finished |= is_stop[token]
            if made == steps or bool(finished.all()):  # no forward pass for logits nobody reads
                break
            step_mask = full_mask[:, : width + made] if padded else None
            logits, state = self.model(token[:, None], state, step_mask, use_cache=True)
        tokens = tokens[:, :made]
        # A row's answer is its tokens before its first stop token: count the leading non-stops.
        lengths = (~is_stop[tokens]).int().cumprod(-1).sum(-1)  # (B,)
        # Its scores cover those and the stop token, which says the answer is complete.
        covered = (lengths + 1).clamp(max=made)
        kept = torch.arange(made, device=self.device)[None, :] < covered[:, None]
        # where, not a product: whatever a step after the stop holds (-inf, NaN) stays out
        logprob = torch.where(kept, logprobs[:, :made], 0.0).sum(-1)
        entropy = torch.where(kept, entropies[:, :made], 0.0).sum(-1) / covered
        if not scored:
            logprob, entropy = torch.full_like(logprob, float("nan")), torch.full_like(entropy, float("nan"))
        return [
            Continuation(
                self.tokenizer.decode(row[:length], skip_special_tokens=True).strip(), lp, count, ent,
                hidden[index // per_prompt],
            )
            for index, (row, length, lp, count, ent) in enumerate(
                zip(tokens.tolist(), lengths.tolist(), logprob.tolist(), covered.tolist(), entropy.tolist())
            )
        ]

    def _sampled_rows(self, prompts: int, per_prompt: int, greedy_first: bool) -> torch.Tensor | slice | None:
        """Which rows `_choose` samples: none (greedy), all, or all but each prompt's first.
        Indices rather than a mask, as a mask's indexing waits on the GPU at every step."""
        if self.cfg.name != "sample":
            return None
        if not greedy_first:
            return slice(None)
        return torch.arange(prompts * per_prompt, device=self.device).view(prompts, per_prompt)[:, 1:].flatten()

    def _stop_table(self, vocab_size: int) -> torch.Tensor:
        """A (V,) bool table, True at the stop ids; read from `stop_ids` at every batch."""
        stop_ids = self.stop_ids.to(device=self.device, dtype=torch.long)
        size = max(vocab_size, int(stop_ids.max()) + 1 if stop_ids.numel() else 0)
        table = torch.zeros(size, dtype=torch.bool, device=self.device)
        table[stop_ids] = True
        return table

    def _choose(self, logits: torch.Tensor, sampled: torch.Tensor | slice | None) -> torch.Tensor:
        """The next token of each row: the argmax, and at the `sampled` rows a draw after
        temperature, top-k, top-p."""
        token = logits.argmax(-1)  # (B,)
        if sampled is not None:
            token[sampled] = self._sample(logits[sampled])
        return token

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        """One token a row, drawn from the softmax after temperature, top-k and top-p."""
        logits = logits.float() / max(self.cfg.temperature, 1e-5)
        if self.cfg.top_k > 0:
            kth = torch.topk(logits, min(self.cfg.top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.cfg.top_p < 1.0:
            logits = _top_p_filter(logits, self.cfg.top_p)
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)


def _texts(continuations: list[list[Continuation]]) -> list[list[str]]:
    return [[continuation.text for continuation in row] for row in continuations]


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches `top_p` (nucleus sampling)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keeps at least the top token
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if any(not row for row in rows):
        raise UserError("an empty prompt cannot be continued; remove blank prompts")
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, width - len(row) :] = torch.tensor(row)
        mask[index, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _stop_token_ids(tokenizer: PreTrainedTokenizerBase, stop_at_newline: bool) -> set[int]:
    """End-of-sequence, and every token that holds a newline when answers end at one."""
    stops = {tokenizer.eos_token_id}
    if stop_at_newline:
        # Byte-level BPE writes a newline as "Ċ"; other vocabularies as "\n" itself.
        stops |= {i for token, i in tokenizer.get_vocab().items() if "\n" in token or "Ċ" in token}
    return stops
