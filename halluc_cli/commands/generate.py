"""`halluc generate`: answer a run's questions (or continue free prompts) in batches.

validate -> load the model -> read questions or prompts -> batched decoding -> predictions.jsonl
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from halluc_cli.commands.common import ModelSource, resolve_model, start_run
from halluc_cli.console import print_table, print_warning
from halluc_cli.data.qa import QAExample, qa_format, read_qa_file
from halluc_cli.data.tokenizer import load_tokenizer
from halluc_cli.decoding import Decoder
from halluc_cli.errors import UserError
from halluc_cli.hidden_probe import HiddenStateProbe
from halluc_cli.io import atomic_write_jsonl
from halluc_cli.models import check_causal_lm, check_model_layer, open_model
from halluc_cli.data.kb import load_kb
from halluc_cli.predictions import answer_questions
from halluc_cli.uncertainty import Meaning, answer_meaning
from halluc_cli.rundir import CONFIG_FILE, EVAL_DIR, EVAL_WEIGHTS, PREDICTIONS_FILE, PROBE_FILE, QA_DIR
from halluc_cli.training.device import build_accelerator, load_dtype


def run(cfg: DictConfig) -> None:
    """Write `predictions.jsonl` for the configured questions or prompts."""
    if cfg.prompts and cfg.questions is not None:
        raise UserError("give questions=<sets or QA files> or prompts=<text file>, not both")
    if cfg.questions is not None and not cfg.questions:
        raise UserError("questions=[] names no set; name sets (questions=[test_known]) or leave questions out")
    source = resolve_model(cfg.ckpt, cfg.weights)
    data = _run_data(source.run_dir)
    prompt_template, abstain_phrase = qa_format(data, cfg.prompt_template, cfg.abstain_phrase)
    examples = None if cfg.prompts else _questions(cfg.questions, source.run_dir)
    prompts = _read_prompts(Path(cfg.prompts)) if cfg.prompts else None
    if source.foreign:
        check_causal_lm(source.model_dir, cfg.trust_remote_code)
    probe = _probe(cfg, source) if cfg.detector.name == "hidden_probe" else None
    tokenizer = load_tokenizer(source.model_dir, cfg.trust_remote_code)
    meaning = _answer_meaning(cfg, data) if examples is not None else None
    run_dir = start_run(cfg)

    accelerator = build_accelerator(cfg.device)
    device = accelerator.device
    dtype = load_dtype(accelerator, training=False)
    model = open_model(source.model_dir, trust_remote_code=cfg.trust_remote_code, dtype=dtype).to(device)
    decoder = Decoder(model, tokenizer, cfg.decoding, device, cfg.seed, hidden_layer=probe.layer if probe else None)

    if prompts is not None:
        records = [
            {"id": f"prompt-{i}", "prompt": prompt, "prediction": outputs[0] if len(outputs) == 1 else outputs}
            for i, (prompt, outputs) in enumerate(zip(prompts, decoder.generate(prompts)))
        ]
    else:
        records = answer_questions(decoder, examples, prompt_template, abstain_phrase, meaning, probe)
    atomic_write_jsonl(run_dir / PREDICTIONS_FILE, records)
    print_table(f"generate: {run_dir / PREDICTIONS_FILE}", _overview(records))


def _probe(cfg: DictConfig, source: ModelSource) -> HiddenStateProbe:
    """The hidden-state probe that scores the answers: detector.path, else the one the ckpt
    run's finetune fitted to the weights generate loads (eval/<point>/hidden_probe.json)."""
    if cfg.prompts:
        raise UserError("detector=hidden_probe scores answers to questions; prompts= has none (use questions=)")
    if cfg.detector.path is not None:
        path = Path(cfg.detector.path)
    else:
        point = next((p for p, weights in EVAL_WEIGHTS.items() if weights == Path(source.model_dir).name), None)
        if source.run_dir is None or point is None:
            raise UserError(
                f"ckpt={cfg.ckpt} is no finetune run's weights, so it has no probe of its own; "
                f"give detector.path=<a {PROBE_FILE}>"
            )
        path = source.run_dir / EVAL_DIR / point / PROBE_FILE
    probe = HiddenStateProbe.load(path)
    check_model_layer(source.model_dir, probe.layer)
    return probe


def _answer_meaning(cfg: DictConfig, data: DictConfig) -> Meaning:
    """What groups sampled answers by meaning: normalization, and the aliases of the training
    run's KB where there are samples to group and that KB is still where the run read it."""
    sampling = cfg.decoding.name == "sample" and cfg.decoding.num_samples > 1
    if not sampling or "kb" not in data:
        return answer_meaning()
    try:
        return answer_meaning(load_kb(data.kb.path))
    except UserError as error:
        print_warning(f"samples grouped by normalization alone: the run's KB does not load ({error})")
        return answer_meaning()


def _run_data(source_dir: Path | None) -> DictConfig:
    """The training run's data settings (its prompt template, abstain phrase, KB); empty for a
    model halluc did not train."""
    run_config = source_dir / CONFIG_FILE if source_dir is not None else None
    if run_config is None or not run_config.is_file():
        return OmegaConf.create({})
    return OmegaConf.load(run_config).get("data") or OmegaConf.create({})


def _questions(names: list[str] | None, source_dir: Path | None) -> list[QAExample]:
    """QA examples from the run's sets (by name; None: its test sets) or from JSONL files (by
    path); a model halluc did not train (`source_dir` None) has no sets, only files."""
    if source_dir is None and names is None:
        raise UserError(
            "ckpt is a model halluc did not train, so it has no test sets; give questions=<QA JSONL file> "
            "(e.g. a fine-tuning run's qa/test_unknown.jsonl) or prompts=<text file>"
        )
    qa_dir = source_dir / QA_DIR if source_dir is not None else None
    if names is None:
        names = sorted(path.stem for path in qa_dir.glob("test*.jsonl"))
        if not names:
            raise UserError(
                f"{source_dir} has no test sets (qa/test*.jsonl; a pretrain run has none); "
                "give questions=<QA JSONL file> or prompts=<text file>"
            )
    examples: list[QAExample] = []
    for name in names:
        path = qa_dir / f"{name}.jsonl" if qa_dir is not None else Path(name)
        if not path.is_file():
            path = Path(name)
        if not path.is_file():
            if qa_dir is None:
                raise UserError(f"questions={name}: no such file (a QA JSONL file)")
            sets = ", ".join(sorted(found.stem for found in qa_dir.glob("*.jsonl"))) or "none"
            raise UserError(
                f"questions={name}: neither a QA set of {source_dir} (qa/{name}.jsonl) nor a file; "
                f"use one of the run's sets ({sets}) or a QA JSONL path"
            )
        examples.extend(read_qa_file(path))
    return examples


def _read_prompts(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"prompts={path}: no such file (one prompt a line)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"prompts={path}: not UTF-8 text ({error.reason}); save the file as UTF-8") from error
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompts={path} holds no prompt")
    return prompts


def _overview(records: list[dict[str, Any]]) -> dict[str, Any]:
    overview: dict[str, Any] = {"predictions": len(records)}
    if records and "abstained" in records[0]:
        overview["abstained"] = sum(r["abstained"] for r in records)
    return overview
