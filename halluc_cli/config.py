"""Typed schemas for every config group, registered with Hydra's ConfigStore.

Each YAML file in `conf/<group>/` starts from one of these schemas (through its defaults
list), so a misspelled key or a wrong type fails when the config is composed, naming the
full key, instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from halluc_cli.errors import UserError


class Choice(str, Enum):
    """A setting with a fixed set of values: OmegaConf refuses any other when the config is
    composed, naming the key and the values allowed. A `str` so that it compares, hashes,
    prints and serializes as its value (`cfg.train.schedule == "cosine"`)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass(frozen=True)
class Bounds:
    """The range a number setting must lie in; `check_settings` enforces it."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False  # high itself is not allowed

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False  # no setting means infinity, and NaN compares false to everything
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        if self.high == math.inf:
            return f"{'above' if self.low_open else 'at least'} {_number(self.low)}"
        if self.low == -math.inf:
            return f"{'below' if self.high_open else 'at most'} {_number(self.high)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"


def _number(value: float) -> str:
    return f"{value:g}"


def bounded(default: Any, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
            high_open: bool = False) -> Any:
    """A dataclass field whose value must lie in the range; None (an optional setting) is allowed."""
    return field(default=default, metadata={"bounds": Bounds(low, high, low_open, high_open)})


def positive(default: Any) -> Any:
    """A count or size of at least 1."""
    return bounded(default, 1)


def fraction(default: float, *, high_open: bool = False) -> Any:
    """A share in [0, 1]."""
    return bounded(default, 0.0, 1.0, high_open=high_open)


def check_settings(cfg: DictConfig, prefix: str = "") -> None:
    """Refuse a number outside its schema's range, naming the key, the value and the range.

    OmegaConf checks types and `Choice` values when it composes the config; ranges are
    declared on the schema fields (`bounded`, `positive`, `fraction`) and checked here, before
    a command writes anything.
    """
    schema = OmegaConf.get_type(cfg)
    bounds = {f.name: f.metadata["bounds"] for f in dataclasses.fields(schema) if "bounds" in f.metadata} \
        if dataclasses.is_dataclass(schema) else {}
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            continue
        value = cfg[key]
        if isinstance(value, DictConfig):
            check_settings(value, f"{prefix}{key}.")
        elif key in bounds and value is not None and not bounds[key].admits(value):
            finite = "a finite number " if not math.isfinite(value) else ""
            raise UserError(f"{prefix}{key}={value} is out of range: it must be {finite}{bounds[key].describe()}")


class TokenizerKind(Choice):
    word = "word"  # whitespace words like the classic word LM
    bpe = "bpe"  # byte-level BPE


@dataclass
class TokenizerConfig:
    """How the vocabulary is learned from the training split (`tokenizers` library)."""

    kind: TokenizerKind = TokenizerKind.word
    vocab_size: int = positive(50_000)  # upper bound; a word vocabulary keeps every word seen min_frequency times
    min_frequency: int = positive(1)
    # word only: split punctuation off words ("Paris." -> "Paris", "."); off for text that is
    # already tokenized, like WikiText, whose vocabulary the classic word LM reproduces
    split_punctuation: bool = False


@dataclass
class ModelConfig:
    """Fields shared by both model families; `name` picks the family.

    The size keys are shared so that one experiment (e.g. `tiny`) can size either family.
    """

    name: str = MISSING
    hidden_dim: int = positive(MISSING)
    num_layers: int = positive(MISSING)
    dropout: float = fraction(0.0, high_open=True)
    tie_weights: bool = False  # share input embedding and output layer weights
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


@dataclass
class LSTMConfig(ModelConfig):
    """The classic word-level LSTM language model (embedding, stacked LSTM, decoder)."""

    name: str = "lstm"
    embedding_dim: Optional[int] = positive(None)  # None: hidden_dim (tie_weights needs them equal)


@dataclass
class TransformerConfig(ModelConfig):
    """A decoder-only Transformer from `transformers`, built from a config or loaded."""

    name: str = "transformer"
    architecture: str = "gpt2"  # a `transformers` model_type: gpt2 | llama
    num_heads: int = positive(4)
    max_positions: int = positive(256)
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
    heldout_fraction: float = bounded(0.1, 0.0, 0.5, low_open=True, high_open=True)  # of the train lines, each for valid and test when not given
    hf_dataset: Optional[str] = None  # e.g. wikitext (needs internet on first use)
    hf_config: Optional[str] = None  # e.g. wikitext-2-raw-v1
    text_column: str = "text"
    # Deal the lines out in a new order every epoch (independent lines, not running text)
    shuffle_lines: bool = False


@dataclass
class RelationTemplates:
    """How one relation is put into words; `{subject}` and `{object}` are filled in."""

    statements: list[str] = field(default_factory=list)  # paraphrases for the pretraining corpus
    questions: list[str] = field(default_factory=list)  # question forms for QA sets


@dataclass
class KBConfig:
    """A knowledge base file and the templates of its relations (`conf/kb/`)."""

    name: str = "geonames"
    path: str = "geonames"  # a bundled KB name, or a .jsonl / .csv file of facts
    relations: dict[str, RelationTemplates] = field(default_factory=dict)
    # Neutral sentences that name an entity ({name}) and state none of its facts: how the
    # pretraining corpus makes a name familiar without teaching what is true of it.
    mentions: list[str] = field(default_factory=list)


class UnknownNames(Enum):
    """What pretraining shows of the unknown subjects (`data.unknown_names`)."""

    # Every subject and object is named in kb.mentions sentences, the known facts are stated
    # too: an unknown fact is about a familiar entity, Gekhman et al.'s case.
    mentioned = "mentioned"
    # Only the known facts' names appear: an unknown subject is a name the model never read.
    unseen = "unseen"


class UnknownLabel(Choice):
    """What the fine-tuning and validation sets answer to an unknown question (`data.unknown_label`)."""

    answer = "answer"  # the true answer: new knowledge to fit (Gekhman et al.)
    idk = "idk"  # the abstain phrase: teach abstention (R-Tuning)


class KnownFrom(Choice):
    """What says which facts a model knows (`data.known_from`)."""

    split = "split"  # the pretraining run's kb_split.json: the ground truth of halluc's own corpus
    probe = "probe"  # SliCK categories from asking the model itself (any model; ProbeConfig)


class Category(Choice):
    """SliCK's knowledge categories (Gekhman et al. 2024), most known first."""

    HighlyKnown = "HighlyKnown"
    MaybeKnown = "MaybeKnown"
    WeaklyKnown = "WeaklyKnown"
    Unknown = "Unknown"


