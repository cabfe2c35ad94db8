"""Typed schemas for every config group, registered with Hydra's ConfigStore.

Each YAML file in `conf/<group>/` starts from one of these schemas (through its defaults
list), so a misspelled key or a wrong type fails when the config is composed, naming the
full key, instead of being silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class TokenizerConfig:
    """How the vocabulary is learned from the training split (`tokenizers` library)."""

    kind: str = "word"  # word: whitespace words like the classic word LM | bpe: byte-level BPE
    vocab_size: int = 50_000  # upper bound; a word vocabulary keeps every word seen min_frequency times
    min_frequency: int = 1


@dataclass
class ModelConfig:
    """Fields shared by both model families; `name` picks the family.

    The size keys are shared so that one experiment (e.g. `tiny`) can size either family.
    """

    name: str = MISSING
    hidden_dim: int = MISSING
    num_layers: int = MISSING
    dropout: float = 0.0
    tie_weights: bool = False  # share input embedding and output layer weights
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


@dataclass
class LSTMConfig(ModelConfig):
    """The classic word-level LSTM language model (embedding, stacked LSTM, decoder)."""

    name: str = "lstm"
    embedding_dim: Optional[int] = None  # None: hidden_dim (tie_weights needs them equal)


@dataclass
class TransformerConfig(ModelConfig):
    """A decoder-only Transformer from `transformers`, built from a config or loaded."""

    name: str = "transformer"
    architecture: str = "gpt2"  # a `transformers` model_type: gpt2 | llama
    num_heads: int = 4
    max_positions: int = 256
    pretrained: Optional[str] = None  # a local path or hub name; replaces the fields above


@dataclass
class CorpusConfig:
    """A text corpus: local files, or a Hugging Face dataset for users with internet."""

    name: str = "text"
    # Local text files or globs; a single directory holding train.txt/valid.txt/test.txt
    # uses those splits as they are.
    train: list[str] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    heldout_fraction: float = 0.1  # of the train lines, each for valid and test when not given
    hf_dataset: Optional[str] = None  # e.g. wikitext (needs internet on first use)
    hf_config: Optional[str] = None  # e.g. wikitext-2-raw-v1
    text_column: str = "text"


@dataclass
class DeviceConfig:
    """Where and in which precision to run; read by `halluc_cli.training.device`."""

    name: str = "auto"  # auto: CUDA when present | cpu | gpu
    precision: str = "auto"  # auto: bf16 on GPUs that have it, else fp32 | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile the model
    tf32: bool = True  # TF32 matmuls on Ampere and newer GPUs


@dataclass
class TrainConfig:
    """The shared training loop's settings (pretrain and finetune)."""

    max_steps: int = 1000  # optimizer steps
    batch_size: int = 20
    seq_len: int = 35  # tokens per sequence; the BPTT length for the LSTM
    grad_accum: int = 1  # micro-batches per optimizer step
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0  # SGD only
    schedule: str = "cosine"  # cosine | step | constant
    warmup_steps: int = 0
    step_every: int = 1000  # step schedule: multiply lr by step_gamma every this many steps
    step_gamma: float = 0.25
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    clip_grad: Optional[float] = 1.0
    eval_every: int = 100
    eval_batches: Optional[int] = None  # None: the whole validation split
    save_every: int = 100
    log_every: int = 10
    early_stopping_patience: Optional[int] = None  # evals without improvement before stopping
    progress: bool = True  # rich progress bar


@dataclass
class PretrainConfig:
    """`halluc pretrain`: train a language model from scratch on a corpus."""

    model: Any = MISSING
    data: Any = MISSING
    device: DeviceConfig = field(default_factory=DeviceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    # auto: continue from the run dir's checkpoint when there is one | true: must continue |
    # false: start over (the run dir's checkpoint is replaced)
    resume: str = "auto"


def bundled_path(relative: str) -> str:
    """Path of a file shipped inside the package (`${bundled:corpora/fables.txt}` in YAML)."""
    return str(Path(__file__).parent / "data" / relative)


def register_configs() -> None:
    """Register the schemas under `schema/` so YAML files can extend them, and resolvers."""
    if not OmegaConf.has_resolver("bundled"):
        OmegaConf.register_new_resolver("bundled", bundled_path)
    store = ConfigStore.instance()
    store.store(name="pretrain_schema", node=PretrainConfig)
    store.store(group="schema/model", name="lstm", node=LSTMConfig)
    store.store(group="schema/model", name="transformer", node=TransformerConfig)
    store.store(group="schema/data", name="corpus", node=CorpusConfig)
