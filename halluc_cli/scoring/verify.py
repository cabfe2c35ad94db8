"""Post-hoc knowledge-base verification of predictions (`mitigation=kb_verify`) and FActScore.

A QA prediction's subject and relation come from its record, or from matching its question
against the relation question templates of `conf/kb/`; its answer is then checked against
the KB: supported (one of the KB's forms), contradicted (the KB holds another object) or
unverifiable (subject or relation not in the KB). Abstentions claim nothing: `abstained`.
A policy then acts on contradicted answers: `flag` keeps them (marked), `abstain` replaces
them with the abstain phrase, `correct` with the KB's answer.

Free text: each sentence that matches a relation's statement template is a claim, checked
the same way; FActScore (Min et al. 2023) is the share of a response's claims the KB
supports, averaged over the responses that make claims. A response that continues a prompt
("The capital of France is" -> "Paris .") is read with its prompt, so a claim the two make
together counts; a claim the prompt makes alone is not the model's and does not.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from halluc_cli.data.kb import KnowledgeBase
from halluc_cli.data.normalize import normalize_text
from halluc_cli.scoring.metrics import accepted_answers, kb_aliases

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
UNVERIFIABLE = "unverifiable"
ABSTAINED = "abstained"
STATUSES = (SUPPORTED, CONTRADICTED, UNVERIFIABLE, ABSTAINED)
POLICIES = ("flag", "abstain", "correct")
_STATUS_RANK = {SUPPORTED: 0, CONTRADICTED: 1, UNVERIFIABLE: 2}  # which reading of a sentence wins

# A sentence ends at . ! or ? followed by whitespace or the end of the text ("St. Louis"
# splits too; the templates' sentences are short enough for that to be rare).
_SENTENCE = re.compile(r"\S.*?(?:[.!?](?=\s|$)|$)", re.DOTALL)
_FINAL_PUNCTUATION = ".?!"


@dataclass(frozen=True)
class Verdict:
    """What the KB says of one answer: a status and, when it knows the fact, its answer."""

    status: str  # one of STATUSES
    kb_answer: str | None = None


@dataclass(frozen=True)
class Claim:
    """One sentence of free text read as (subject, relation, object), with its verdict."""

    subject: str
    relation: str
    object: str
    verdict: Verdict
    # Character spans in the response; a sentence its prompt begins starts before 0.
    sentence: tuple[int, int]
    object_span: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        """The claim as written to `predictions_verified.jsonl`."""
        return {
            "subject": self.subject, "relation": self.relation, "object": self.object,
            "status": self.verdict.status, "kb_answer": self.verdict.kb_answer,
        }


def compile_template(template: str) -> re.Pattern[str]:
    """A regex that fully matches the sentences `template` produces: `{subject}` and `{object}`
    become named groups, matching ignores case and runs of spaces, final punctuation is optional."""
    body = template.strip().rstrip(_FINAL_PUNCTUATION)
    parts = re.split(r"\{(subject|object)\}", body)  # literal, name, literal, name, ..., literal
    pattern = ""
    for index, part in enumerate(parts):
        if index % 2 == 0:
            pattern += re.sub(r"(?:\\ )+", r"\\s+", re.escape(part))  # re.escape writes a space as "\ "
        else:
            # a placeholder used twice must hold the same text both times
            pattern += f"(?P={part})" if part in parts[1:index:2] else f"(?P<{part}>.+?)"
    return re.compile(pattern + r"\s*[.?!]?", re.IGNORECASE)


class KBVerifier:
    """Checks predictions and free-text claims against a knowledge base.

    `templates` maps each relation to its `questions` and `statements` (`cfg.kb.relations`);
    questions need `{subject}`, statements `{subject}` and `{object}`. `covered`: the subjects
    it may consult (None: all); a fact of another subject is unverifiable, as in a partial KB.
    """

    def __init__(
        self,
        kb: KnowledgeBase,
        templates: Mapping[str, Mapping[str, Sequence[str]]],
        abstain_phrase: str = "I don't know",
        covered: frozenset[str] | None = None,
    ):
        self.kb = kb
        self.abstain_phrase = abstain_phrase
        self.covered = covered
        self._questions = [
            (relation, compile_template(question))
            for relation, forms in templates.items()
            for question in forms.get("questions", ())
            if "{subject}" in question
        ]
        self._statements = [
            (relation, compile_template(statement))
            for relation, forms in templates.items()
            for statement in forms.get("statements", ())
            if "{subject}" in statement and "{object}" in statement
        ]

    def check(self, subject: str, relation: str, answer: str) -> Verdict:
        """The KB's verdict on `answer` as the object of (subject, relation)."""
        facts = self.kb.lookup(subject, relation)
        if not facts or (self.covered is not None and normalize_text(subject) not in self.covered):
            return Verdict(UNVERIFIABLE)
        accepted = {normalize_text(form) for fact in facts for form in fact.surface_forms}
        status = SUPPORTED if normalize_text(answer) in accepted else CONTRADICTED
        return Verdict(status, facts[0].object)

    def match_question(self, question: str) -> tuple[str, str] | None:
        """(subject, relation) of a question written from a question template, else None.

        When several templates match, the first reading whose subject the KB knows wins.
        """
        first = None
        for relation, pattern in self._questions:
            match = pattern.fullmatch(question.strip())
            if match is None:
                continue
            subject = match["subject"].strip()
            if self.kb.lookup(subject, relation):
                return subject, relation
            first = first or (subject, relation)
        return first

    def locate(self, record: Mapping[str, Any]) -> tuple[str, str] | None:
        """(subject, relation) of a QA record: its own fields, else read from its question."""
        if record.get("subject") and record.get("relation"):
            return record["subject"], record["relation"]
        return self.match_question(record.get("question", ""))

    def verify(self, record: Mapping[str, Any]) -> Verdict:
        """The verdict on one QA prediction record."""
        if record.get("abstained"):
            return Verdict(ABSTAINED)
        found = self.locate(record)
        if found is None:
            return Verdict(UNVERIFIABLE)
        return self.check(*found, record["prediction"])

    def apply_policy(self, records: Iterable[Mapping[str, Any]], policy: str) -> list[dict[str, Any]]:
        """Copies of QA records with `verified` (the status) and the policy applied.

        Contradicted answers get `kb_answer`; where the policy replaces the prediction
        (abstain, correct) the model's own answer is kept as `original_prediction`.
        """
        _check_policy(policy)
        verified = []
        for record in records:
            verdict = self.verify(record)
            new = {**record, "verified": verdict.status}
            if verdict.status == CONTRADICTED:
                new["kb_answer"] = verdict.kb_answer
                if policy != "flag":
                    new["original_prediction"] = record["prediction"]
                    new["abstained"] = policy == "abstain"
                    new["prediction"] = self.abstain_phrase if policy == "abstain" else verdict.kb_answer
            verified.append(new)
        return verified

    def extract_claims(self, text: str, prompt: str = "") -> list[Claim]:
        """The claims of free text: each sentence that matches a statement template.

        `text` continues `prompt` (none: it stands alone). A sentence the prompt begins is
        read whole, and also from where `text` takes over; a sentence within the prompt is
        left out. A sentence with several readings ("X is in Y." reads as continent or
        country of a city) takes the one the KB supports, else one it contradicts, else the
        first (the whole sentence before its part in `text`).
        """
        joined = f"{prompt.rstrip()} " if prompt.strip() else ""
        full, offset = joined + text, len(joined)
        claims = []
        for sentence in _SENTENCE.finditer(full):
            if sentence.end() <= offset:
                continue  # the prompt's own sentence: not a claim of the model
            starts = [sentence.start()]
            if sentence.start() < offset:
                # A prompt may end in an instruction ("Tell me") rather than begin the claim.
                starts.append(offset + len(text) - len(text.lstrip()))
            readings = [
                self._claim(relation, match, offset)
                for start in starts
                for relation, pattern in self._statements
                if (match := pattern.fullmatch(full, start, sentence.end())) is not None
            ]
            if readings:
                claims.append(min(readings, key=lambda claim: _STATUS_RANK[claim.verdict.status]))
        return claims

    def _claim(self, relation: str, match: re.Match[str], offset: int) -> Claim:
        """The claim of a template match in prompt + response; spans count from `offset`,
        where the response starts."""
        subject, obj = match["subject"].strip(), match["object"].strip()
        start, end = match.span("object")
        return Claim(
            subject, relation, obj, self.check(subject, relation, obj),
            sentence=(match.start() - offset, match.end() - offset), object_span=(start - offset, end - offset),
        )

    def factscore(self, records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """FActScore of free-text records (`prediction`): claims by status, and the mean over
        responses with claims of their share of supported claims (None when none has a claim)."""
        counts: Counter[str] = Counter()
        shares = []
        n = 0
        for record in records:
            n += 1
            claims = self.extract_claims(record["prediction"], record.get("prompt", ""))
            counts.update(claim.verdict.status for claim in claims)
            if claims:
                shares.append(sum(claim.verdict.status == SUPPORTED for claim in claims) / len(claims))
        return {
            "n": n,
            "responses_with_claims": len(shares),
            "claims": sum(counts.values()),
            **{status: counts[status] for status in (SUPPORTED, CONTRADICTED, UNVERIFIABLE)},
            "factscore": statistics.fmean(shares) if shares else None,
        }

    def apply_claim_policy(self, records: Iterable[Mapping[str, Any]], policy: str) -> list[dict[str, Any]]:
        """Copies of free-text records with their `claims` and the policy applied to each
        contradicted claim: `abstain` drops its sentence (a response left empty becomes the
        abstain phrase), `correct` puts the KB's answer in place of its object. Only the
        response changes, never its prompt."""
        _check_policy(policy)
        verified = []
        for record in records:
            text = record["prediction"]
            claims = self.extract_claims(text, record.get("prompt", ""))
            new = {**record, "claims": [claim.to_dict() for claim in claims]}
            wrong = [claim for claim in claims if claim.verdict.status == CONTRADICTED]
            if wrong and policy != "flag":
                new["original_prediction"] = text
                new["prediction"] = self._rewrite(text, wrong, policy)
            verified.append(new)
        return verified

    def _rewrite(self, text: str, wrong: list[Claim], policy: str) -> str:
        # From the last claim back, so earlier spans stay valid as the text changes. Spans
        # before 0 lie in the prompt: the response's part of the sentence goes, and an
        # object the prompt holds cannot be corrected in the response, so its part goes too.
        for claim in reversed(wrong):
            correct = policy == "correct" and claim.object_span[0] >= 0
            start, end = claim.object_span if correct else claim.sentence
            replacement = claim.verdict.kb_answer if correct else ""
            text = text[: max(start, 0)] + replacement + text[end:]
        return " ".join(text.split()) or self.abstain_phrase


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown verification policy {policy!r}; use one of {', '.join(POLICIES)}")


def verification_summary(records: Iterable[Mapping[str, Any]], kb: KnowledgeBase | None = None) -> dict[str, Any]:
    """How well the verifier judged QA records from `apply_policy`, against their gold answers.

    precision: among answers marked contradicted, the share really wrong; recall: among
    really wrong answers, the share marked contradicted (None where nothing to divide by).
    """
    aliases = kb_aliases(kb) if kb is not None else None
    counts: Counter[str] = Counter()
    flagged_wrong = wrong = 0
    for record in records:
        status = record["verified"]
        counts[status] += 1
        if status == ABSTAINED:
            continue
        answer = record.get("original_prediction", record["prediction"])
        is_wrong = normalize_text(answer) not in accepted_answers(record, aliases)
        wrong += is_wrong
        flagged_wrong += is_wrong and status == CONTRADICTED
    contradicted = counts[CONTRADICTED]
    return {
        **{status: counts[status] for status in STATUSES},
        "precision": flagged_wrong / contradicted if contradicted else None,
        "recall": flagged_wrong / wrong if wrong else None,
    }