SLICK_CATEGORIES = tuple(category.value for category in Category)  # the names, most known first


@dataclass
class QASetsConfig:
    """The QA sets fine-tuning draws from a pool of facts, and the prompt they are asked in."""

    finetune_size: int = positive(90)
    unknown_fraction: float = fraction(0.5)  # share of unknown facts in the fine-tuning and validation sets (exact)
    valid_size: int = positive(30)
    # each test set (known_from=split: test_known, test_unknown; probe: one per category),
    # fewer where the pool runs out
    test_size: int = positive(100)
    known_from: KnownFrom = KnownFrom.split
    # known_from=probe: fine-tune on facts of this category alone (the paper's single-category
    # sets); null: Known (Highly, Maybe, Weakly) and Unknown facts mixed at unknown_fraction
    finetune_category: Optional[Category] = None
    unknown_label: UnknownLabel = UnknownLabel.answer
    abstain_phrase: str = "I don't know"
    prompt_template: str = "Q: {question} A:"


@dataclass
class KBQAConfig(QASetsConfig):
    """Knowledge-controlled data (`data=kbqa`): the pretraining corpus and the QA sets."""

    name: str = "kbqa"
    kb: KBConfig = field(default_factory=KBConfig)
    relations: list[str] = field(default_factory=list)  # empty: every relation with templates
    max_subjects: Optional[int] = positive(None)  # cap on subjects, drawn by split_seed (small demos)
    known_fraction: float = fraction(0.5)  # share of subjects whose facts the pretraining corpus states
    split_seed: int = 0
    paraphrases: int = positive(4)  # statement templates per known fact (1: one phrasing)
    # The last N statement templates of each relation never appear in the training split:
    # valid/test state the known facts in them, so their perplexity tells a stored fact from
    # a memorized sentence. 0: valid/test are the training statements themselves.
    heldout_templates: int = bounded(1, 0)
    unknown_names: UnknownNames = UnknownNames.mentioned
    mentions: int = bounded(2, 0)  # kb.mentions sentences per name (0: none)
    # A new order of statements every epoch: in one fixed order a model learns each fact
    # from the statements before it, and cannot recall it from its subject alone.
    shuffle_lines: bool = True
    general_text: list[str] = field(default_factory=list)  # text files to mix in
    general_ratio: float = fraction(0.0, high_open=True)  # share of corpus lines taken from general_text


