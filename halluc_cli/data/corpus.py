"""Text corpora: local files, a Hugging Face dataset, or facts rendered from a KB.

A corpus is three splits of text lines, each a `Lines` range read on demand (files by byte
ranges, a hub dataset from its memory-mapped Arrow table), so no corpus has to fit in memory.
`halluc_cli.data.tokens` turns them into token files.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from omegaconf import OmegaConf

from halluc_cli.config import CorpusConfig, KBQAConfig
from halluc_cli.data.kbqa import render_corpus
from halluc_cli.data.lines import LineList, Lines, TableColumn, TextFiles
from halluc_cli.errors import UserError

SPLITS = ("train", "valid", "test")


@dataclass
class Corpus:
    """Text lines per split, plus what a knowledge-controlled corpus adds."""

    splits: dict[str, Lines]
    # Lines whose every word the tokenizer must cover besides the training text (a KB's
    # names and templates, see kbqa.render_corpus).
    required_lines: list[str] = field(default_factory=list)
    # data=kbqa: which subjects the corpus states (known) and which it never mentions.
    kb_split: dict[str, list[str]] | None = None


def load_corpus(cfg: CorpusConfig | KBQAConfig) -> Corpus:
    """The corpus `cfg` describes: text files, a hub dataset, or facts rendered from a KB."""
    if OmegaConf.get_type(cfg) is KBQAConfig:
        general = list(_load_files(CorpusConfig(train=list(cfg.general_text)))["train"]) if cfg.general_text else []
        splits, required_lines, kb_split = render_corpus(cfg, general)
        return Corpus({split: Lines.of(LineList(lines)) for split, lines in splits.items()}, required_lines, kb_split)
    return Corpus(load_text(cfg))


def load_text(cfg: CorpusConfig) -> dict[str, Lines]:
    """Lines of text per split (train, valid, test), held out from train where not given."""
    if bool(cfg.train) == bool(cfg.hf_dataset):
        raise UserError("set exactly one of data.train (local text files) or data.hf_dataset (a hub dataset)")
    splits = _load_hub(cfg) if cfg.hf_dataset else _load_files(cfg)
    splits = _hold_out(splits, cfg.heldout_fraction)
    if not any(line.strip() for line in splits["train"]):
        raise UserError(f"the training text of data={cfg.name} is empty; point data.train at a file with text in it")
    return splits


def _load_files(cfg: CorpusConfig) -> dict[str, Lines]:
    files = {"train": _expand(cfg.train), "valid": _expand(cfg.valid), "test": _expand(cfg.test)}
    if len(files["train"]) == 1 and Path(files["train"][0]).is_dir():
        files = _split_dir(Path(files["train"][0]))
    empty = [path for paths in files.values() for path in paths if Path(path).stat().st_size == 0]
    if empty:
        raise UserError(f"corpus file is empty: {empty[0]}; point data.train / data.valid / data.test at text")
    # Read as the `datasets` "text" loader reads them (lines.TextFiles), without a copy in memory.
    return {split: Lines.of(TextFiles(files[split])) for split in SPLITS}


def _expand(patterns: list[str]) -> list[str]:
    """Paths from globs, in a stable order; a pattern that matches nothing is a user error."""
    paths: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(Path(pattern).expanduser())))
        if not matches:
            raise UserError(f"corpus file not found: {pattern} (check data.train / data.valid / data.test)")
        paths.extend(matches)
    return paths


def _split_dir(directory: Path) -> dict[str, list[str]]:
    files = {split: directory / f"{split}.txt" for split in SPLITS}
    if not files["train"].is_file():
        raise UserError(f"{directory} is a directory without train.txt; give the text files in data.train")
    return {split: [str(path)] if path.is_file() else [] for split, path in files.items()}


def _load_hub(cfg: CorpusConfig) -> dict[str, Lines]:
    try:
        loaded = datasets.load_dataset(cfg.hf_dataset, cfg.hf_config)
    except Exception as error:  # offline, unknown name, missing config: all the user's to fix
        raise UserError(
            f"could not load the dataset {cfg.hf_dataset!r} ({cfg.hf_config}) from the hub: {error}. "
            "Without internet, point data.train at local text files instead"
        ) from error
    names = {"train": "train", "valid": "validation", "test": "test"}
    return {
        split: Lines.of(TableColumn(loaded[name], cfg.text_column) if name in loaded else LineList([]))
        for split, name in names.items()
    }


def _hold_out(splits: dict[str, Lines], fraction: float) -> dict[str, Lines]:
    """Carve missing valid/test splits off the end of train, each `fraction` of its lines."""
    if splits["valid"] and splits["test"]:
        return splits
    train = splits["train"]
    size = max(1, int(len(train) * fraction))
    for split in ("test", "valid"):  # test from the very end, valid just before it
        if not splits[split]:
            splits[split], train = train[-size:], train[:-size]
    splits["train"] = train
    return splits

