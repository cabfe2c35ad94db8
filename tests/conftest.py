"""Shared fixtures: run the real CLI in-process, and tiny trained runs reused across tests."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli_helpers import pretrain
from slurm_cluster import SlurmCluster, unavailable_reason

@pytest.fixture(scope="session")
def lstm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pretrained LSTM run dir, shared by every test that only reads it."""
    run_dir = tmp_path_factory.mktemp("runs") / "lstm"
    pretrain(run_dir, "model=lstm")
    return run_dir


@pytest.fixture(scope="session")
def transformer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pretrained Transformer run dir, shared by every test that only reads it."""
    run_dir = tmp_path_factory.mktemp("runs") / "transformer"
    pretrain(run_dir, "model=transformer")
    return run_dir


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A single-node SLURM cluster on this machine (partition debug), up for the whole session;
    tests that use it are skipped where slurm-wlm and munge are not installed."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    # Not under pytest's tmp dirs: munged wants every user to reach its socket's folder.
    with tempfile.TemporaryDirectory(prefix="halluc-slurm-") as root:
        os.chmod(root, 0o755)
        cluster = SlurmCluster(Path(root))
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


# A KB of made-up countries and one relation, for a model that knows half of its facts.
KNOWING_SUBJECTS = ["Arvania", "Belmora", "Corvalia", "Dunmere", "Eskaria", "Falden", "Gorvik", "Halvoran"]
KNOWING_OBJECTS = ["Zeltown", "Yarrowby", "Xandria", "Wexmoor", "Vantis", "Umbrel", "Tolvan", "Sarnith"]
KNOWING_STATEMENTS = ["The capital of {subject} is {object}.", "{subject} has its capital in {object}."]


@dataclass
class KnowingRun:
    """A pretrain-style run dir whose model has read its KB's known facts in every template."""

    path: Path
    data_overrides: list[str]  # the `data.` overrides that describe its KB to finetune
    facts: list[tuple[str, str]]  # (subject, capital) of every fact, known or not
    statements: list[str]  # the statement templates of its corpus


@pytest.fixture(scope="session")
def knowing_run(tmp_path_factory: pytest.TempPathFactory) -> KnowingRun:
    """A run dir (checkpoint/ + kb_split.json) of a small LSTM fitted to the corpus of a
    made-up KB's known facts, so that it knows them and nothing of the unknown ones. Written
    with the project's own corpus, tokenizer, model and checkpoint code; the training loop is a
    plain full-batch one (the corpus is 8 lines), a few seconds on a CPU."""
    import torch
    from omegaconf import OmegaConf

    from halluc_cli.config import KBConfig, KBQAConfig, LSTMConfig, RelationTemplates, TokenizerConfig, UnknownNames
    from halluc_cli.data.kbqa import render_corpus, save_split
    from halluc_cli.data.tokenizer import train_tokenizer
    from halluc_cli.models import build_model
    from halluc_cli.training.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("runs") / "knowing"
    kb_path = root / "facts.jsonl"
    kb_path.parent.mkdir(parents=True)
    kb_path.write_text(
        "".join(
            json.dumps({"subject": s, "relation": "capital", "object": o}) + "\n"
            for s, o in zip(KNOWING_SUBJECTS, KNOWING_OBJECTS)
        )
    )
    questions = ["What is the capital of {subject}?", "Which city is the capital of {subject}?"]
    data = OmegaConf.structured(
        KBQAConfig(
            kb=KBConfig(path=str(kb_path), relations={"capital": RelationTemplates(KNOWING_STATEMENTS, questions)}),
            relations=["capital"], paraphrases=2, heldout_templates=0, unknown_names=UnknownNames.unseen,
            mentions=0, finetune_size=4, valid_size=2, test_size=1,
        )
    )
    splits, required, split = render_corpus(data, [])
    tokenizer = train_tokenizer(splits["train"], TokenizerConfig(kind="word", split_punctuation=True), required)
    torch.manual_seed(0)
    model = build_model(OmegaConf.structured(LSTMConfig(hidden_dim=32, num_layers=1)), tokenizer)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [[eos, *tokenizer(line, add_special_tokens=False)["input_ids"], eos] for line in splits["train"]]
    width = max(len(row) for row in rows)
    inputs = torch.full((len(rows), width - 1), pad)
    labels = torch.full((len(rows), width - 1), -100)
    for i, row in enumerate(rows):
        inputs[i, : len(row) - 1] = torch.tensor(row[:-1])
        labels[i, : len(row) - 1] = torch.tensor(row[1:])
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-2)
    for _ in range(80):
        logits, _ = model(inputs)  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_checkpoint(root / "checkpoint", model, tokenizer, {"step": 80})
    save_split(root, split)
    statements = ",".join(f'"{template}"' for template in KNOWING_STATEMENTS)
    overrides = [
        f"data.kb.path={kb_path}", "data.relations=[capital]", "data.max_subjects=null", "data.paraphrases=2",
        "data.heldout_templates=0", "data.unknown_names=unseen", "data.mentions=0",
        f"data.kb.relations.capital.statements=[{statements}]", "data.finetune_size=4", "data.valid_size=2",
        "data.test_size=1",
    ]
    return KnowingRun(root, overrides, list(zip(KNOWING_SUBJECTS, KNOWING_OBJECTS)), KNOWING_STATEMENTS)
