"""How unsure a model was of an answer: scores written with every prediction, higher = less sure.

From the decoding pass itself (`decoding.Continuation`), for the answer that is scored (the
greedy one when there are samples):
- `neg_logprob`: -log P(answer and its stop token); `neg_mean_logprob`: the same per token,
  so long answers are not penalized for their length;
- `mean_entropy`: the mean entropy of the next-token distributions the answer came from.
With samples (decoding=sample, num_samples > 1), which cost their own batched rows:
- `sample_disagreement`: the share of samples that are not the scored answer;
- `semantic_entropy`: the entropy of the samples' answers grouped by meaning (Farquhar et al.
  2024). For short factual answers, "same meaning" is the same answer after the toolkit's
  normalization (case, accents, articles, punctuation) and, given a KB, its aliases
  ("Brasilia" = "Brasília"), so no NLI model is needed.
A trained detector adds its own (`detector=hidden_probe`: `hidden_probe`, the probability that
the answer is wrong, or `unknown_probe`, that the fact is unknown; halluc_cli/hidden_probe.py).
`halluc score` judges how well each separates wrong answers from right ones.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from halluc_cli.data.kb import KnowledgeBase
from halluc_cli.data.normalize import normalize_text

if TYPE_CHECKING:  # scoring reads ESTIMATORS without importing the decoder (and torch)
    from halluc_cli.decoding import Continuation

# The scores, in the order tables show them; the sampled ones only with samples, the probes' with a probe.
ESTIMATORS = (
    "neg_logprob", "neg_mean_logprob", "mean_entropy", "sample_disagreement", "semantic_entropy",
    "hidden_probe", "unknown_probe",
)

# An answer -> the name of its meaning: equal names, one meaning.
Meaning = Callable[[str], str]


def answer_meaning(kb: KnowledgeBase | None = None) -> Meaning:
    """Answers mean the same when they normalize alike, or name one KB object (its aliases)."""
    canonical = {}
    if kb is not None:
        for fact in kb.facts:
            for form in fact.surface_forms:
                canonical.setdefault(normalize_text(form), normalize_text(fact.object))
    return lambda answer: canonical.get(normalize_text(answer), normalize_text(answer))


def uncertainty_scores(answer: Continuation, samples: Sequence[str], meaning: Meaning) -> dict[str, float]:
    """The scores of `answer` (see the module's docstring); the sample-based ones with samples."""
    scores = {
        "neg_logprob": -answer.logprob,
        "neg_mean_logprob": -answer.logprob / max(answer.tokens, 1),
        "mean_entropy": answer.entropy,
    }
    if samples:
        meanings = [meaning(sample) for sample in samples]
        scores["sample_disagreement"] = sum(m != meaning(answer.text) for m in meanings) / len(meanings)
        shares = [count / len(meanings) for count in Counter(meanings).values()]
        scores["semantic_entropy"] = -sum(share * math.log(share) for share in shares) + 0.0  # never -0.0
    return scores
