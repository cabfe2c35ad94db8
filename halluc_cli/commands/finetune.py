"""`halluc finetune`: fine-tune a model on knowledge-controlled QA or labelled text.

validate -> load the model (a halluc run, or any Hugging Face causal LM) -> QA sets
(data=kbqa: known/unknown from the pretraining run's split, or from probing the model itself,
data.known_from=probe; data=qa_file: your facts, probed; data=labelled: text -> label word)
-> freeze strategy -> batches -> the shared training loop -> answer and score the test sets
(eval_after) -> summary. Of several processes (torchrun), the main one builds the QA sets
(probes, cleans) and answers the test sets; the others read the sets back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from halluc_cli import rundir
from halluc_cli.commands.common import (
    ModelSource,
    checkpoint_to_resume,
    describe_model,
    resolve_model,
    start_run,
    sweep_job,
)
from halluc_cli.config import KBQAConfig, KnownFrom, LabelledConfig, QAFileConfig
from halluc_cli.console import print_note, print_table, print_warning
from halluc_cli.data.categories import category_sets, guessable_relations, kb_pool, read_user_qa_file
from halluc_cli.data.kb import KnowledgeBase, load_kb
from halluc_cli.data.kbqa import build_qa_sets, load_split
from halluc_cli.data.labelled import build_labelled_sets, check_label_words
from halluc_cli.data.qa import QAExample, format_prompt, qa_format, read_qa_file, write_qa_sets
from halluc_cli.data.tokenizer import load_tokenizer, prompt_ids
from halluc_cli.decoding import Decoder
from halluc_cli.errors import UserError
from halluc_cli.hidden_probe import train_and_score
from halluc_cli.io import atomic_write_json, atomic_write_jsonl, complete_dir
from halluc_cli.ledger import SHARES as LEDGER_SHARES, Ledger, check_ledger, start_ledger, statement_completions
from halluc_cli.scoring.detection import judge_detectors
from halluc_cli.scoring.metrics import classification_metrics, kb_aliases, score_predictions
from halluc_cli.mitigation import check_finetune_mitigation, prepare_finetune_set
from halluc_cli.mitigation.distill import self_distillation
from halluc_cli.mitigation.replay import mixed_batches, replay_examples
from halluc_cli.models import (
    LanguageModel, check_causal_lm, check_model_layer, count_parameters, load_model, open_model,
)
from halluc_cli.models.base import check_layer
from halluc_cli.predictions import decode_answers, prediction_records
from halluc_cli.uncertainty import answer_meaning
from halluc_cli.probe import (
    CATEGORIES,
    ModelAnswerer,
    ProbePrompt,
    build_probes,
    knowledge_records,
    model_identity,
    probe_pool,
)
from halluc_cli.training.batches import Example, ExampleBatches, replay_rows
from halluc_cli.training.device import build_accelerator, load_dtype, pin_batches, release_memory
from halluc_cli.training.distributed import check_last_batch
from halluc_cli.training.evaluators import FitAccuracy
from halluc_cli.training.freeze import apply_freeze, cast_for_training
from halluc_cli.training.loggers import build_trackers, check_trackers, flat_params
from halluc_cli.training.loop import Trainer


# prediction records -> (scores.json, headline numbers for the summary)
Scorer = Callable[[list[dict[str, Any]]], tuple[dict[str, Any], dict[str, float]]]
TRAINING_SETS = ("finetune", "valid")  # besides the test sets, what every run's qa/ holds


@dataclass(frozen=True)
class SetsContext:
    """What building a run's QA sets may draw on: the model (the probe asks it), where it came
    from, and the facts to probe with their prompts (read and checked before the model loaded)."""

    source: ModelSource
    model: LanguageModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    precision: str  # where and how the model computes ("cuda/bf16"): part of what the probe finds
    run_dir: Path
    pool: list[QAExample] | None  # data.known_from=probe: the facts to ask about
    probes: list[list[ProbePrompt]] | None  # their prompts


@dataclass(frozen=True)
class FinetuneData:
    """What fine-tuning does with one kind of data, the schema of `cfg.data`."""

    mitigations: tuple[str, ...]  # the mitigation= values that apply
    # (finetune cfg, the model's source) -> the facts the probe asks (None: no probe), read and
    # checked before anything is written or loaded; a mistake is a UserError
    pool: Callable[[DictConfig, ModelSource], list[QAExample] | None]
    # (finetune cfg, what the sets may draw on) -> the QA sets: finetune, valid, test_*
    build: Callable[[DictConfig, SetsContext], dict[str, list[QAExample]]]
    # the fine-tuning set -> the groups whose train accuracy each evaluation logs
    fit_groups: Callable[[list[QAExample]], dict[str, list[QAExample]]]
    # the run's KB (None: the data has none) -> the scorer of one set of weights' test answers
    scorer: Callable[[KnowledgeBase | None], Scorer]


def _kbqa_pool(cfg: DictConfig, source: ModelSource) -> list[QAExample] | None:
    if cfg.data.known_from == KnownFrom.probe:
        return kb_pool(cfg.data)
    if source.foreign:
        raise UserError(
            f"ckpt={cfg.ckpt} was not pretrained by halluc, so no split says which facts it read; "
            "set data.known_from=probe to find out by asking it (SliCK)"
        )
    if cfg.data.finetune_category is not None:
        raise UserError("data.finetune_category needs data.known_from=probe (the categories are the probe's)")
    return None


def _kbqa_sets(cfg: DictConfig, context: SetsContext) -> dict[str, list[QAExample]]:
    if cfg.data.known_from == KnownFrom.probe:
        return _probed_sets(cfg, context)
    return build_qa_sets(cfg.data, load_split(context.source.run_dir), cfg.seed)


def _qa_file_pool(cfg: DictConfig, source: ModelSource) -> list[QAExample]:
    if cfg.data.known_from != KnownFrom.probe:
        raise UserError("data=qa_file needs data.known_from=probe: a QA file says nothing of what the model read")
    return read_user_qa_file(cfg.data)


def _probed_sets(cfg: DictConfig, context: SetsContext) -> dict[str, list[QAExample]]:
    """Ask the model about every fact of the pool (SliCK), record the categories in the run
    dir, and draw the sets from them."""
    revision = getattr(context.model, "revision", None)  # a hub model's commit (the LSTM has none)
    pool, model_id = context.pool, f"{model_identity(context.source.model_dir, revision)} {context.precision}"
    answerer = ModelAnswerer(context.model, context.tokenizer, cfg.probe, context.device, cfg.probe.seed)
    knowledge = probe_pool(pool, context.probes, answerer, cfg.probe, cfg.data, model_id)
    atomic_write_jsonl(context.run_dir / rundir.CATEGORIES_FILE, knowledge_records(pool, knowledge))
    counts = {category: sum(k.category == category for k in knowledge) for category in CATEGORIES}
    print_table(f"SliCK categories of {len(pool)} facts ({context.run_dir / rundir.CATEGORIES_FILE})", counts)
    return category_sets(pool, [k.category for k in knowledge], cfg.data, cfg.seed)


def _known_groups(examples: list[QAExample]) -> dict[str, list[QAExample]]:
    # Gekhman et al.: Unknown examples are fitted more slowly than Known ones; watch both.
    return {
        "train_acc_known": [e for e in examples if e.known],
        "train_acc_unknown": [e for e in examples if not e.known],
    }


def _qa_scorer(kb: KnowledgeBase | None) -> Scorer:
    def score(records: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float]]:
        scores = {**score_predictions(records, kb), "detection": judge_detectors(records, kb)}
        headline = {
            f"{group}_{metric}": rates[metric]
            for group, rates in scores["by_known"].items()
            for metric in ("accuracy", "hallucination_rate")
        }
        return scores, headline

    return score


def _labelled_sets(cfg: DictConfig, context: SetsContext) -> dict[str, list[QAExample]]:
    sets = build_labelled_sets(cfg.data)
    check_label_words(context.tokenizer, {example.answer for examples in sets.values() for example in examples})
    return sets


def _score_labelled(records: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float]]:
    scores = classification_metrics(records)  # the seed articles' error rate, no known/unknown split
    return scores, {metric: scores[metric] for metric in ("error_rate", "accuracy")}


# the mitigations that act on training alone, and so apply to any data
KEEP_EVERY_EXAMPLE = ("distill", "replay")
FINETUNE_DATA: dict[type, FinetuneData] = {
    KBQAConfig: FinetuneData(("none", "clean", *KEEP_EVERY_EXAMPLE), _kbqa_pool, _kbqa_sets, _known_groups, _qa_scorer),
    QAFileConfig: FinetuneData(("none", *KEEP_EVERY_EXAMPLE), _qa_file_pool, _probed_sets, _known_groups, _qa_scorer),
    LabelledConfig: FinetuneData(
        ("none", *KEEP_EVERY_EXAMPLE),
        lambda cfg, source: None,
        _labelled_sets,
        lambda examples: {"train_acc": examples},
        lambda kb: _score_labelled,
    ),
}


def finetune_data(cfg: DictConfig) -> FinetuneData:
    """The kind of fine-tuning data `cfg.data` is, checked against the mitigation."""
    kind = FINETUNE_DATA.get(OmegaConf.get_type(cfg.data))
    if kind is None:
        raise UserError(
            f"data={cfg.data.name} is a pretraining corpus; halluc finetune takes data=kbqa (kbqa_tiny), "
            "data=qa_file or data=labelled"
        )
    if cfg.mitigation.name not in kind.mitigations:
        raise UserError(
            f"mitigation={cfg.mitigation.name} does not apply to data={cfg.data.name}; "
            f"use mitigation={' or '.join(kind.mitigations)}"
        )
    return kind


def run(cfg: DictConfig) -> None:
    """Fine-tune the model `cfg.ckpt` names; everything lands in the Hydra run dir."""
    check_finetune_mitigation(cfg.mitigation)  # before the run dir gets anything
    check_trackers(cfg.logger)
    kind = finetune_data(cfg)
    check_ledger(cfg)
    qa_format(cfg.data)  # a prompt template that cannot be filled fails here, not after training
    source = resolve_model(cfg.ckpt)
    # What can be checked without the weights is, before the run dir gets anything: the facts
    # and their probe prompts, a foreign model's config, the tokenizer.
    pool = kind.pool(cfg, source)
    probes = _probe_prompts(cfg, pool) if pool is not None else None
    if source.foreign:
        check_causal_lm(source.model_dir, cfg.trust_remote_code)
    _check_detector(cfg, source.model_dir)
    tokenizer = load_tokenizer(source.model_dir, cfg.trust_remote_code)
    replayed = replay_examples(cfg, source.run_dir, tokenizer)  # mitigation=replay (distill on replay)
    accelerator = build_accelerator(cfg.device)
    _check_freeze_processes(cfg.freeze.name, accelerator.num_processes)
    run_dir = start_run(cfg, accelerator, kept_on_resume=("ckpt", "data", "freeze", "mitigation"))
    resume_from = checkpoint_to_resume(run_dir, cfg.resume)
    model = open_model(
        source.model_dir, trust_remote_code=cfg.trust_remote_code, dtype=load_dtype(accelerator, training=True)
    )
    if cfg.detector.name == "hidden_probe":  # a hub model's depth is known once it is loaded: before training
        check_layer(cfg.detector.layer, len(model.blocks()))
    freeze = apply_freeze(model, cfg.freeze)
    # What trains in fp32 (the optimizer's masters), the frozen rest in the GPU's precision.
    cast_for_training(model, freeze, load_dtype(accelerator, training=False))
    if resume_from is not None:
        freeze.restore(model, resume_from)
    describe_model(model, notes=freeze.notes)
    trainable, total = count_parameters(model)  # after freezing (gradual: at the start), for halluc score

    def encode(examples: list[QAExample]) -> list[Example]:
        return [_encode(tokenizer, cfg.data, example) for example in examples]

    def batches(examples: list[QAExample]) -> ExampleBatches:
        return ExampleBatches(encode(examples), cfg.train.batch_size, tokenizer.pad_token_id, cfg.seed)

    # The main process writes the sets (probes, cleans) first; the others then read them back.
    # Autocast: the probe runs a model whose trainable and frozen weights differ in precision.
    with accelerator.main_process_first(), accelerator.autocast():
        precision = f"{accelerator.device.type}/{accelerator.mixed_precision}"
        context = SetsContext(source, model, tokenizer, accelerator.device, precision, run_dir, pool, probes)
        qa_sets = _qa_sets(cfg, kind, context, run_dir / rundir.QA_DIR)
        # mitigation=clean probes the still pretrained model (LoRA adapters start as the identity)
        finetune_set = prepare_finetune_set(
            cfg, qa_sets["finetune"], model, tokenizer, accelerator.device, run_dir, resuming=resume_from is not None
        )
    limit = getattr(model, "max_positions", None)  # a Transformer's position table ends there; an LSTM's never
    _check_lengths(qa_sets, lambda example: _encode(tokenizer, cfg.data, example), limit)
    qa_rows = cfg.train.batch_size - (replay_rows(cfg.mitigation.share, cfg.train.batch_size) if replayed else 0)
    check_last_batch(len(finetune_set), qa_rows, accelerator.num_processes)
    train_data = batches(finetune_set) if replayed is None else \
        mixed_batches(encode(finetune_set), replayed, cfg, tokenizer.pad_token_id)
    # mitigation=distill: its reference is the model as the run started, loaded anew
    distill = self_distillation(cfg, source.model_dir, accelerator) if cfg.mitigation.name == "distill" else None
    fit_groups = {**kind.fit_groups(finetune_set), "val_acc": qa_sets["valid"]}
    fit_accuracy = FitAccuracy({name: batches(group) for name, group in fit_groups.items() if group})
    trainer = Trainer(
        model,
        tokenizer,
        cfg.train,
        accelerator,
        run_dir,
        train_data=pin_batches(train_data, accelerator.device),
        valid_data=pin_batches(batches(qa_sets["valid"]), accelerator.device),
        evaluators=(fit_accuracy,),
        parameters=freeze.optimizer_parameters(model),
        on_step=lambda step: freeze.on_step(model, step),
        trackers=build_trackers(cfg.logger, run_dir),
        hparams=flat_params(cfg),
        loss_terms=() if distill is None else (distill,),
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
    family = model.family
    # The trained model and its optimizer leave the GPU before the test sets load the saved
    # weights: a model that fits once must not need to fit twice.
    del trainer, model, freeze, context, distill
    accelerator.free_memory()  # it holds the prepared model and optimizer too
    if cfg.eval_after and accelerator.is_main_process:
        trained_sets = {**qa_sets, "finetune": finetune_set}  # mitigation=clean: the set it cleaned
        dtype = load_dtype(accelerator, False)
        summary.update(evaluate_tests(cfg, run_dir, kind, trained_sets, tokenizer, accelerator.device, dtype))
    if accelerator.is_main_process:
        atomic_write_json(run_dir / rundir.SUMMARY_FILE, summary)
        _print_result(cfg, f"finetune {family}, freeze={cfg.freeze.name}: {run_dir}", summary, run_dir)


# summary.json key -> its name in a sweep's line per run: the end of training's key figures
_KEY_FIGURES = {
    "final_known_accuracy": "known acc",
    "final_known_hallucination_rate": "known halluc",
    "final_unknown_hallucination_rate": "unknown halluc",
    "final_error_rate": "error rate",  # data=labelled
    "best_val_loss": "best val loss",
}


def _print_result(cfg: DictConfig, title: str, summary: dict[str, Any], run_dir: Path) -> None:
    """The run's full table when it runs alone (or summary_table=true); in a -m sweep (or
    summary_table=false), one line of its key figures after its place in the sweep, so that a
    sweep of 30 runs reads as 30 lines (`halluc score runs=` gathers the tables)."""
    job = sweep_job()
    if cfg.summary_table or (cfg.summary_table is None and job is None):
        print_table(title, summary)
        return
    figures = ", ".join(f"{name} {summary[key]:.3f}" for key, name in _KEY_FIGURES.items()
                        if isinstance(summary.get(key), float))
    # Hydra's "#<job> : <overrides>" line above says which settings the run had
    place = "run" if job is None else f"run {job.number}/{job.size or '?'}"
    print_note(f"{place}: {figures}, {summary['steps']} steps in {summary['seconds']:.0f} s -> {run_dir}")


def evaluate_tests(
    cfg: DictConfig,
    run_dir: Path,
    kind: FinetuneData,
    qa_sets: dict[str, list[QAExample]],
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, float]:
    """Answer the test sets with the best and the final weights, and score them.

    Gekhman et al. compare the early-stopping point with convergence: Unknown examples are
    nearly harmless at the first and hurt at the second. Writes eval/<point>/ (early_stop:
    the best weights, final: the last) with predictions.jsonl and scores.json, and
    valid_predictions.jsonl (the validation set's answers, for `halluc score
    mitigation=abstain_uncertain` to calibrate on); with detector=hidden_probe, the probe fitted
    to the validation answers (hidden_probe.json), which scores the test answers; with
    ledger=true, the forgetting ledger of the test facts (ledger.jsonl, its shares in
    scores.json). Returns the headline rates for the summary.
    """
    template, abstain_phrase = qa_format(cfg.data)
    examples = [example for name in _test_sets(qa_sets) for example in qa_sets[name]]
    asked = examples + qa_sets["valid"]  # the validation set too: held-out answers to calibrate on
    kb = load_kb(cfg.data.kb.path) if "kb" in cfg.data else None  # once for both sets of weights
    score = kind.scorer(kb)
    meaning = answer_meaning(kb)  # groups the samples
    probe_layer = cfg.detector.layer if cfg.detector.name == "hidden_probe" else None
    ledger = _ledger(cfg, qa_sets["finetune"], examples, kb, tokenizer, device, dtype) if cfg.ledger else None
    headline: dict[str, float] = {}
    for point, weights in rundir.EVAL_WEIGHTS.items():
        model_dir = complete_dir(run_dir / weights)
        if model_dir is None:
            continue
        model = load_model(model_dir, dtype=dtype).to(device)
        decoder = Decoder(model, tokenizer, cfg.decoding, device, cfg.seed, hidden_layer=probe_layer)
        answers = decode_answers(decoder, asked, template)
        after = statement_completions(cfg, model, tokenizer, device, examples) if ledger is not None else []
        del decoder, model  # before the next point's weights load
        release_memory(device)
        records = prediction_records(asked, answers, abstain_phrase, meaning)
        records, valid_records = records[: len(examples)], records[len(examples) :]
        out_dir = run_dir / rundir.EVAL_DIR / point
        if probe_layer is not None:
            valid, test = (valid_records, answers[len(examples) :]), (records, answers[: len(examples)])
            aliases = kb_aliases(kb) if kb is not None else None
            failed = train_and_score(cfg.detector, valid, test, out_dir / rundir.PROBE_FILE, aliases, cfg.seed)
            if failed:
                print_warning(failed)
        scores, rates = score(records)
        if ledger is not None:
            shares = scores["ledger"] = ledger.write(out_dir, records, after)
            rates.update({f"ledger_{name}": shares[name] for name in LEDGER_SHARES if name in shares})
        atomic_write_jsonl(out_dir / rundir.VALID_PREDICTIONS_FILE, valid_records)
        atomic_write_jsonl(out_dir / rundir.PREDICTIONS_FILE, records)
        atomic_write_json(out_dir / rundir.SCORES_FILE, scores)
        headline.update({f"{point}_{name}": value for name, value in rates.items()})
    return headline


def _ledger(
    cfg: DictConfig,
    finetune_set: list[QAExample],
    examples: list[QAExample],
    kb: KnowledgeBase,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    dtype: torch.dtype,
) -> Ledger:
    """The ledger's part that no eval point changes (`start_ledger`), its 'before' completed by
    the pretrained weights (`ckpt`, loaded again: on resume the model in memory had trained)."""
    source = resolve_model(cfg.ckpt)
    pretrained = open_model(source.model_dir, trust_remote_code=cfg.trust_remote_code, dtype=dtype).to(device)
    before = statement_completions(cfg, pretrained, tokenizer, device, examples)
    del pretrained
    release_memory(device)
    return start_ledger(cfg, before, finetune_set, kb)


def _check_detector(cfg: DictConfig, model_dir: str) -> None:
    """A hidden-state probe is fitted to eval_after's validation answers, at a layer the model
    has, to a label the data gives; the probe file is generate's to read."""
    detector = cfg.detector
    if detector.name != "hidden_probe":
        return
    if detector.path is not None:
        raise UserError("detector.path names a probe for halluc generate to use; finetune trains its own (leave it out)")
    if not cfg.eval_after:
        raise UserError("detector=hidden_probe is fitted to the validation answers of eval_after; set eval_after=true")
    if detector.label == "unknown" and OmegaConf.get_type(cfg.data) is LabelledConfig:
        raise UserError("detector.label=unknown needs facts known or not; data=labelled has none (use detector.label=wrong)")
    check_model_layer(model_dir, detector.layer)


def _check_freeze_processes(freeze: str, num_processes: int) -> None:
    # DDP synchronises the gradients of the parameters that train when it wraps the model;
    # one that gradual unfreezing switches on later would train apart on each process.
    if freeze == "gradual" and num_processes > 1:
        raise UserError("freeze=gradual runs in one process only; launch it without torchrun or pick another freeze")


def _qa_sets(cfg: DictConfig, kind: FinetuneData, context: SetsContext, directory: Path) -> dict[str, list[QAExample]]:
    """The run's QA sets: read back when resuming, else built and written. The list of their
    names is written last, so a run stopped while writing them builds them all again."""
    listed = directory / rundir.QA_SETS_FILE
    if listed.is_file():
        return {name: read_qa_file(directory / f"{name}.jsonl") for name in json.loads(listed.read_text("utf-8"))}
    sets = {name: examples for name, examples in kind.build(cfg, context).items() if examples}
    write_qa_sets(directory, sets)
    atomic_write_json(listed, list(sets))
    return sets


def _probe_prompts(cfg: DictConfig, pool: list[QAExample]) -> list[list[ProbePrompt]]:
    """The probe's prompts of every fact of the pool; a relation the probe cannot ask (too few
    facts for the shots, no usable template) fails here, before anything is loaded."""
    for relation, (answer, share) in guessable_relations(pool).items():
        print_warning(
            f"relation {relation!r}: the answer {answer!r} is right for {share:.0%} of its facts, so a model that "
            "guesses it passes for knowing them and the probe cannot tell (Gekhman et al. use relations with many "
            "answers); leave the relation out of the facts (data.relations), or read its categories with that in mind"
        )
    return build_probes(pool, cfg.probe, cfg.data, cfg.probe.seed)


def _test_sets(qa_sets: dict[str, list[QAExample]]) -> list[str]:
    """The sets eval_after answers: test_known and test_unknown, a test set per SliCK
    category (data.known_from=probe), or labelled data's test."""
    return [name for name in qa_sets if name.startswith("test")]


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
    prompt = prompt_ids(tokenizer, format_prompt(data_cfg, example.question))
    answer = tokenizer(" " + example.answer, add_special_tokens=False)["input_ids"]
    return Example(prompt, answer + [tokenizer.eos_token_id])
