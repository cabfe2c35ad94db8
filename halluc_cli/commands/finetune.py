"""`halluc finetune`: fine-tune a pretrained run on knowledge-controlled QA or labelled text.

validate -> load the pretrained model -> QA sets (data=kbqa: known/unknown from the
pretraining run; data=labelled: text -> label word) -> freeze strategy -> batches -> the
shared training loop -> answer and score the test sets (eval_after) -> summary. Of several
processes (torchrun), the main one builds the QA sets (and cleans them) and answers the test
sets; the others read the sets back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from halluc_cli import rundir
from halluc_cli.commands.common import checkpoint_to_resume, describe_model, resolve_run, start_run
from halluc_cli.config import KBQAConfig, LabelledConfig
from halluc_cli.console import print_table
from halluc_cli.data.kb import load_kb
from halluc_cli.data.kbqa import QA_SETS, build_qa_sets, load_split
from halluc_cli.data.labelled import LABELLED_SETS, build_labelled_sets, check_label_words
from halluc_cli.data.qa import QAExample, format_prompt, qa_format, read_qa_file, write_qa_sets
from halluc_cli.data.tokenizer import load_tokenizer
from halluc_cli.decoding import Decoder
from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_json, atomic_write_jsonl, complete_dir
from halluc_cli.scoring.metrics import classification_metrics, score_predictions
from halluc_cli.mitigation import check_finetune_mitigation, prepare_finetune_set
from halluc_cli.models import count_parameters, load_model
from halluc_cli.predictions import answer_questions
from halluc_cli.training.batches import Example, ExampleBatches
from halluc_cli.training.device import build_accelerator, pin_batches
from halluc_cli.training.distributed import check_last_batch
from halluc_cli.training.evaluators import FitAccuracy
from halluc_cli.training.freeze import apply_freeze
from halluc_cli.training.loop import Trainer


# prediction records -> (scores.json, headline numbers for the summary)
Scorer = Callable[[list[dict[str, Any]]], tuple[dict[str, Any], dict[str, float]]]


@dataclass(frozen=True)
class FinetuneData:
    """What fine-tuning does with one kind of data, the schema of `cfg.data`."""

    sets: tuple[str, ...]  # the QA sets in run_dir/qa
    tests: tuple[str, ...]  # the sets eval_after answers and scores
    mitigations: tuple[str, ...]  # the mitigation= values that apply
    # (finetune cfg, pretrain run dir, its tokenizer) -> the QA sets
    build: Callable[[DictConfig, Path, PreTrainedTokenizerBase], dict[str, list[QAExample]]]
    # the fine-tuning set -> the groups whose train accuracy each evaluation logs
    fit_groups: Callable[[list[QAExample]], dict[str, list[QAExample]]]
    # finetune cfg -> the scorer of one set of weights' test answers (what it needs read once)
    scorer: Callable[[DictConfig], Scorer]


def _kbqa_sets(cfg: DictConfig, pretrain_dir: Path, tokenizer: PreTrainedTokenizerBase) -> dict[str, list[QAExample]]:
    return build_qa_sets(cfg.data, load_split(pretrain_dir), cfg.seed)


def _known_groups(examples: list[QAExample]) -> dict[str, list[QAExample]]:
    # Gekhman et al.: Unknown examples are fitted more slowly than Known ones; watch both.
    return {
        "train_acc_known": [e for e in examples if e.known],
        "train_acc_unknown": [e for e in examples if not e.known],
    }


def _kbqa_scorer(cfg: DictConfig) -> Scorer:
    kb = load_kb(cfg.data.kb.path)  # once for both sets of weights

    def score(records: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float]]:
        scores = score_predictions(records, kb)
        headline = {
            f"{group}_{metric}": rates[metric]
            for group, rates in scores["by_known"].items()
            for metric in ("accuracy", "hallucination_rate")
        }
        return scores, headline

    return score


def _labelled_sets(
    cfg: DictConfig, pretrain_dir: Path, tokenizer: PreTrainedTokenizerBase
) -> dict[str, list[QAExample]]:
    sets = build_labelled_sets(cfg.data)
    check_label_words(tokenizer, {example.answer for examples in sets.values() for example in examples})
    return sets


def _score_labelled(records: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float]]:
    scores = classification_metrics(records)  # the seed articles' error rate, no known/unknown split
    return scores, {metric: scores[metric] for metric in ("error_rate", "accuracy")}


FINETUNE_DATA: dict[type, FinetuneData] = {
    KBQAConfig: FinetuneData(
        QA_SETS, ("test_known", "test_unknown"), ("none", "clean"), _kbqa_sets, _known_groups, _kbqa_scorer
    ),
    LabelledConfig: FinetuneData(
        LABELLED_SETS,
        ("test",),
        ("none",),
        _labelled_sets,
        lambda examples: {"train_acc": examples},
        lambda cfg: _score_labelled,
    ),
}


def finetune_data(cfg: DictConfig) -> FinetuneData:
    """The kind of fine-tuning data `cfg.data` is, checked against the mitigation."""
    kind = FINETUNE_DATA.get(OmegaConf.get_type(cfg.data))
    if kind is None:
        raise UserError(
            f"data={cfg.data.name} is a pretraining corpus; halluc finetune takes data=kbqa (kbqa_tiny) or data=labelled"
        )
    if cfg.mitigation.name not in kind.mitigations:
        raise UserError(
            f"mitigation={cfg.mitigation.name} does not apply to data={cfg.data.name}; "
            f"use mitigation={' or '.join(kind.mitigations)}"
        )
    return kind


def run(cfg: DictConfig) -> None:
    """Fine-tune the checkpoint in `cfg.ckpt`; everything lands in the Hydra run dir."""
    check_finetune_mitigation(cfg.mitigation)  # before the run dir gets anything
    kind = finetune_data(cfg)
    qa_format(cfg.data)  # a prompt template that cannot be filled fails here, not after training
    accelerator = build_accelerator(cfg.device)
    _check_freeze_processes(cfg.freeze.name, accelerator.num_processes)
    run_dir = start_run(cfg, accelerator, kept_on_resume=("ckpt", "data", "freeze"))
    pretrain_dir, checkpoint = resolve_run(cfg.ckpt)
    resume_from = checkpoint_to_resume(run_dir, cfg.resume)
    tokenizer = load_tokenizer(checkpoint)
    model = load_model(checkpoint)
    freeze = apply_freeze(model, cfg.freeze)
    if resume_from is not None:
        freeze.restore(model, resume_from)
    describe_model(model, notes=freeze.notes)
    trainable, total = count_parameters(model)  # after freezing (gradual: at the start), for halluc score

    def batches(examples: list[QAExample]) -> ExampleBatches:
        encoded = [_encode(tokenizer, cfg.data, example) for example in examples]
        return ExampleBatches(encoded, cfg.train.batch_size, tokenizer.pad_token_id, cfg.seed)

    # The main process writes the sets (and cleans them) first; the others then read them back.
    with accelerator.main_process_first():
        qa_sets = _qa_sets(cfg, kind, pretrain_dir, tokenizer, run_dir / rundir.QA_DIR)
        # mitigation=clean probes the still pretrained model (LoRA adapters start as the identity)
        finetune_set = prepare_finetune_set(
            cfg, qa_sets["finetune"], model, tokenizer, accelerator.device, run_dir, resuming=resume_from is not None
        )
    limit = getattr(model, "max_positions", None)  # a Transformer's position table ends there; an LSTM's never
    _check_lengths(qa_sets, lambda example: _encode(tokenizer, cfg.data, example), limit)
    check_last_batch(len(finetune_set), cfg.train.batch_size, accelerator.num_processes)
    fit_groups = {**kind.fit_groups(finetune_set), "val_acc": qa_sets["valid"]}
    fit_accuracy = FitAccuracy({name: batches(group) for name, group in fit_groups.items() if group})
    trainer = Trainer(
        model,
        tokenizer,
        cfg.train,
        accelerator,
        run_dir,
        train_data=pin_batches(batches(finetune_set), accelerator.device),
        valid_data=pin_batches(batches(qa_sets["valid"]), accelerator.device),
        evaluators=(fit_accuracy,),
        parameters=freeze.optimizer_parameters(model),
        on_step=lambda step: freeze.on_step(model, step),
    )
    result = trainer.fit(resume_from)
    summary = {
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "val_loss": result.val_loss,
        "best_val_loss": result.best_val_loss,
        **{name: trainer.last_metrics.get(name) for name in fit_accuracy.groups},
        "seconds": result.seconds,
        "trainable_parameters": trainable,
        "total_parameters": total,
    }
    if cfg.eval_after and accelerator.is_main_process:
        summary.update(evaluate_tests(cfg, run_dir, kind, qa_sets, tokenizer, accelerator.device))
    if accelerator.is_main_process:
        atomic_write_json(run_dir / rundir.SUMMARY_FILE, summary)
        print_table(f"finetune {model.family}, freeze={cfg.freeze.name}: {run_dir}", summary)


def evaluate_tests(
    cfg: DictConfig,
    run_dir: Path,
    kind: FinetuneData,
    qa_sets: dict[str, list[QAExample]],
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
) -> dict[str, float]:
    """Answer the test sets with the best and the final weights, and score them.

    Gekhman et al. compare the early-stopping point with convergence: Unknown examples are
    nearly harmless at the first and hurt at the second. Writes eval/<point>/ (early_stop:
    the best weights, final: the last) with predictions.jsonl and scores.json; returns the
    headline rates for the summary.
    """
    template, abstain_phrase = qa_format(cfg.data)
    examples = [example for name in kind.tests for example in qa_sets[name]]
    score = kind.scorer(cfg)
    headline: dict[str, float] = {}
    for point, weights in rundir.EVAL_WEIGHTS.items():
        model_dir = complete_dir(run_dir / weights)
        if model_dir is None:
            continue
        model = load_model(model_dir).to(device)
        decoder = Decoder(model, tokenizer, cfg.decoding, device, cfg.seed)
        records = answer_questions(decoder, examples, template, abstain_phrase)
        scores, rates = score(records)
        out_dir = run_dir / rundir.EVAL_DIR / point
        atomic_write_jsonl(out_dir / rundir.PREDICTIONS_FILE, records)
        atomic_write_json(out_dir / rundir.SCORES_FILE, scores)
        headline.update({f"{point}_{name}": value for name, value in rates.items()})
    return headline


def _check_freeze_processes(freeze: str, num_processes: int) -> None:
    # DDP synchronises the gradients of the parameters that train when it wraps the model;
    # one that gradual unfreezing switches on later would train apart on each process.
    if freeze == "gradual" and num_processes > 1:
        raise UserError("freeze=gradual runs in one process only; launch it without torchrun or pick another freeze")


def _qa_sets(
    cfg: DictConfig, kind: FinetuneData, pretrain_dir: Path, tokenizer: PreTrainedTokenizerBase, directory: Path
) -> dict[str, list[QAExample]]:
    """The run's QA sets: read back when resuming, else built and written."""
    if all((directory / f"{name}.jsonl").is_file() for name in kind.sets):
        return {name: read_qa_file(directory / f"{name}.jsonl") for name in kind.sets}
    sets = kind.build(cfg, pretrain_dir, tokenizer)
    write_qa_sets(directory, sets)
    return sets


def _check_lengths(
    qa_sets: dict[str, list[QAExample]], encode: Callable[[QAExample], Example], limit: int | None
) -> None:
    """Fail before training, naming the set, where a prompt and its answer exceed the model's positions."""
    if limit is None:
        return
    for name, examples in qa_sets.items():
        lengths = [len(example.prompt_ids) + len(example.answer_ids) for example in map(encode, examples)]
        too_long = sum(length > limit for length in lengths)
        if too_long:
            raise UserError(
                f"qa/{name}.jsonl: {too_long} example(s) longer than the model's {limit} positions (the longest: "
                f"{max(lengths)} tokens); use shorter texts, or pretrain with a larger model.max_positions"
            )


def _encode(tokenizer: PreTrainedTokenizerBase, data_cfg: DictConfig, example: QAExample) -> Example:
    prompt = tokenizer(format_prompt(data_cfg, example.question), add_special_tokens=False)["input_ids"]
    answer = tokenizer(" " + example.answer, add_special_tokens=False)["input_ids"]
    return Example(prompt, answer + [tokenizer.eos_token_id])
