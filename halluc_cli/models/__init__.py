"""Model families behind one interface; `conf/model/<name>.yaml` picks one by `name`."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import PreTrainedTokenizerBase

from halluc_cli.config import ModelConfig
from halluc_cli.errors import UserError
from halluc_cli.models.base import (
    DAMAGED_FIX,
    FAMILY_FILE,
    WEIGHTS_FILE,
    LanguageModel,
    count_parameters,
    check_layer,
    read_family,
    read_json,
)
from halluc_cli.models.lstm import LSTMLanguageModel
from halluc_cli.models.transformer import TransformerLanguageModel, check_causal_lm

FAMILIES: dict[str, type[LanguageModel]] = {
    LSTMLanguageModel.family: LSTMLanguageModel,
    TransformerLanguageModel.family: TransformerLanguageModel,
}

__all__ = [
    "LanguageModel", "build_model", "load_model", "open_model", "check_causal_lm", "count_parameters", "model_depth",
    "check_model_layer",
    "FAMILIES",
]


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> LanguageModel:
    """An untrained model of the family and shape in `cfg` (a `conf/model/` config)."""
    if cfg.name not in FAMILIES:
        raise UserError(f"unknown model {cfg.name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[cfg.name].from_config(cfg, tokenizer)


def load_model(
    directory: Path, expected_family: str | None = None, dtype: torch.dtype | None = None
) -> LanguageModel:
    """Rebuild a saved model from its checkpoint dir alone, its weights in `dtype` (None:
    float32, whatever the checkpoint holds; `weights_dtype` picks one for a device config).

    `expected_family` guards against continuing, say, an LSTM run with `model=transformer`.
    Weights are read from safetensors only (never unpickled); a damaged file is a UserError.
    """
    if not (directory / FAMILY_FILE).is_file():
        raise UserError(f"{directory} is not a halluc checkpoint (no {FAMILY_FILE}); point at a run's checkpoint dir")
    family = read_family(directory)["family"]
    if expected_family is not None and family != expected_family:
        raise UserError(
            f"the checkpoint in {directory} is a {family} model but model={expected_family} was asked for; "
            f"set model={family} or use another checkpoint"
        )
    try:
        return FAMILIES[family].load(directory, dtype)
    except SafetensorError as error:  # cut short (a full disk, a partial copy) or another format
        raise UserError(
            f"{directory / WEIGHTS_FILE} is truncated or not a safetensors file ({error}); {DAMAGED_FIX}"
        ) from error


def open_model(
    model_dir: str, *, trust_remote_code: bool = False, dtype: torch.dtype | str | None = None
) -> LanguageModel:
    """The model in a halluc model dir, or any Hugging Face causal LM (a `save_pretrained`
    dir, or a hub name for users with internet), behind the one model interface, its weights
    in `dtype` (None: float32; "auto": the checkpoint's own)."""
    directory = Path(model_dir)
    if (directory / FAMILY_FILE).is_file():
        return load_model(directory, dtype=dtype)
    return TransformerLanguageModel.from_pretrained(model_dir, trust_remote_code=trust_remote_code, dtype=dtype)


# The config.json keys that give a model's number of layers: most Hugging Face models say
# num_hidden_layers, GPT-2 n_layer, halluc's LSTM num_layers.
DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def model_depth(model_dir: str) -> int | None:
    """The number of layers a model dir's config.json gives, read without the weights, so a
    setting that names a layer is checked before anything is written; None for a hub name or
    a config that does not say (the layer is then checked once the model is loaded)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    config = read_json(path)
    depths = [config[key] for key in DEPTH_KEYS if isinstance(config.get(key), int)]
    return depths[0] if depths else None


def check_model_layer(model_dir: str, layer: int) -> None:
    """Fail unless `layer` names a layer of the model in `model_dir`, where its config says how
    many it has (else the loaded model's blocks are checked when the layer is first read)."""
    depth = model_depth(model_dir)
    if depth is not None:
        check_layer(layer, depth)