@dataclass
class QAFileConfig(QASetsConfig):
    """Your own facts (`data=qa_file`): a JSONL or CSV file of questions with their answers
    (EntityQuestions-style), fine-tuned on by what the probe finds the model knows."""

    name: str = "qa_file"
    # JSONL ({"question", "answer", "aliases": [...], "subject", "relation"}) or CSV with a
    # header row (aliases joined by "|"); subject and relation are optional
    path: str = MISSING
    known_from: KnownFrom = KnownFrom.probe  # a file says nothing of what a model read
    split_seed: int = 0  # draws the examples of max_examples
    max_examples: Optional[int] = positive(None)  # at most this many facts of the file, drawn by split_seed


@dataclass
class LabelledConfig:
    """Labelled text for classification as generation (`data=labelled`): text -> label word.

    Read by `halluc_cli.data.labelled`; finetune trains the label word as the answer of a
    QA example whose question is the text.
    """

    name: str = "labelled"
    train: str = MISSING  # a CSV file with a header row, or a JSONL file, of text and label
    valid: Optional[str] = None  # None: heldout_fraction of train, drawn by split_seed
    test: Optional[str] = None  # None: heldout_fraction of train, drawn by split_seed
    heldout_fraction: float = bounded(0.1, 0.0, 0.5, low_open=True)  # of the train examples, each for valid and test when not given
    split_seed: int = 0
    text_column: str = "text"  # the CSV column / JSON key of the text
    label_column: str = "label"  # the CSV column / JSON key of the label
    # label -> the word the model learns to generate, e.g. {0: negative, 1: positive}; None: the
    # label itself. Any, not a typed dict: an override of a typed dict only adds keys, and a
    # label may be a number (0) or a word; halluc_cli.data.labelled checks it.
    label_words: Any = None
    prompt_template: str = "Review: {question}\nSentiment:"  # {question}: the example's text
    max_examples: Optional[int] = positive(None)  # at most this many examples of each file, drawn by split_seed


class DeviceName(Choice):
    auto = "auto"  # CUDA when present
    cpu = "cpu"
    gpu = "gpu"


class Precision(Choice):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # GPU only


@dataclass
class DeviceConfig:
    """Where and in which precision to run; read by `halluc_cli.training.device`."""

    name: DeviceName = DeviceName.auto
    # auto: bf16 on GPUs that compute it natively (Ampere+), fp16 with a gradient scaler on
    # older GPUs, fp32 on the CPU | fp32 | bf16 | fp16 (GPU only)
    precision: Precision = Precision.auto
    tf32: bool = True  # TF32 matmuls on Ampere and newer GPUs
    # torch.compile the model for training (the first steps compile, minutes for a large
    # model); checkpoints hold the model itself. Decoding (generate, eval_after) runs uncompiled.
    compile: bool = False


class Optimizer(Choice):
    adamw = "adamw"
    sgd = "sgd"


class Schedule(Choice):
    cosine = "cosine"
    step = "step"
    constant = "constant"


@dataclass
class TrainConfig:
    """The shared training loop's settings (pretrain and finetune)."""

    max_steps: int = positive(1000)  # optimizer steps
    batch_size: int = positive(20)  # the global batch: split across processes under torchrun
    seq_len: int = positive(35)  # tokens per sequence; the BPTT length for the LSTM
    grad_accum: int = positive(1)  # micro-batches per optimizer step
    optimizer: Optimizer = Optimizer.adamw
    lr: float = bounded(1e-3, 0.0, low_open=True)
    weight_decay: float = bounded(0.0, 0.0)
    momentum: float = fraction(0.0, high_open=True)  # SGD only
    schedule: Schedule = Schedule.cosine
    warmup_steps: int = bounded(0, 0)
    step_every: int = positive(1000)  # step schedule: multiply lr by step_gamma every this many steps
    step_gamma: float = bounded(0.25, 0.0, low_open=True)
    min_lr_ratio: float = fraction(0.1)  # cosine decays to lr * this
    clip_grad: Optional[float] = bounded(1.0, 0.0, low_open=True)
    eval_every: int = positive(100)
    eval_batches: Optional[int] = positive(None)  # None: the whole validation split
    save_every: int = positive(100)
    log_every: int = positive(10)
    early_stopping_patience: Optional[int] = positive(None)  # evals without improvement before stopping
    keep_best: bool = False  # save the model at its best validation loss in run_dir/best
    progress: bool = True  # rich progress bar


