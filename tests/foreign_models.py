"""Tiny random causal LMs of several Hugging Face architectures, saved with a tokenizer as a
user's own model would be (`save_pretrained`): the "foreign" models of the tests, made here
without any download."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from halluc_cli.data.kb import load_kb

SIZE = dict(hidden=32, layers=2, heads=2, positions=512)

# Each architecture's config from the same small shape; the keys differ per family.
ARCHITECTURES = {
    "gpt2": lambda v: dict(n_embd=SIZE["hidden"], n_layer=SIZE["layers"], n_head=SIZE["heads"],
                           n_positions=SIZE["positions"], vocab_size=v),
    "llama": lambda v: dict(hidden_size=SIZE["hidden"], intermediate_size=64, num_hidden_layers=SIZE["layers"],
                            num_attention_heads=SIZE["heads"], num_key_value_heads=1,
                            max_position_embeddings=SIZE["positions"], vocab_size=v),
    "qwen2": lambda v: dict(hidden_size=SIZE["hidden"], intermediate_size=64, num_hidden_layers=SIZE["layers"],
                            num_attention_heads=SIZE["heads"], num_key_value_heads=1,
                            max_position_embeddings=SIZE["positions"], vocab_size=v),
    "gpt_neox": lambda v: dict(hidden_size=SIZE["hidden"], intermediate_size=64, num_hidden_layers=SIZE["layers"],
                               num_attention_heads=SIZE["heads"], max_position_embeddings=SIZE["positions"],
                               vocab_size=v),
    "mistral": lambda v: dict(hidden_size=SIZE["hidden"], intermediate_size=64, num_hidden_layers=SIZE["layers"],
                              num_attention_heads=SIZE["heads"], num_key_value_heads=1,
                              max_position_embeddings=SIZE["positions"], vocab_size=v, sliding_window=None),
}
# Llama and Mistral tokenizers put <s> before every text; GPT-2's, Qwen2's and Pythia's add nothing.
ADDS_BOS = {"llama", "mistral"}


def kb_lines() -> list[str]:
    """Text that covers the bundled KB's names and the QA prompt, for a tokenizer to learn."""
    facts = load_kb("geonames").facts
    return [f"Q: What is the {f.relation} of {f.subject}? A: {f.object}" for f in facts]


def build_tokenizer(architecture: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE over the KB's lines, with the special tokens of the family."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    bos, eos = ("<s>", "</s>") if architecture in ADDS_BOS else ("<|endoftext|>", "<|endoftext|>")
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=sorted({bos, eos}), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(kb_lines(), trainer=trainer)
    if architecture in ADDS_BOS:
        bos_id = tokenizer.token_to_id(bos)
        tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos)


def save_tiny_model(directory: Path, architecture: str = "gpt2", seed: int = 0, tokenizer: bool = True) -> Path:
    """A random causal LM of `architecture` and its tokenizer, saved into `directory`."""
    import torch

    torch.manual_seed(seed)
    hf_tokenizer = build_tokenizer(architecture)
    tokens = dict(bos_token_id=hf_tokenizer.bos_token_id, eos_token_id=hf_tokenizer.eos_token_id)
    config = AutoConfig.for_model(architecture, **ARCHITECTURES[architecture](len(hf_tokenizer)), **tokens)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    if tokenizer:
        hf_tokenizer.save_pretrained(directory)
    return directory
