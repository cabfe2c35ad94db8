"""Batched decoding for both model families: greedy or sampled, with stop tokens.

Prompts are left-padded so every row's next token sits in the last column; the attention
mask (and, for the LSTM, packing) makes a padded row behave exactly as it would alone.
After the prompt, each step feeds one token per row and carries the model's state: the
Transformer's key-value cache or the LSTM's hidden state, so no step recomputes the past.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from halluc_cli.config import DecodingConfig
from halluc_cli.data.tokenizer import prompt_ids
from halluc_cli.errors import UserError
from halluc_cli.models import LanguageModel


@dataclass
class Decoder:
    """Turns prompts into continuations with a model, its tokenizer and a decoding config."""

    model: LanguageModel
    tokenizer: PreTrainedTokenizerBase
    cfg: DecodingConfig
    device: torch.device = torch.device("cpu")
    seed: int = 0  # of the sampling generator

    def __post_init__(self) -> None:
        self.samples = self.cfg.num_samples if self.cfg.name == "sample" else 1  # continuations a prompt
        self.stop_ids = torch.tensor(sorted(_stop_token_ids(self.tokenizer, self.cfg.stop_at_newline)), device=self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)

    def generate(self, prompts: list[str]) -> list[list[str]]:
        """`num_samples` continuations of each prompt (greedy: one), as text without the stop token."""
        ids = [prompt_ids(self.tokenizer, prompt) for prompt in prompts]
        repeated = [row for row in ids for _ in range(self.samples)]
        texts: list[str] = []
        for start in range(0, len(repeated), self.cfg.batch_size):
            texts.extend(self.generate_ids(repeated[start : start + self.cfg.batch_size]))
        n = self.samples
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]

    @torch.inference_mode()
    def generate_ids(self, prompts: list[list[int]]) -> list[str]:
        """Decode one batch of tokenized prompts; returns the decoded continuations."""
        self.model.eval()
        input_ids, mask = _left_pad(prompts, self.tokenizer.pad_token_id, self.device)
        rows, width = input_ids.shape
        steps = self.cfg.max_new_tokens
        # Without padding the mask says nothing the model does not assume anyway, and leaving it
        # out spares the Transformer building an attention mask (and position ids) every step.
        padded = not bool(mask.all())
        # Each step's mask is a prefix of this one: the prompts', then ones for the new tokens.
        full_mask = torch.cat([mask, mask.new_ones(rows, steps)], dim=1) if padded else None
        # The prompts' pass needs the logits at their last position only (the head is most of its cost).
        logits, state = self.model(input_ids, None, mask if padded else None, use_cache=True, logits_to_keep=1)
        is_stop = self._stop_table(logits.shape[-1])  # (V,): one lookup a step instead of isin
        tokens = torch.empty((rows, steps), dtype=torch.long, device=self.device)
        finished = torch.zeros(rows, dtype=torch.bool, device=self.device)
        made = 0
        while made < steps:
            token = self._choose(logits[:, -1, :])  # (B,)
            tokens[:, made] = token
            made += 1
            finished |= is_stop[token]
            if made == steps or bool(finished.all()):  # no forward pass for logits nobody reads
                break
            step_mask = full_mask[:, : width + made] if padded else None
            logits, state = self.model(token[:, None], state, step_mask, use_cache=True)
        tokens = tokens[:, :made]
        # A row's answer is its tokens before its first stop token: count the leading non-stops.
        lengths = (~is_stop[tokens]).int().cumprod(-1).sum(-1)  # (B,)
        return [
            self.tokenizer.decode(row[:length], skip_special_tokens=True).strip()
            for row, length in zip(tokens.tolist(), lengths.tolist())
        ]

    def _stop_table(self, vocab_size: int) -> torch.Tensor:
        """A (V,) bool table, True at the stop ids; read from `stop_ids` at every batch."""
        stop_ids = self.stop_ids.to(device=self.device, dtype=torch.long)
        size = max(vocab_size, int(stop_ids.max()) + 1 if stop_ids.numel() else 0)
        table = torch.zeros(size, dtype=torch.bool, device=self.device)
        table[stop_ids] = True
        return table

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of each row: argmax, or a sample after temperature, top-k, top-p."""
        if self.cfg.name == "greedy":
            return logits.argmax(-1)
        logits = logits.float() / max(self.cfg.temperature, 1e-5)
        if self.cfg.top_k > 0:
            kth = torch.topk(logits, min(self.cfg.top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.cfg.top_p < 1.0:
            logits = _top_p_filter(logits, self.cfg.top_p)
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)


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