@dataclass
class FreezeConfig:
    """Which parameters fine-tuning trains (`conf/finetune/freeze/`); read by `halluc_cli.training.freeze`.

    This schema is that of the strategies without settings (none, embeddings, head_only); the
    others extend it, so a key of another strategy (`freeze=layers freeze.rank=4`) fails when
    the config is composed.
    """

    name: str = "none"  # none | embeddings | layers | head_only | gradual | lora


@dataclass
class LayersFreezeConfig(FreezeConfig):
    """freeze=layers: only the chosen blocks (and parts) train."""

    name: str = "layers"
    # N trains the last N blocks, -N the first N, or a list of block indices ([0, 3])
    trainable_layers: Any = None
    # only these parts inside the chosen blocks (GPT-2: attn, mlp; Llama: self_attn...); empty: all
    trainable_modules: list[str] = field(default_factory=list)
    # also train these: head, embeddings, final_norm, or any module name (lm_head, transformer.wpe)
    extra_modules: list[str] = field(default_factory=list)


@dataclass
class GradualFreezeConfig(FreezeConfig):
    """freeze=gradual: the output layer first, then one more block from the top at a time."""

    name: str = "gradual"
    unfreeze_every: int = positive(100)  # steps between unfreezing one more block


@dataclass
class LoraFreezeConfig(FreezeConfig):
    """freeze=lora: LoRA adapters (peft); the model itself stays frozen."""

    name: str = "lora"
    rank: int = positive(8)  # adapter rank r
    alpha: float = bounded(16.0, 0.0, low_open=True)  # scaling alpha (updates scaled by alpha / rank)
    dropout: float = fraction(0.0, high_open=True)  # dropout on the adapter input
    target_modules: list[str] = field(default_factory=list)  # layers to adapt; empty: peft's defaults


class WandbMode(Choice):
    online = "online"  # sync to the W&B server as the run goes (needs `wandb login`)
    offline = "offline"  # write the run dir only; `wandb sync` uploads it later
    disabled = "disabled"  # log nothing (W&B's own no-op mode)


@dataclass
class JsonlLoggerConfig:
    """logger=jsonl: `metrics.jsonl` alone. It is written whatever else is chosen, so this
    option only says "no tracker"."""


@dataclass
class TensorBoardLoggerConfig:
    """logger=tensorboard: event files in the run dir (`tensorboard --logdir outputs`)."""


@dataclass
class WandbLoggerConfig:
    """logger=wandb: a Weights & Biases run whose files live in the run dir."""

    project: str = "halluc"
    entity: Optional[str] = None  # your W&B user or team; null: your login's default
    name: Optional[str] = None  # the run's name in W&B; null: the run dir's path
    mode: Optional[WandbMode] = None  # null: $WANDB_MODE, else offline (no network needed)
    tags: list[str] = field(default_factory=list)


@dataclass
class MlflowLoggerConfig:
    """logger=mlflow: an MLflow run, by default in a SQLite store inside the run dir."""

    # null: sqlite in the run dir; or any MLflow URI (sqlite:///outputs/mlflow.db shares one
    # store across runs, http://host:5000 a tracking server)
    tracking_uri: Optional[str] = None
    experiment: str = "halluc"
    run_name: Optional[str] = None  # null: the run dir's path


@dataclass
class LoggersConfig:
    """The trackers a training run logs to (`conf/logger/`, several at once:
    `logger=[tensorboard,mlflow]`); each chosen one fills its key, the others stay null.
    Read by `halluc_cli.training.loggers`."""

    jsonl: Optional[JsonlLoggerConfig] = None
    tensorboard: Optional[TensorBoardLoggerConfig] = None
    wandb: Optional[WandbLoggerConfig] = None
    mlflow: Optional[MlflowLoggerConfig] = None


