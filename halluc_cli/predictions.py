"""Prediction records: what a model answered, one JSON object a line (DESIGN.md).

`answer_questions` decodes QA examples into records (halluc generate; finetune's eval
points); `prediction_files` and `read_predictions` read them back for halluc score, each
record checked for the fields its task reads, and `check_ids` compares them with the
questions they answer.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from halluc_cli.data.labelled import is_labelled
from halluc_cli.data.normalize import normalize_text
from halluc_cli.data.qa import QAExample
from halluc_cli.decoding import Continuation, Decoder
from halluc_cli.errors import UserError
from halluc_cli.hidden_probe import HiddenStateProbe, add_scores, hidden_features
from halluc_cli.io import read_jsonl
from halluc_cli.uncertainty import Meaning, answer_meaning, uncertainty_scores

# The fields each task reads, with the JSON types they may hold.
FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "qa": {
        "id": (str, int), "question": (str,), "prediction": (str,), "answer": (str,),
        "known": (bool,), "abstained": (bool,),
    },
    "classification": {"id": (str, int), "prediction": (str, int, bool), "label": (str, int, bool)},
    "freetext": {"id": (str, int), "prompt": (str,), "prediction": (str,)},
}
_JSON_TYPE = {str: "a string", int: "a number", bool: "true or false"}
_EXAMPLES = 3  # ids named in an id-mismatch error


# --- writing: a model's answers ------------------------------------------------------------


def answer_questions(
    decoder: Decoder,
    examples: list[QAExample],
    prompt_template: str,
    abstain_phrase: str,
    meaning: Meaning | None = None,
    probe: HiddenStateProbe | None = None,
) -> list[dict[str, Any]]:
    """Prediction records for QA examples, decoded in batches, each with its uncertainty
    scores, and a hidden-state `probe`'s (the decoder must keep the probe's layer)."""
    answers = decode_answers(decoder, examples, prompt_template)
    records = prediction_records(examples, answers, abstain_phrase, meaning)
    if probe is not None:
        add_scores(records, probe.estimator, probe.score(hidden_features(answers)))
    return records


def decode_answers(decoder: Decoder, examples: list[QAExample], prompt_template: str) -> list[list[Continuation]]:
    """Each example's answer, in batches: one continuation, or with several samples a prompt
    (decoding=sample) the greedy answer and then the samples that measure how sure it was."""
    prompts = [prompt_template.format(question=e.question) for e in examples]
    return decoder.continuations(prompts, greedy_first=decoder.samples > 1)


def prediction_records(
    examples: list[QAExample], answers: list[list[Continuation]], abstain_phrase: str, meaning: Meaning | None = None
) -> list[dict[str, Any]]:
    """The prediction records of `decode_answers`' answers; `meaning` groups the samples."""
    meaning = meaning or answer_meaning()
    return [_prediction(e, outputs, abstain_phrase, meaning) for e, outputs in zip(examples, answers)]


def _prediction(example: QAExample, outputs: list[Continuation], abstain_phrase: str, meaning: Meaning) -> dict[str, Any]:
    """DESIGN.md's prediction record (plus subject and relation for scoring by relation, for
    labelled text the label, and the uncertainty scores)."""
    answer, samples = outputs[0], [output.text for output in outputs[1:]]
    prediction = answer.text
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
        # data.known_from=probe: the fact's SliCK category, for scores by category
        **({"category": example.category} if example.category else {}),
        # what halluc score task=classification compares the prediction with
        **({"label": example.answer} if is_labelled(example) else {}),
        **({"samples": samples} if samples else {}),
        "uncertainty": uncertainty_scores(answer, samples, meaning),
    }


# --- reading prediction files --------------------------------------------------------------


def read_prediction_files(spec: Any, task: str, questions: str | None) -> dict[Path, list[dict[str, Any]]]:
    """The records of every file `spec` names (see `prediction_files`), checked for `task`,
    and their ids against the `questions` file when given."""
    files = {path: read_predictions(path, task) for path in prediction_files(spec)}
    if questions is not None:
        ids = question_ids(Path(questions))
        for path, records in files.items():
            check_ids(records, ids, path, Path(questions))
    return files


def prediction_files(spec: Any) -> list[Path]:
    """The files `predictions=` names: one path or glob, or a list of them, in sorted order per glob."""
    patterns = [spec] if isinstance(spec, str) else [str(item) for item in spec]
    if not patterns:
        raise UserError("predictions=[] names no file; give predictions=<file.jsonl> (or a glob, or a list)")
    paths: list[Path] = []
    for pattern in patterns:
        if _is_glob(pattern):
            matches = [Path(match) for match in sorted(glob.glob(pattern, recursive=True))]
        else:
            matches = [Path(pattern)]
        if not matches:
            raise UserError(f"predictions={pattern} matches no file; check the glob")
        paths += matches
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such file (check predictions=)")
    return list(dict.fromkeys(paths))  # a file named twice is one seed, not two


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def read_predictions(path: Path, task: str) -> list[dict[str, Any]]:
    """The prediction records of a JSONL file, each checked for the fields `task` reads."""
    records = []
    seen: dict[str, int] = {}
    for lineno, record in read_jsonl(path):
        where = f"{path} line {lineno}"
        _check_fields(record, task, where)
        key = str(record["id"])
        if key in seen:
            raise UserError(f"{where}: id {key} repeats line {seen[key]}; each prediction needs its own id")
        seen[key] = lineno
        records.append(record)
    if not records:
        raise UserError(f"{path}: the file holds no predictions; run halluc generate first or check the path")
    return records


def _check_fields(record: dict[str, Any], task: str, where: str) -> None:
    """Fail unless `record` has every field `task` reads, each of an accepted JSON type."""
    fields = FIELDS[task]
    for field, types in fields.items():
        if field not in record:
            raise UserError(f"{where}: missing field '{field}' (task={task} predictions need {', '.join(fields)})")
        value = record[field]
        # JSON true/false load as bool, a subclass of int: accepted only where a bool is meant
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            kinds = " or ".join(_JSON_TYPE[kind] for kind in types)
            raise UserError(f"{where}: field '{field}' must be {kinds}, not {type(value).__name__}")
    aliases = record.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(alias, str) for alias in aliases):
        raise UserError(f'{where}: field \'aliases\' must be a list of strings, e.g. ["Brasilia"]')


def question_ids(path: Path) -> list[str]:
    """The ids of a QA JSONL file, as strings."""
    ids = []
    for lineno, record in read_jsonl(path):
        if "id" not in record:
            raise UserError(f"{path} line {lineno}: missing field 'id' (each question needs one)")
        ids.append(str(record["id"]))
    if not ids:
        raise UserError(f"{path}: the questions file holds no questions; check questions=")
    return ids


def check_ids(records: list[dict[str, Any]], ids: list[str], path: Path, questions: Path) -> None:
    """Fail, naming a few ids, unless the predictions answer exactly the questions."""
    predicted = [str(record["id"]) for record in records]
    extra = sorted(set(predicted) - set(ids))
    missing = sorted(set(ids) - set(predicted))
    problems = []
    if extra:
        problems.append(f"{len(extra)} ids not among the questions ({_some(extra)})")
    if missing:
        problems.append(f"{len(missing)} questions without a prediction ({_some(missing)})")
    if problems:
        raise UserError(
            f"{path}: prediction ids do not match {questions}: {'; '.join(problems)}; "
            "score the predictions generated for this questions file"
        )


def _some(ids: list[str]) -> str:
    more = f", ... {len(ids) - _EXAMPLES} more" if len(ids) > _EXAMPLES else ""
    return ", ".join(ids[:_EXAMPLES]) + more
