"""`halluc generate`: answer a run's questions (or continue free prompts) in batches.

validate -> load the model -> read questions or prompts -> batched decoding -> predictions.jsonl
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from halluc_cli.commands.common import print_table, resolve_run, start_run
from halluc_cli.config import KBQAConfig
from halluc_cli.data.kbqa import QAExample, read_qa_file
from halluc_cli.data.labelled import is_labelled
from halluc_cli.data.normalize import normalize_text
from halluc_cli.data.tokenizer import load_tokenizer
from halluc_cli.decoding import Decoder
from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_jsonl
from halluc_cli.models import load_model
from halluc_cli.training.device import build_accelerator

PREDICTIONS_FILE = "predictions.jsonl"


def run(cfg: DictConfig) -> None:
    """Write `predictions.jsonl` for the configured questions or prompts."""
    source_dir, model_dir = resolve_run(cfg.ckpt, cfg.weights)
    prompt_template, abstain_phrase = _qa_format(cfg, source_dir)
    examples = None if cfg.prompts else _questions(cfg.questions, source_dir)
    prompts = _read_prompts(Path(cfg.prompts)) if cfg.prompts else None
    run_dir = start_run(cfg)

    device = build_accelerator(cfg.device).device
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir).to(device)
    decoder = Decoder(model, tokenizer, cfg.decoding, device, cfg.seed)

    if prompts is not None:
        records = [
            {"id": f"prompt-{i}", "prompt": prompt, "prediction": outputs[0] if len(outputs) == 1 else outputs}
            for i, (prompt, outputs) in enumerate(zip(prompts, decoder.generate(prompts)))
        ]
    else:
        records = answer_questions(decoder, examples, prompt_template, abstain_phrase)
    atomic_write_jsonl(run_dir / PREDICTIONS_FILE, records)
    print_table(f"generate: {run_dir / PREDICTIONS_FILE}", _overview(records))


def _qa_format(cfg: DictConfig, source_dir: Path) -> tuple[str, str]:
    """The prompt template and abstain phrase: given, else the training run's, else the defaults."""
    run_config = source_dir / "config.yaml"
    data = OmegaConf.load(run_config).get("data", {}) if run_config.is_file() else {}
    return qa_format(data, cfg.prompt_template, cfg.abstain_phrase)


def qa_format(
    data: Mapping[str, Any], prompt_template: str | None = None, abstain_phrase: str | None = None
) -> tuple[str, str]:
    """The prompt template and abstain phrase: given, else the data config's, else the
    defaults (labelled data has no abstain phrase). The template must take {question} alone."""
    defaults = KBQAConfig()
    template = prompt_template or data.get("prompt_template") or defaults.prompt_template
    abstain = abstain_phrase or data.get("abstain_phrase") or defaults.abstain_phrase
    try:
        template.format(question="")
    except (KeyError, IndexError, ValueError) as error:
        raise UserError(
            f"prompt_template {template!r} does not format ({type(error).__name__}: {error}); write "
            "{question} where the question (labelled data: the text) goes, and {{ }} for literal braces"
        ) from error
    if "{question}" not in template:
        raise UserError(f"prompt_template {template!r} has no {{question}} placeholder")
    return template, abstain


def _questions(names: list[str] | None, source_dir: Path) -> list[QAExample]:
    """QA examples from the run's sets (by name; None: its test sets) or from JSONL files (by path)."""
    qa_dir = source_dir / "qa"
    if names is None:
        names = sorted(path.stem for path in qa_dir.glob("test*.jsonl"))
        if not names:
            raise UserError(
                f"{source_dir} has no test sets (qa/test*.jsonl; a pretrain run has none); "
                "give questions=<QA JSONL file> or prompts=<text file>"
            )
    examples: list[QAExample] = []
    for name in names:
        path = qa_dir / f"{name}.jsonl"
        if not path.is_file():
            path = Path(name)
        if not path.is_file():
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
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompts={path} holds no prompt")
    return prompts


def answer_questions(
    decoder: Decoder, examples: list[QAExample], prompt_template: str, abstain_phrase: str
) -> list[dict[str, Any]]:
    """Prediction records for QA examples, decoded in batches."""
    answers = decoder.generate([prompt_template.format(question=e.question) for e in examples])
    return [_prediction(e, outputs, abstain_phrase) for e, outputs in zip(examples, answers)]


def _prediction(example: QAExample, outputs: list[str], abstain_phrase: str) -> dict[str, Any]:
    """DESIGN.md's prediction record (plus subject and relation for scoring by relation, and
    for labelled text the label)."""
    prediction = outputs[0]
    return {
        "id": example.id,
        "question": example.question,
        "prediction": prediction,
        "answer": example.answer,
        "aliases": example.aliases,
        "known": example.known,
        "abstained": normalize_text(prediction) == normalize_text(abstain_phrase),
        "subject": example.subject,
        "relation": example.relation,
        # what halluc score task=classification compares the prediction with
        **({"label": example.answer} if is_labelled(example) else {}),
        **({"samples": outputs} if len(outputs) > 1 else {}),
    }


def _overview(records: list[dict[str, Any]]) -> dict[str, Any]:
    overview: dict[str, Any] = {"predictions": len(records)}
    if records and "abstained" in records[0]:
        overview["abstained"] = sum(r["abstained"] for r in records)
    return overview