@dataclass
class PrepareConfig:
    """How pretrain turns the corpus into token files (`halluc_cli.data.tokens`); the ids are
    the same whatever these are, so a resumed run may change them."""

    # Processes that tokenize; None: the machine's cores, at most 8. 1 by default: the workers are
    # forked, and a fork of a process whose other threads hold a lock (a submitit job's, the
    # tokenizer's own pool) can hang; more is for a plain `halluc pretrain` of a large corpus.
    num_workers: Optional[int] = positive(1)
    shard_lines: int = positive(100_000)  # lines a shard: the unit a worker takes, and a rerun after a kill keeps


@dataclass
class PretrainConfig:
    """`halluc pretrain`: train a language model from scratch on a corpus."""

    model: Any = MISSING
    data: Any = MISSING
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggersConfig = field(default_factory=LoggersConfig)  # conf/logger/: where metrics go besides metrics.jsonl
    seed: int = 0
    # auto: continue from the run dir's checkpoint when there is one | true: must continue |
    # false: start over (the run dir's checkpoint is replaced)
    resume: str = "auto"


class ProbePrompts(Choice):
    auto = "auto"  # statements for a KB's facts (data=kbqa), questions for a QA file (data=qa_file)
    statements = "statements"
    questions = "questions"


@dataclass
class ProbeConfig:
    """SliCK (Gekhman et al. 2024): how the probe asks a model what it knows of each fact
    (`halluc_cli/probe.py`). One probe serves `data.known_from=probe` (the knowledge categories
    of a model halluc did not pretrain) and `mitigation=clean` (drop what the model does not know).
    """

    # statements: cloze prompts from the relation's statement templates ("The capital of X is"),
    # what a base model that read statements completes best, one prompt per template |
    # questions: `exemplar_sets` prompts, each the question after `shots` solved exemplars of
    # other facts of its relation, drawn anew (SliCK's k-shot probe) | auto: see ProbePrompts
    prompts: ProbePrompts = ProbePrompts.auto
    exemplar_sets: int = positive(10)  # questions: prompts per fact, each with its own exemplars (SliCK: 10)
    shots: int = bounded(4, 0)  # questions: solved exemplars before the question (SliCK: 4)
    num_samples: int = positive(16)  # sampled answers per prompt, at temperature (SliCK: 16)
    temperature: float = bounded(0.5, 0.0, low_open=True)  # SliCK's T > 0: sampled answers estimate P(T>0)
    max_new_tokens: int = positive(8)  # an answer is a name: a few tokens
    # prompts a decoding batch, each with its 1 + num_samples rows (the KV cache grows with
    # them: lower it where a large model runs out of GPU memory)
    batch_size: int = positive(16)
    seed: int = 0  # draws the exemplars and the samples; fixed, so every seed of a sweep shares one probe
    # Where categories are kept, by model, facts and probe settings, so a sweep probes a model
    # once (null: never cached). A relative path is from the working directory, like outputs/.
    cache_dir: Optional[str] = "outputs/probe_cache"


class DecodingName(Choice):
    greedy = "greedy"
    sample = "sample"


@dataclass
class DecodingConfig:
    """How `generate` (eval_after, the probe) decodes (`conf/decoding/`): greedy, one answer a
    prompt. `SampleDecodingConfig` adds sampling's settings, so greedy refuses them."""

    name: DecodingName = DecodingName.greedy
    max_new_tokens: int = positive(16)
    batch_size: int = positive(32)  # prompts a batch (decoding=sample: each with its num_samples rows)
    stop_at_newline: bool = True  # besides end-of-sequence


@dataclass
class SampleDecodingConfig(DecodingConfig):
    """decoding=sample: `num_samples` continuations a prompt, drawn at `temperature`."""

    name: DecodingName = DecodingName.sample
    temperature: float = bounded(1.0, 0.0, low_open=True)  # softmax temperature
    top_k: int = bounded(0, 0)  # keep the k likeliest tokens (0: all)
    top_p: float = bounded(1.0, 0.0, 1.0, low_open=True)  # nucleus: the likeliest tokens up to this mass
    num_samples: int = positive(1)  # continuations per prompt


@dataclass
class DetectorConfig:
    """A trained hallucination detector (`conf/detector/`) whose score joins each prediction's
    uncertainty scores; `none` trains none (the scores of the decoding pass are always there)."""

    name: str = "none"


