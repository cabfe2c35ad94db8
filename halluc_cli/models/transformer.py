"""A decoder-only Transformer from `transformers`, behind halluc's model interface.

The wrapped model is a plain Hugging Face causal LM (GPT-2 or Llama style, built from a
config, or any pretrained checkpoint), saved with `save_pretrained`, so every checkpoint
halluc writes loads in any `transformers` tool with `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from halluc_cli.config import TransformerConfig
from halluc_cli.errors import UserError
from halluc_cli.models.base import LanguageModel, State, read_family


# Where a LoRA-tuned model's adapter goes inside its checkpoint dir (see `save`).
ADAPTER_DIR = "adapter"

def _gpt2_config(cfg: TransformerConfig, tokens: dict[str, int]) -> PretrainedConfig:
    return AutoConfig.for_model(
        "gpt2",
        **tokens,
        n_positions=cfg.max_positions,
        n_embd=cfg.hidden_dim,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        tie_word_embeddings=cfg.tie_weights,
        # GELU as one kernel. GPT-2's default "gelu_new" (its tanh approximation) is written
        # as 8 separate tensor ops, each a pass over the MLP's activations and as many again
        # in backward: ~20% of a small model's CPU training step. Of the fused kernels, the
        # exact (erf) GELU, nanoGPT's choice, is a further ~5% faster per step on a CPU than
        # the fused tanh form ("gelu_pytorch_tanh"); the two differ by < 5e-4
        # (scripts/bench_pretrain.py). Loaded checkpoints keep their own activation.
        activation_function="gelu",
    )


def _llama_config(cfg: TransformerConfig, tokens: dict[str, int]) -> PretrainedConfig:
    return AutoConfig.for_model(
        "llama",
        **tokens,
        max_position_embeddings=cfg.max_positions,
        hidden_size=cfg.hidden_dim,
        intermediate_size=4 * cfg.hidden_dim,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        attention_dropout=cfg.dropout,
        tie_word_embeddings=cfg.tie_weights,
    )


ARCHITECTURES = {"gpt2": _gpt2_config, "llama": _llama_config}


def check_causal_lm(name_or_path: str, trust_remote_code: bool = False) -> None:
    """Refuse, before any weights load, a model that is not a causal (decoder-only) LM:
    an encoder (BERT), an encoder-decoder (T5), or a dir whose config cannot be read."""
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UserError(f"no model config could be read from {name_or_path!r}: {_first_line(error)}") from error
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    architectures = list(config.architectures or [])
    if architectures:
        is_causal = any(name in causal or name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures)
    else:  # a config saved without its class: judge by the model type
        is_causal = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:  # BERT, RoBERTa: encoders unless made decoders
            is_causal = is_causal and bool(getattr(config, "is_decoder", False))
    if getattr(config, "is_encoder_decoder", False) or not is_causal:
        kind = "an encoder-decoder" if getattr(config, "is_encoder_decoder", False) else "not a causal (decoder-only)"
        raise UserError(
            f"{name_or_path} is {kind} language model ({', '.join(architectures) or config.model_type}); "
            "halluc fine-tunes causal LMs (GPT-2, Llama, Qwen2, GPT-NeoX/Pythia, Mistral, ...)"
        )


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class TransformerLanguageModel(LanguageModel):
    """A Hugging Face causal LM; its state is the key-value cache when asked for one (use_cache)."""

    family = "transformer"

    def __init__(self, hf_model: PreTrainedModel, trust_remote_code: bool = False) -> None:
        super().__init__()
        self.hf = hf_model
        self.trust_remote_code = trust_remote_code  # its code ships with its weights (saved with it)

    @classmethod
    def from_config(cls, cfg: TransformerConfig, tokenizer: PreTrainedTokenizerBase) -> "TransformerLanguageModel":
        """Build an untrained model of the configured architecture and shape for `tokenizer`."""
        if cfg.architecture not in ARCHITECTURES:
            raise UserError(
                f"unknown model.architecture {cfg.architecture!r}; choose one of {sorted(ARCHITECTURES)}"
            )
        if cfg.hidden_dim % cfg.num_heads:
            raise UserError(f"model.hidden_dim ({cfg.hidden_dim}) must be divisible by model.num_heads ({cfg.num_heads})")
        tokens = dict(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        hf_config = ARCHITECTURES[cfg.architecture](cfg, tokens)
        return cls(AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa"))

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, trust_remote_code: bool = False, dtype: torch.dtype | str | None = None
    ) -> "TransformerLanguageModel":
        """Load an existing Hugging Face causal LM (a local path, or a hub name with internet),
        its weights in `dtype` (None: float32; "auto": the checkpoint's own). Weights are read
        from safetensors only: a .bin checkpoint would be unpickled."""
        check_causal_lm(name_or_path, trust_remote_code)
        local = Path(name_or_path)
        if local.is_dir() and not any(local.glob("*.safetensors")):
            raise UserError(
                f"{name_or_path} holds no safetensors weights (a .bin checkpoint would be unpickled, which halluc "
                "never does); save it once with save_pretrained(dir, safe_serialization=True) where you trust it"
            )
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(
                name_or_path,
                attn_implementation="sdpa",
                trust_remote_code=trust_remote_code,
                dtype=dtype or torch.float32,
                use_safetensors=True,
            )
        except (OSError, ValueError) as error:
            raise UserError(
                f"no causal language model could be loaded from {name_or_path!r}: {_first_line(error)}"
            ) from error
        return cls(hf_model, trust_remote_code)

    @property
    def revision(self) -> str | None:
        """The hub commit the weights came from; None for a local dir (its files say which)."""
        return getattr(self.hf.config, "_commit_hash", None)

    @property
    def max_positions(self) -> int:
        """The longest sequence the position embeddings cover."""
        config = self.hf.config
        return getattr(config, "n_positions", None) or config.max_position_embeddings

    def forward(
        self,
        input_ids: torch.Tensor,
        state: State = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, State]:
        # logits_to_keep: logits of the last this many positions only (0: all), as in
        # `transformers`, where generation asks for 1 on the prompt pass.
        position_ids = None
        if attention_mask is not None:
            # Left padding shifts the real tokens right; count positions over real tokens only,
            # so a padded row sees the same positions as it would alone.
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        output = self.hf(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            # `cache`, not `past_key_values`: transformers 5.24 renamed both the argument and
            # the output field, and the old names warn on every call (even when None).
            cache=state if use_cache else None,
            use_cache=use_cache,
            **({"logits_to_keep": logits_to_keep} if logits_to_keep else {}),
        )
        return output.logits, output.cache if use_cache else None

    def repeat_state(self, state: State, repeats: int) -> State:
        # `forward` gets a DynamicCache from `transformers` (GPT-2, Llama, Qwen2, GPT-NeoX and
        # Mistral alike), which repeats each layer's keys and values (B, heads, T, head_dim) in
        # place, sliding-window layers (Mistral's) included.
        state.batch_repeat_interleave(repeats)
        return state

    def input_embeddings(self) -> nn.Module:
        return self.hf.get_input_embeddings()

    def blocks(self) -> list[nn.Module]:
        # The decoder layers are the one ModuleList of the base model (GPT-2: .h, Llama: .layers).
        hf = self.hf.get_base_model() if hasattr(self.hf, "get_base_model") else self.hf  # under LoRA's wrapper
        for module in hf.base_model.children():
            if isinstance(module, nn.ModuleList):
                return list(module)
        raise UserError(f"cannot find the decoder layers of a {type(self.hf).__name__}")

    def output_head(self) -> nn.Module:
        return self.hf.get_output_embeddings()

    def last_position(self, block_output: Any) -> torch.Tensor:
        # A decoder layer returns its hidden states (B, T, H), in some models' code as the first
        # of a tuple; left padding puts every row's last token in the last column.
        hidden = block_output[0] if isinstance(block_output, tuple) else block_output
        return hidden[:, -1]

    def save(self, directory: Path) -> None:
        if hasattr(self.hf, "merge_and_unload"):  # wrapped by peft for freeze=lora
            # The merged weights, so the checkpoint loads like any other; built on the CPU, as
            # the live model goes on training and a merged copy beside it on the GPU would not
            # fit there. The adapter itself goes beside it for reuse.
            base = self.hf.get_base_model()
            base.save_pretrained(directory, state_dict=merged_state_dict(self.hf), safe_serialization=True)
            self.hf.save_pretrained(directory / ADAPTER_DIR, safe_serialization=True)
        else:
            self.hf.save_pretrained(directory, safe_serialization=True)
        # A model whose code ships with it needs trust_remote_code again to load: recorded, as
        # the user gave it for this model.
        self.write_family(directory, **({"trust_remote_code": True} if self.trust_remote_code else {}))

    @classmethod
    def load(cls, directory: Path, dtype: torch.dtype | None = None) -> "TransformerLanguageModel":
        """The model `save` wrote to `directory`, its weights in `dtype` (None: float32)."""
        trusted = bool(read_family(directory).get("trust_remote_code", False))
        return cls.from_pretrained(str(directory), trust_remote_code=trusted, dtype=dtype)


@torch.no_grad()
def merged_state_dict(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """What `copy.deepcopy(peft_model).merge_and_unload().state_dict()` holds, on the CPU,
    without a second copy of the model on its device and without touching `peft_model`.

    Each LoRA layer's weight is merged on the model's device, one layer at a time, and moved
    to the CPU in the base weight's dtype; every other tensor is moved as it is. The keys are
    those of the un-wrapped model (`x.base_layer.weight` back to `x.weight`, no `lora_*`), and
    tensors tied in the model (GPT-2's lm_head and wte) are one tensor here too, which is how
    `save_pretrained` recognises them. Vanilla LoRA only (no DoRA or other variants, no
    `lora_bias`): what `freeze=lora` builds.
    """
    from peft.tuners.lora import LoraLayer  # imported here: peft takes seconds to import

    base = peft_model.get_base_model()
    lora_layers = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    # By the identity of the live tensor, so a tied weight is moved (or merged) once, and all
    # its names share the result.
    on_cpu = {id(layer.get_base_layer().weight): _merged_weight(layer) for layer in lora_layers.values()}
    state = {}
    # keep_vars: the Parameters themselves, whose identity ties share.
    for key, tensor in base.state_dict(keep_vars=True).items():
        plain_key = _unwrapped_key(key, lora_layers)
        if plain_key is None:
            continue
        if id(tensor) not in on_cpu:
            # Copied off a GPU; a CPU model's own tensor is used as it is (saving only reads it).
            on_cpu[id(tensor)] = tensor.detach().cpu()
        state[plain_key] = on_cpu[id(tensor)]
    return state


def _merged_weight(layer: nn.Module) -> torch.Tensor:
    """`layer`'s base weight plus its active adapters' deltas, as peft's merge computes it
    (the sum in the adapters' precision, rounded once to the weight's), on the CPU."""
    weight = layer.get_base_layer().weight
    merged = weight.detach()
    held = layer.lora_A.keys() | layer.lora_embedding_A.keys()  # linear layers, embeddings
    for adapter in layer.active_adapters:
        if adapter in held:
            merged = merged + layer.get_delta_weight(adapter)
    return merged.to("cpu", weight.dtype)


def _unwrapped_key(key: str, lora_layers: dict[str, nn.Module]) -> str | None:
    """`key` as the model without peft's layers names it, or None for an adapter's own tensor."""
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        layer = ".".join(parts[:end])
        if layer in lora_layers:
            if parts[end] != "base_layer":
                return None  # lora_A, lora_B, ...
            return ".".join(parts[:end] + parts[end + 1 :])
    return key
