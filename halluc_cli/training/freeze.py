"""Frozen-layer strategies for fine-tuning; `conf/finetune/freeze/<name>.yaml` picks one by `name`.

A strategy decides which parameters train by setting `requires_grad`, through the model
interface's handles (input embeddings, ordered blocks, output head), so one strategy works
for both families. `apply_freeze` applies it before the optimizer is built; the trainer
calls `on_step` before every step (gradual unfreezing changes the set as training goes)
and builds its optimizer over `optimizer_parameters`.

Tied weights (`model.tie_weights`): the output layer's weight *is* the embedding matrix, one
Parameter, so it is frozen or trained as one: freezing the embeddings freezes the tied head,
and training the head trains the embeddings. Each strategy says so in its `notes`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from halluc_cli.config import FreezeConfig
from halluc_cli.errors import UserError
from halluc_cli.models import load_model
from halluc_cli.models.base import LanguageModel
from halluc_cli.models.transformer import ADAPTER_DIR, TransformerLanguageModel


@dataclass
class ModelParts:
    """A model's parameters grouped by the interface's handles; each Parameter listed once."""

    embeddings: list[nn.Parameter]  # every nn.Embedding outside the blocks (tokens; GPT-2 positions)
    blocks: list[list[tuple[str, nn.Parameter]]]  # per block, input side first: (name inside it, param)
    head: list[nn.Parameter]  # the output layer (its weight is an embedding's when tied)
    final_norm: list[nn.Parameter]  # everything else: the norm before the head (GPT-2 ln_f, Llama norm)
    tied: bool  # the head shares a Parameter with the embeddings

    @classmethod
    def of(cls, model: LanguageModel) -> "ModelParts":
        blocks = model.blocks()
        in_blocks = {id(m) for block in blocks for m in block.modules()}
        embedding_modules = [model.input_embeddings()] + [
            m for m in model.modules()
            if isinstance(m, nn.Embedding) and id(m) not in in_blocks and m is not model.input_embeddings()
        ]
        embeddings = _unique(p for m in embedding_modules for p in m.parameters())
        head = list(model.output_head().parameters())
        block_params = [list(block.named_parameters()) for block in blocks]
        listed = {id(p) for p in embeddings + head} | {id(p) for block in block_params for _, p in block}
        final_norm = [p for p in model.parameters() if id(p) not in listed]
        tied = bool({id(p) for p in head} & {id(p) for p in embeddings})
        return cls(embeddings, block_params, head, final_norm, tied)

    def block(self, index: int) -> list[nn.Parameter]:
        return [p for _, p in self.blocks[index]]


class FreezeStrategy:
    """Base: every parameter trains. Subclasses pick a subset in `setup`."""

    def __init__(self, cfg: FreezeConfig) -> None:
        self.cfg = cfg
        self.notes: list[str] = []  # lines the command prints: what the strategy did beyond its name

    def setup(self, model: LanguageModel) -> None:
        _train_only(model, list(model.parameters()))

    def on_step(self, model: LanguageModel, step: int) -> None:
        """Called before optimizer step `step` (0-based); only gradual unfreezing acts on it."""

    def optimizer_parameters(self, model: LanguageModel) -> list[nn.Parameter]:
        """The parameters the optimizer must hold: those that train now or will later."""
        return [p for p in model.parameters() if p.requires_grad]

    def restore(self, model: LanguageModel, checkpoint_dir: Path) -> None:
        """Resume: load the trained weights of `checkpoint_dir` into the freshly set-up model."""
        model.load_state_dict(load_model(checkpoint_dir, expected_family=model.family).state_dict())


class FullFineTuning(FreezeStrategy):
    """freeze=none: every parameter trains."""


class FrozenEmbeddings(FreezeStrategy):
    """freeze=embeddings: input embeddings frozen (a tied output layer with them)."""

    def setup(self, model: LanguageModel) -> None:
        parts = ModelParts.of(model)
        frozen = {id(p) for p in parts.embeddings}
        _train_only(model, [p for p in model.parameters() if id(p) not in frozen])
        if parts.tied:
            self.notes.append("the output layer is tied to the input embeddings, so its weight stays frozen too")


class HeadOnly(FreezeStrategy):
    """freeze=head_only: only the output layer trains.

    With tied weights the output weight is the embedding matrix, so the input embeddings
    train too; we keep that (rather than refusing) because it is the only head there is,
    and say so in the notes.
    """

    def setup(self, model: LanguageModel) -> None:
        parts = ModelParts.of(model)
        _train_only(model, parts.head)
        if parts.tied:
            self.notes.append(
                "the output layer is tied to the input embeddings (one weight matrix), so the input "
                "embeddings train too"
            )


class TrainableLayers(FreezeStrategy):
    """freeze=layers: chosen blocks (optionally only some of their parts) and extra modules."""


    def setup(self, model: LanguageModel) -> None:
        parts = ModelParts.of(model)
        indices = _block_indices(self.cfg.trainable_layers, len(parts.blocks))
        modules = [str(m) for m in self.cfg.trainable_modules]
        _check_block_modules(modules, parts)
        chosen = [
            p for i in indices for name, p in parts.blocks[i] if not modules or any(_within(name, m) for m in modules)
        ]
        for name in self.cfg.extra_modules:
            chosen += _extra_module(str(name), model, parts)
        _train_only(model, chosen)
        self.notes.append(f"trainable blocks: {list(indices) or 'none'} of 0..{len(parts.blocks) - 1}")
        if parts.tied and any(p.requires_grad for p in parts.head):
            self.notes.append("the output layer is tied to the input embeddings, so both train")


class GradualUnfreezing(FreezeStrategy):
    """freeze=gradual: ULMFiT's gradual unfreezing (Howard & Ruder 2018), from the top.

    Steps [0, K): the output layer and the norm before it. Every K steps one more block joins,
    top block first; after all blocks, the embeddings, and from then on everything trains.
    """


    def setup(self, model: LanguageModel) -> None:
        every = self.cfg.unfreeze_every
        parts = ModelParts.of(model)
        # Top of the network first: head (+ final norm), blocks from the last, embeddings.
        self.groups = [parts.head + parts.final_norm]
        self.groups += [parts.block(i) for i in reversed(range(len(parts.blocks)))]
        self.groups.append(parts.embeddings)
        self.unfrozen = 0
        self.on_step(model, 0)
        blocks = len(parts.blocks)
        self.notes.append(
            f"gradual unfreezing: the output layer first, one more block every {every} steps from the top; "
            f"all {blocks} blocks train from step {blocks * every}, the embeddings from step {(blocks + 1) * every}"
        )
        if parts.tied:
            self.notes.append("the output layer is tied to the input embeddings, so they train from step 0")

    def groups_unfrozen(self, step: int) -> int:
        """How many groups (head first, then blocks from the top, embeddings last) train at `step`."""
        return min(step // self.cfg.unfreeze_every + 1, len(self.groups))

    def on_step(self, model: LanguageModel, step: int) -> None:
        count = self.groups_unfrozen(step)
        if count != self.unfrozen:
            _train_only(model, [p for group in self.groups[:count] for p in group])
            self.unfrozen = count

    def optimizer_parameters(self, model: LanguageModel) -> list[nn.Parameter]:
        # All of them from the start: a frozen parameter has no gradient, and torch optimizers
        # skip those (no update, no weight decay, no state) until it is unfrozen.
        return list(model.parameters())


class LoRA(FreezeStrategy):
    """freeze=lora: peft LoRA adapters on the Transformer; the model's own weights stay frozen.

    `model.hf` becomes a peft model; `TransformerLanguageModel.save` then writes the merged
    weights (a plain Hugging Face checkpoint) and the adapter in `adapter/`.
    """


    def setup(self, model: LanguageModel) -> None:
        if not isinstance(model, TransformerLanguageModel):
            raise UserError(
                "freeze=lora needs model=transformer (peft adapters wrap attention/MLP linear layers); "
                "for the LSTM use freeze=layers or freeze=none"
            )
        from peft import LoraConfig, get_peft_model  # imported here: peft takes seconds to import

        hf = model.hf
        targets = [str(m) for m in self.cfg.target_modules]
        lora_config = LoraConfig(
            r=self.cfg.rank,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            target_modules=targets or None,  # None: peft's defaults for the architecture
            # GPT-2 stores its linear layers transposed (transformers' Conv1D)
            fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in hf.modules()),
            task_type="CAUSAL_LM",
        )
        try:
            with warnings.catch_warnings():  # peft calls a transformers API that warns of its own deprecation
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                model.hf = get_peft_model(hf, lora_config)
        except ValueError as error:
            asked = f"freeze.target_modules={targets}" if targets else "peft has no default target_modules here"
            raise UserError(
                f"{asked} for this {hf.config.model_type} model ({error}); set freeze.target_modules to "
                f"some of its linear layers: {', '.join(_linear_layer_names(hf))}"
            ) from error
        targets = sorted(model.hf.peft_config["default"].target_modules)
        self.notes.append(f"LoRA adapters r={self.cfg.rank} alpha={self.cfg.alpha} on {', '.join(targets)}")

    def restore(self, model: LanguageModel, checkpoint_dir: Path) -> None:
        """Load the adapter saved in `checkpoint_dir/adapter` into this (freshly wrapped) model.

        The model must hold the original base weights (the source run's), not the merged ones.
        """
        from peft import load_peft_weights, set_peft_model_state_dict

        adapter = checkpoint_dir / ADAPTER_DIR
        if not adapter.is_dir():
            raise UserError(f"{checkpoint_dir} holds no LoRA adapter ({ADAPTER_DIR}/); it was not saved by freeze=lora")
        try:
            set_peft_model_state_dict(model.hf, load_peft_weights(str(adapter)))
        except RuntimeError as error:  # shape mismatch: the adapter was trained with other settings
            raise UserError(
                f"the adapter in {adapter} does not fit freeze.rank={self.cfg.rank} / target_modules; "
                f"resume with the settings it was trained with ({error})"
            ) from error


STRATEGIES: dict[str, type[FreezeStrategy]] = {
    "none": FullFineTuning,
    "embeddings": FrozenEmbeddings,
    "layers": TrainableLayers,
    "head_only": HeadOnly,
    "gradual": GradualUnfreezing,
    "lora": LoRA,
}


def apply_freeze(model: LanguageModel, cfg: FreezeConfig) -> FreezeStrategy:
    """Freeze `model` as `cfg` says (LoRA wraps `model.hf`) and return the strategy."""
    if cfg.name not in STRATEGIES:
        raise UserError(f"unknown freeze {cfg.name!r}; choose one of {', '.join(STRATEGIES)}")
    strategy = STRATEGIES[cfg.name](cfg)
    strategy.setup(model)
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"freeze={cfg.name} with these settings leaves no parameter trainable")
    return strategy


def cast_for_training(model: LanguageModel, strategy: FreezeStrategy, frozen_dtype: torch.dtype) -> None:
    """Cast the parameters `strategy` trains to float32 and the frozen ones to `frozen_dtype`.

    Call it after `apply_freeze`, before the optimizer is built. The optimizer keeps
    full-precision masters of what trains (LoRA adapters, unfrozen layers): bf16 has 8 bits of
    mantissa, so updates much smaller than a weight would round away, and fp16 gradients are
    refused by the fp16 grad scaler. Frozen weights only feed autocast's low-precision matmuls,
    so `weights_dtype` loses nothing there and halves their memory. "What trains" is
    `optimizer_parameters`, not `requires_grad`: gradual unfreezing's later blocks train too.
    Casting `.data` keeps each Parameter (and so weight ties) as it is.
    """
    trained = {id(p) for p in strategy.optimizer_parameters(model)}
    for p in model.parameters():
        wanted = torch.float32 if id(p) in trained else frozen_dtype
        if p.dtype != wanted and p.is_floating_point():
            p.data = p.data.to(wanted)


def _train_only(model: nn.Module, params: list[nn.Parameter]) -> None:
    """`params` train, every other parameter of `model` is frozen."""
    chosen = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)


def _block_indices(value: Any, count: int) -> list[int]:
    """The block indices `freeze.trainable_layers` selects in a model of `count` blocks."""
    value = _plain(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > count:
            raise UserError(
                f"freeze.trainable_layers={value} but the model has {count} blocks; "
                f"use -{count}..{count} or a list of block indices 0..{count - 1}"
            )
        return list(range(count - value, count)) if value >= 0 else list(range(-value))
    if isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        outside = [i for i in value if not 0 <= i < count]
        if outside:
            raise UserError(
                f"freeze.trainable_layers: block {outside} out of range; the model has {count} blocks, "
                f"numbered 0..{count - 1}"
            )
        return sorted(set(value))
    raise UserError(
        "freeze.trainable_layers must be a number of blocks (N: the last N, -N: the first N) "
        f"or a list of block indices like [0, 3], got {value!r}"
    )


def _within(name: str, module: str) -> bool:
    """Whether parameter `name` lies in `module` (both dotted paths inside the same parent)."""
    return name == module or name.startswith(module + ".")


def _check_block_modules(modules: list[str], parts: ModelParts) -> None:
    names = {name for block in parts.blocks for name, _ in block}
    for module in modules:
        if not any(_within(name, module) for name in names):
            existing = sorted({name.split(".")[0] for name in names})
            raise UserError(
                f"freeze.trainable_modules: the blocks have no part {module!r}; they have: "
                f"{', '.join(existing)} (or a dotted path inside one)"
            )


def _extra_module(name: str, model: LanguageModel, parts: ModelParts) -> list[nn.Parameter]:
    """The parameters `freeze.extra_modules` entry `name` adds: an alias or any module name."""
    aliases = {
        "embeddings": parts.embeddings,
        "head": parts.head,
        "output_head": parts.head,
        "final_norm": parts.final_norm,
    }
    if aliases.get(name):
        return aliases[name]
    # Any run of dotted components of a parameter name: "lm_head", "transformer.wpe", "hf.transformer.h.0.mlp".
    named = list(model.named_parameters(remove_duplicate=False))  # tied heads under their own name too
    found = [p for full, p in named if f".{name}." in f".{full}."]
    if found:
        return found
    in_blocks = {id(p) for block in parts.blocks for _, p in block}
    outside = sorted({full.rpartition(".")[0] for full, p in named if id(p) not in in_blocks})
    raise UserError(
        f"freeze.extra_modules: the model has no {name!r}; use one of "
        f"{', '.join(alias for alias, params in aliases.items() if params)}, or a module name such as "
        f"{', '.join(outside)}"
    )


def _linear_layer_names(module: nn.Module) -> list[str]:
    """Distinct last names of the linear layers (nn.Linear or GPT-2's Conv1D) under `module`."""
    return sorted({
        name.rpartition(".")[2]
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"
    })


def _unique(params) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for p in params:
        seen.setdefault(id(p), p)
    return list(seen.values())


def _plain(value: Any) -> Any:
    """A config value as plain Python (a ListConfig as a list)."""
    if isinstance(value, (ListConfig, DictConfig)):
        return OmegaConf.to_container(value)
    return value