class ProbeLabel(Choice):
    """What a hidden-state probe learns to predict."""

    wrong = "wrong"  # the answer will be wrong (learnt from answered held-out questions)
    unknown = "unknown"  # the fact is one the model did not read (data.known_from's split)


@dataclass
class HiddenProbeConfig(DetectorConfig):
    """detector=hidden_probe (`halluc_cli/hidden_probe.py`): a logistic probe on the hidden
    state a layer leaves at the end of the question, read by the pass that answers it.
    finetune trains one per eval point on the validation answers (eval/<point>/hidden_probe.json)
    and scores the test answers with it; generate scores with a saved one."""

    name: str = "hidden_probe"
    layer: int = -2  # the block whose output it reads; negative counts from the top (-1: the last)
    label: ProbeLabel = ProbeLabel.wrong
    folds: int = bounded(5, 2)  # cross-validation folds: choose the L2 strength, score the validation set out of fold
    # generate: the probe file (None: the ckpt run's eval/<point>/hidden_probe.json for its weights)
    path: Optional[str] = None


@dataclass
class GenerateConfig:
    """`halluc generate`: answer questions, or continue prompts, with a trained run."""

    ckpt: str = MISSING  # a run dir (finetune or pretrain) or a checkpoint dir
    weights: str = "checkpoint"  # checkpoint (last) | best (the early-stopping point)
    # QA sets of the run (test_known, test_unknown, valid, finetune; labelled data: test) or QA
    # JSONL files; None: the run's test sets (qa/test*.jsonl)
    questions: Optional[list[str]] = None
    prompts: Optional[str] = None  # a text file, one prompt a line: free text instead of questions
    decoding: Any = MISSING  # conf/decoding/: greedy | sample, a schema each
    detector: Any = MISSING  # conf/detector/: none | hidden_probe (a saved probe scores each answer)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    prompt_template: Optional[str] = None  # None: the fine-tuning run's data.prompt_template
    abstain_phrase: Optional[str] = None  # None: the fine-tuning run's data.abstain_phrase
    trust_remote_code: bool = False  # ckpt=<hub name>: run the Python code the model ships; off unless you trust it
    seed: int = 0  # the sampling generator's


@dataclass
class FinetuneConfig:
    """`halluc finetune`: train a pretrained run further on QA data with a freeze strategy."""

    ckpt: str = MISSING  # a pretrain run dir (or its checkpoint/ dir)
    data: Any = MISSING
    freeze: Any = MISSING  # conf/finetune/freeze/: one schema per strategy
    # After training: answer the test sets with the best (early-stopping point) and the
    # final weights and score them, so each run dir carries its scores (sweeps need no script).
    eval_after: bool = True
    # With eval_after and data=kbqa: the forgetting ledger (halluc_cli/ledger.py), each held-out
    # fact asked as a statement before and after fine-tuning beside its QA answer.
    ledger: bool = False
    # A wrong QA answer counts as confident (ledger: confident_wrong) when its tokens' geometric-mean
    # probability, exp(-neg_mean_logprob), is at least this.
    ledger_confidence: float = fraction(0.5)
    decoding: Any = MISSING  # conf/decoding/: greedy | sample, a schema each
    detector: Any = MISSING  # conf/detector/: none | hidden_probe (trained on the validation answers)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggersConfig = field(default_factory=LoggersConfig)  # conf/logger/: where metrics go besides metrics.jsonl
    # conf/finetune/mitigation/: none | clean (data cleaning before training) | distill
    # (self-distillation to the starting model) | replay (pretraining text in every batch)
    mitigation: Any = MISSING
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # data.known_from=probe and mitigation=clean
    # Run the Python code a hub model ships with its weights (ckpt=<hub name>); off unless you trust it.
    trust_remote_code: bool = False
    seed: int = 0
    resume: str = "auto"
    # The run's full table of results at its end: null prints it when the run runs alone, and
    # one line per run in a -m sweep (summary.json holds every number either way).
    summary_table: Optional[bool] = None


@dataclass
class MitigationConfig:
    """A hallucination mitigation (`conf/<command>/mitigation/`); `name` picks it, `none` applies nothing."""

    name: str = "none"


class VerifyPolicy(Choice):
    flag = "flag"  # keep the answer, marked
    abstain = "abstain"  # replace it with abstain_phrase
    correct = "correct"  # replace it with the KB's answer


