"""The forgetting ledger (`finetune ledger=true`): of each held-out fact, did fine-tuning lose
it from storage, or does the model still store it and fail to give it as an answer?

Kaplan, Gekhman et al. (2026) read fine-tuning hallucination as forgetting by interference. A
QA answer alone cannot tell a lost fact from one the model still stores; the pretraining
format can. Every fact of the run's test sets (held out: none is in the fine-tuning set) is
asked as the cloze of its relation's first completable statement template ("The capital of X
is", `probe.complete_statements`) with the pretrained weights (statement_before) and with each
eval point's weights (statement_after), beside the QA answer those weights gave
(eval/<point>/predictions.jsonl: qa_after). A known fact is then, in this order:

  never_stored          statement wrong before: nothing to lose (outside the lost-vs-extraction split)
  lost                  statement right before, wrong after: storage lost
  retained              statement right after, QA right
  confident_wrong       statement right after, QA answered wrong and confidently: the model
                        stores the fact and asserts another
  stored_not_extracted  statement right after, QA wrong otherwise (unsure, or abstained)

"Confident": the answer's geometric-mean token probability, exp(-neg_mean_logprob) of the
decoding pass itself, is at least `ledger_confidence`. An unknown fact is guessed_right (QA
right), abstained, or hallucinated (answered wrong).

Spill-over (the priming of Sun et al. 2025): a held-out fact whose QA answer is wrong and is an
object that the fine-tuning set taught only through unknown examples of the same relation (no
known example has it as its answer). At unknown share 0 no object is taught so: the rate is 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from halluc_cli.data.kb import KnowledgeBase
from halluc_cli.data.normalize import normalize_text
from halluc_cli.data.qa import QAExample, abstains, qa_format
from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_jsonl
from halluc_cli.rundir import LEDGER_FILE
from halluc_cli.scoring.metrics import is_right, kb_aliases

# score runs= reads SHARES without importing the decoder (and torch): what needs the probe
# module imports it when called
if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from halluc_cli.models import LanguageModel
    from halluc_cli.probe import Completion

KNOWN_CATEGORIES = ("retained", "lost", "stored_not_extracted", "confident_wrong", "never_stored")
UNKNOWN_CATEGORIES = ("hallucinated", "abstained", "guessed_right")
SPILL_OVER = "spill_over"
# the numbers of scores.json's `ledger`: each category's share of the known (unknown) held-out
# facts, and the spill-over rate over all of them
SHARES = (*KNOWN_CATEGORIES, *UNKNOWN_CATEGORIES, SPILL_OVER)


def classify(record: Mapping[str, Any]) -> str:
    """The category of a ledger record (its known, statement_before, statement_after, qa_after,
    abstained and confident fields; see the module's docstring)."""
    if not record["known"]:
        if record["qa_after"]:
            return "guessed_right"
        return "abstained" if record["abstained"] else "hallucinated"
    if not record["statement_before"]:
        return "never_stored"
    if not record["statement_after"]:
        return "lost"
    if record["qa_after"]:
        return "retained"
    return "confident_wrong" if record["confident"] else "stored_not_extracted"


def taught_objects(finetune_set: Sequence[QAExample], abstain_phrase: str) -> dict[str, set[str]]:
    """relation -> the normalized answers that only unknown fine-tuning examples teach (an
    abstain label teaches no object; an answer a known example teaches too is not new)."""
    unknown, known = defaultdict(set), defaultdict(set)
    for example in finetune_set:
        if not abstains(example, abstain_phrase):
            (known if example.known else unknown)[example.relation].add(normalize_text(example.answer))
    return {relation: objects - known[relation] for relation, objects in unknown.items()}


def ledger_records(
    predictions: Sequence[Mapping[str, Any]],
    before: Sequence[Completion],
    after: Sequence[Completion],
    taught: Mapping[str, set[str]],
    confidence: float,
    aliases: Mapping[str, set[str]] | None = None,
) -> list[dict[str, Any]]:
    """One record per held-out fact: the prediction record of its QA answer, and its statement
    completions before and after, in the same order; `aliases` (`kb_aliases`) judge the QA answer."""
    most_unsure = -math.log(confidence) if confidence > 0 else math.inf  # neg_mean_logprob of a confident answer
    records = []
    for prediction, was, now in zip(predictions, before, after, strict=True):
        right = is_right(prediction, aliases)
        answered_wrong = not right and not prediction["abstained"]
        record = {
            "subject": prediction["subject"],
            "relation": prediction["relation"],
            "object": prediction["answer"],
            "known": prediction["known"],
            "statement_before": was.right,
            "statement_after": now.right,
            "qa_after": right,
            "abstained": prediction["abstained"],
            "confident": answered_wrong and prediction["uncertainty"]["neg_mean_logprob"] <= most_unsure,
            "spill_over": answered_wrong
            and normalize_text(prediction["prediction"]) in taught.get(prediction["relation"], set()),
            "statement_before_answer": was.answer,
            "statement_after_answer": now.answer,
            "qa_answer": prediction["prediction"],
        }
        records.append({**record, "category": classify(record)})
    return records


def ledger_shares(records: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
    """Each category's share of the known (unknown) facts, the spill-over rate over all, and
    how many known and unknown facts the shares rest on (a side without facts has no shares)."""
    shares: dict[str, float | int] = {}
    for known, categories in ((True, KNOWN_CATEGORIES), (False, UNKNOWN_CATEGORIES)):
        side = [record["category"] for record in records if record["known"] == known]
        shares[f"n_{'known' if known else 'unknown'}"] = len(side)
        if side:
            shares.update({category: side.count(category) / len(side) for category in categories})
    if records:
        shares[SPILL_OVER] = sum(record["spill_over"] for record in records) / len(records)
    return shares


@dataclass
class Ledger:
    """What an eval point's ledger needs besides its own weights' answers: the held-out facts'
    statement completions by the pretrained weights, the objects taught through unknown
    examples, and how QA answers are judged."""

    before: list[Completion]
    taught: dict[str, set[str]]
    confidence: float
    aliases: dict[str, set[str]] | None

    def write(
        self, out_dir: Path, predictions: Sequence[Mapping[str, Any]], after: Sequence[Completion]
    ) -> dict[str, float | int]:
        """Write out_dir/ledger.jsonl and return its shares (`ledger_shares`), for scores.json."""
        records = ledger_records(predictions, self.before, after, self.taught, self.confidence, self.aliases)
        atomic_write_jsonl(out_dir / LEDGER_FILE, records)
        return ledger_shares(records)


def check_ledger(cfg: DictConfig) -> None:
    """ledger=true asks the test facts as KB statements beside eval_after's answers: it needs
    both, and a statement template per relation to ask in (a UserError before anything runs)."""
    if not cfg.ledger:
        return
    if not cfg.eval_after:
        raise UserError("ledger=true reads the test answers of eval_after; set eval_after=true or ledger=false")
    if "kb" not in cfg.data:
        raise UserError(f"ledger=true asks each fact as a KB statement; it needs data=kbqa, not data={cfg.data.name}")
    _statement_templates(cfg.data)


def _statement_templates(data: DictConfig) -> dict[str, str]:
    """relation -> the statement template the ledger asks its facts in (the relations of data=kbqa)."""
    from halluc_cli.probe import cloze_templates

    relations = [relation for relation in data.relations or data.kb.relations if relation in data.kb.relations]
    return cloze_templates({relation: list(data.kb.relations[relation].statements) for relation in relations})


def statement_completions(
    cfg: DictConfig, model: LanguageModel, tokenizer: PreTrainedTokenizerBase, device: torch.device,
    examples: Sequence[QAExample],
) -> list[Completion]:
    """Each example's fact as the cloze of its relation's statement template, answered greedily by `model`."""
    from halluc_cli.probe import ModelAnswerer, complete_statements

    answerer = ModelAnswerer(model, tokenizer, cfg.probe, device)
    return complete_statements(answerer, examples, _statement_templates(cfg.data))


def start_ledger(
    cfg: DictConfig, before: list[Completion], finetune_set: Sequence[QAExample], kb: KnowledgeBase
) -> Ledger:
    """The ledger of a finetune run (`cfg`), given its held-out facts' statement completions by
    the pretrained weights: the objects `finetune_set` taught through unknown examples, and the
    KB's aliases to judge QA answers by."""
    _, abstain_phrase = qa_format(cfg.data)
    return Ledger(before, taught_objects(finetune_set, abstain_phrase), cfg.ledger_confidence, kb_aliases(kb))