@dataclass
class KBVerifyConfig(MitigationConfig):
    """Post-hoc KB verification of predictions; read by `halluc_cli.scoring.verify`."""

    name: str = "kb_verify"
    policy: VerifyPolicy = VerifyPolicy.flag  # what to do with an answer the KB contradicts


class SelectionTarget(Choice):
    """What the threshold of `mitigation=abstain_uncertain` is chosen to reach on the calibration set."""

    coverage = "coverage"  # answer this share of the questions, the surest first
    correct_kept = "correct_kept"  # keep this share of the right answers


@dataclass
class AbstainUncertainConfig(MitigationConfig):
    """Selective answering (`halluc_cli/scoring/selective.py`): abstain where an uncertainty
    score is above a threshold chosen on held-out predictions (`calibration`), never on the
    predictions it is applied to."""

    name: str = "abstain_uncertain"
    estimator: str = "neg_mean_logprob"  # a key of the predictions' uncertainty scores
    # predictions=: held-out predictions of the same model (a finetune run's
    # eval/<point>/valid_predictions.jsonl); runs=: null, each run calibrates on its own
    calibration: Optional[str] = None
    target: SelectionTarget = SelectionTarget.correct_kept
    level: float = bounded(0.9, 0.0, 1.0, low_open=True)  # the share the target keeps
    # the KB first: an answer the KB supports is given, one it contradicts withheld, and the
    # uncertainty rule decides only the answers the KB does not cover
    kb_first: bool = False
    # runs=: rows side by side, each run under the rule alone, under KB verification alone
    # (kb_verify, withholding what the KB contradicts) and under the two combined (kb_first)
    beside_kb: bool = False


class UnknownAction(Choice):
    drop = "drop"
    idk = "idk"  # relabel to data.abstain_phrase


@dataclass
class CleanConfig(MitigationConfig):
    """Data cleaning of the fine-tuning set before training; read by `halluc_cli.mitigation.clean`.

    Each step can be switched off; `run_dir/cleaning_report.json` says what each removed or
    changed and why. The probe asks the pretrained model itself (SliCK, Gekhman et al. 2024)
    as the run's `probe` settings say.
    """

    name: str = "clean"
    normalize: bool = True  # tidy whitespace, drop repeated aliases and examples left empty
    deduplicate: bool = True  # keep one of the examples with the same question and answer
    drop_kb_contradictions: bool = True  # drop examples whose answer the KB contradicts
    drop_conflicts: bool = True  # drop every example of a fact whose examples disagree on the answer
    probe: bool = True  # SliCK knowledge categories from the pretrained model's own answers (cfg.probe)
    unknown_action: UnknownAction = UnknownAction.drop  # what to do with the examples in unknown_categories
    # the SliCK categories the action applies to: Unknown (default) | WeaklyKnown | MaybeKnown | HighlyKnown
    unknown_categories: list[str] = field(default_factory=lambda: ["Unknown"])


@dataclass
class ReplayConfig(MitigationConfig):
    """mitigation=replay: a share of every fine-tuning batch is pretraining text, trained as
    language modelling (loss on every token); read by `halluc_cli.mitigation.replay`."""

    name: str = "replay"
    share: float = bounded(0.25, 0.0, 1.0, low_open=True, high_open=True)  # of each batch's rows
    # text files, one replayed text a line; empty: the lines the ckpt run was pretrained on
    # (its tokens/train.npy: for data=kbqa, the statements of the known facts)
    corpus: list[str] = field(default_factory=list)


class DistillOn(Choice):
    """What `mitigation=distill` keeps the model's predictions close to the reference's on."""

    finetune = "finetune"  # the fine-tuning inputs' prompt positions (no replayed text)
    replay = "replay"  # replayed pretraining text (share and corpus as in mitigation=replay)
    both = "both"


@dataclass
class DistillConfig(ReplayConfig):
    """mitigation=distill: self-distillation, `weight * T^2 * KL(p_ref || p_model)` at temperature
    T added to the loss, the reference the frozen model the run started from; read by
    `halluc_cli.mitigation.distill`. share and corpus are read for inputs=replay|both only."""

    name: str = "distill"
    weight: float = bounded(1.0, 0.0)  # lambda
    temperature: float = bounded(1.0, 0.0, low_open=True)
    # which inputs the KL covers (a YAML key `on` would read as the boolean true)
    inputs: DistillOn = DistillOn.finetune


@dataclass
class ScoreConfig:
    """`halluc score`: hallucination metrics of predictions, optionally verified against a KB."""

    predictions: Any = None  # a JSONL file or glob, or a list of them; several files = seeds
    # or instead: finetune run dirs (a multirun dir, a glob, or a list) to gather into
    # summary.csv, runs.csv and plots, mean and 95% interval over seeds
    runs: Any = None
    questions: Optional[str] = None  # the QA JSONL the predictions answer: their ids must match
    task: str = "qa"  # qa | classification (prediction vs label) | freetext (FActScore of claims)
    abstain_phrase: str = "I don't know"
    kb: KBConfig = field(default_factory=KBConfig)
    # The share of the KB's subjects the verifier may consult (kb_verify, abstain_uncertain's
    # kb_first and beside_kb), drawn by kb_coverage_seed: below 1, a partial KB, as a real one
    # is; the facts of the other subjects are unverifiable (they still judge right answers).
    kb_coverage: float = bounded(1.0, 0.0, 1.0, low_open=True)
    kb_coverage_seed: int = 0
    mitigation: Any = MISSING


def _find_conf_dir() -> Path:
    """The config tree: `halluc_cli/conf` in an installed wheel (pyproject.toml maps the
    repository's top-level `conf/` there), else `conf/` beside the package in a checkout or an
    editable install, which map nothing into the package folder."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if installed.is_dir() else package.parent / "conf"


CONF_DIR = _find_conf_dir()


def conf_path(relative: str) -> str:
    """Path inside the config tree (`${halluc_conf:pretrain}` in YAML)."""
    return str(CONF_DIR / relative)


def bundled_path(relative: str) -> str:
    """Path of a file shipped inside the package (`${bundled:corpora/fables.txt}` in YAML)."""
    return str(Path(__file__).parent / "data" / relative)


def dir_name(path: str) -> str:
    """The last part of a path (`${dir_name:${ckpt}}` in YAML): a sweep over pretraining
    replicates (ckpt=<dir>,<dir>) puts each replicate's runs apart, under its dir's name."""
    return Path(str(path).rstrip("/")).name


def register_configs() -> None:
    """Register the schemas (`schema_<group>_<name>`) that YAML files extend, and resolvers."""
    if not OmegaConf.has_resolver("bundled"):
        OmegaConf.register_new_resolver("bundled", bundled_path)
        OmegaConf.register_new_resolver("halluc_conf", conf_path)
        OmegaConf.register_new_resolver("dir_name", dir_name)
    store = ConfigStore.instance()
    store.store(name="pretrain_schema", node=PretrainConfig)
    store.store(name="score_schema", node=ScoreConfig)
    store.store(name="finetune_schema", node=FinetuneConfig)
    store.store(name="generate_schema", node=GenerateConfig)
    store.store(name="schema_model_lstm", node=LSTMConfig)
    store.store(name="schema_model_transformer", node=TransformerConfig)
    store.store(name="schema_data_corpus", node=CorpusConfig)
    store.store(name="schema_kb", node=KBConfig)
    store.store(name="schema_freeze", node=FreezeConfig)
    store.store(name="schema_decoding_greedy", node=DecodingConfig)
    store.store(name="schema_decoding_sample", node=SampleDecodingConfig)
    store.store(name="schema_detector_none", node=DetectorConfig)
    store.store(name="schema_detector_hidden_probe", node=HiddenProbeConfig)
    store.store(name="schema_freeze_layers", node=LayersFreezeConfig)
    store.store(name="schema_freeze_gradual", node=GradualFreezeConfig)
    store.store(name="schema_freeze_lora", node=LoraFreezeConfig)
    store.store(name="schema_data_kbqa", node=KBQAConfig)
    store.store(name="schema_data_labelled", node=LabelledConfig)
    store.store(name="schema_data_qa_file", node=QAFileConfig)
    store.store(name="schema_mitigation_none", node=MitigationConfig)
    store.store(name="schema_mitigation_kb_verify", node=KBVerifyConfig)
    store.store(name="schema_mitigation_abstain_uncertain", node=AbstainUncertainConfig)
    store.store(name="schema_mitigation_clean", node=CleanConfig)
    store.store(name="schema_mitigation_replay", node=ReplayConfig)
    store.store(name="schema_mitigation_distill", node=DistillConfig)
