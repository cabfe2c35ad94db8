"""A hidden-state probe (`detector=hidden_probe`): does the model's own state at the end of a
question say that its answer will be wrong, or that the fact is one it never read?

P(IK) probes (Kadavath et al. 2022) and semantic-entropy probes (Kossen et al. 2024) fit a
logistic regression to one layer's hidden state. Here the state is the one block `layer`
leaves at the question's last token, read by a hook on the very pass that answers the
question (`Decoder.hidden_layer`): the probe costs no forward pass of its own.

It is trained on held-out answers of the same weights (finetune: the validation set), the
features standardized and the L2 strength chosen by cross-validated log loss (a proper scoring
rule: the probabilities come out calibrated, not only ranked; scikit-learn).
Those answers' own scores are out of fold (nested: each scored by a probe whose strength was
chosen without it too), so selective answering calibrated on them is not calibrated on what
the probe was fitted to. Saved as plain JSON numbers (nothing to unpickle), it scores alike
before and after reloading: this module's numpy code scores in both cases.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from halluc_cli.decoding import Continuation
from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_json
from halluc_cli.rundir import PROBE_FILE
from halluc_cli.scoring.detection import roc_auc
from halluc_cli.scoring.metrics import is_right

# The uncertainty score each label writes. P(wrong) is one minus a probability of being right,
# so its calibration (ECE) is judged; P(unknown fact) is not a probability of either. (Not
# "hidden_probe_unknown": `score runs=` names a column <score>_unknown_roc_auc.)
ESTIMATORS = {"wrong": "hidden_probe", "unknown": "unknown_probe"}
REGULARIZATION = np.logspace(-4, 2, 13)  # the inverse strengths C the cross-validation tries
MIN_EACH = 3  # answers of each kind a probe needs: 2 folds, each with 2 folds inside


@dataclass(frozen=True)
class HiddenStateProbe:
    """A logistic probe on standardized hidden states: P(label) = sigmoid(w . (x - mean) / scale + b)."""

    layer: int  # the block whose output it reads (negative: from the top)
    label: str  # wrong: an answered question answered wrong | unknown: a fact the model did not read
    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float
    trained_on: dict[str, Any]  # the set, its size and positives, the C chosen, the out-of-fold ROC-AUC

    @property
    def estimator(self) -> str:
        """The name of its score among a prediction's uncertainty scores."""
        return ESTIMATORS[self.label]

    def score(self, features: np.ndarray) -> np.ndarray:
        """P(label) for each row of `features` (N, H)."""
        if features.shape[1] != len(self.weights):
            raise UserError(
                f"the probe reads {len(self.weights)} hidden features and layer {self.layer} of this model gives "
                f"{features.shape[1]}: a probe fitted to another model (detector.path)"
            )
        standardized = (np.asarray(features, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        logit = standardized @ np.asarray(self.weights) + self.bias
        return np.exp(-np.logaddexp(0.0, -logit))  # the sigmoid, without overflow at either end

    def save(self, path: Path) -> None:
        """Write the probe as JSON (atomically)."""
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "HiddenStateProbe":
        """The probe `save` wrote; anything else is a UserError naming the file."""
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
            probe = cls(**fields)
        except FileNotFoundError as error:
            raise UserError(f"{path}: no such probe file (a finetune run with detector=hidden_probe writes one)") from error
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
            raise UserError(f"{path} is not a hidden-state probe ({error}); point at a run's {PROBE_FILE}") from error
        _check_probe(probe, path)
        return probe


def _check_probe(probe: HiddenStateProbe, path: Path) -> None:
    vectors = (probe.mean, probe.scale, probe.weights)
    numbers = [value for vector in vectors if isinstance(vector, list) for value in vector] + [probe.bias]
    well_formed = (
        isinstance(probe.layer, int)
        and isinstance(probe.label, str)
        and probe.label in ESTIMATORS
        and all(isinstance(vector, list) and len(vector) == len(probe.weights) > 0 for vector in vectors)
        and all(isinstance(value, (int, float)) and math.isfinite(value) for value in numbers)
        and all(value > 0 for value in probe.scale)
    )
    if not well_formed:
        raise UserError(f"{path} is a damaged hidden-state probe; run the finetune that wrote it again")


def hidden_features(answers: Sequence[Sequence[Continuation]]) -> np.ndarray:
    """(N, H): each question's hidden state, as its decoding pass left it (`Decoder.hidden_layer`)."""
    return np.stack([outputs[0].hidden.numpy() for outputs in answers])


def probe_labels(
    records: Sequence[Mapping[str, Any]], label: str, aliases: Mapping[str, set[str]] | None = None
) -> tuple[list[int], list[bool]]:
    """The records a probe of `label` learns from, by index, and their labels: for `wrong`, the
    answered questions (an abstention claims nothing), True where the answer is wrong (the KB's
    `aliases` accepted, as the detectors are judged); for `unknown`, every question, True where
    its fact is unknown."""
    if label == "wrong":
        answered = [i for i, record in enumerate(records) if not record["abstained"]]
        return answered, [not is_right(records[i], aliases) for i in answered]
    return list(range(len(records))), [not records[i]["known"] for i in range(len(records))]


def untrainable(labels: Sequence[bool], label: str) -> str | None:
    """Why a probe cannot learn from `labels` (both kinds are needed, three of each for the
    nested folds), or None when it can."""
    positives, negatives = sum(labels), len(labels) - sum(labels)
    if min(positives, negatives) >= MIN_EACH:
        return None
    if label == "wrong":
        return (
            f"{positives} wrong and {negatives} right answers; the probe needs at least {MIN_EACH} of each "
            "(a larger data.valid_size, or detector.label=unknown)"
        )
    return (
        f"{positives} unknown-fact and {negatives} known-fact questions; the probe needs at least {MIN_EACH} of each "
        "(data.unknown_fraction strictly between 0 and 1, or detector.label=wrong)"
    )


def fit_probe(
    features: np.ndarray, labels: Sequence[bool], *, layer: int, label: str, folds: int, seed: int, trained_on: str
) -> tuple[HiddenStateProbe, np.ndarray]:
    """Fit a probe of `label` to `features` (N, H) and return it with the out-of-fold P(label)
    of each row: each scored by a probe fitted, its strength chosen too, without it (nested
    cross-validation). `untrainable(labels)` must be None."""
    from sklearn.linear_model import LogisticRegression  # scikit-learn loads only where a probe is fitted
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=bool)
    # Stratified folds, as many as the rarer kind allows: each fold holds both kinds; the inner
    # folds of the nested search split what an outer fold trains on, a share of the rarer kind fewer.
    rarer = int(min(y.sum(), (~y).sum()))
    outer = min(folds, rarer)
    split = StratifiedKFold(outer, shuffle=True, random_state=seed)
    inner = StratifiedKFold(min(folds, rarer - math.ceil(rarer / outer)), shuffle=True, random_state=seed)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    search = GridSearchCV(pipeline, {"logisticregression__C": REGULARIZATION}, cv=split, scoring="neg_log_loss")
    nested = GridSearchCV(pipeline, {"logisticregression__C": REGULARIZATION}, cv=inner, scoring="neg_log_loss")
    held_out = cross_val_predict(nested, x, y, cv=split, method="predict_proba")[:, 1]
    search.fit(x, y)
    strength = float(search.best_params_["logisticregression__C"])
    scaler, model = search.best_estimator_[0], search.best_estimator_[1]  # refitted to every row
    probe = HiddenStateProbe(
        layer=layer,
        label=label,
        mean=scaler.mean_.tolist(),
        scale=scaler.scale_.tolist(),
        weights=model.coef_[0].tolist(),
        bias=float(model.intercept_[0]),
        trained_on={
            "set": trained_on, "n": len(y), "positives": int(y.sum()), "C": strength,
            "cv_roc_auc": roc_auc(held_out.tolist(), y.tolist()),
        },
    )
    return probe, held_out


def add_scores(records: list[dict[str, Any]], estimator: str, scores: Sequence[float]) -> None:
    """Write each record's probe score among its uncertainty scores."""
    for record, score in zip(records, scores):
        record["uncertainty"][estimator] = float(score)


def train_and_score(
    cfg: Any,
    valid: tuple[list[dict[str, Any]], list[list[Continuation]]],
    test: tuple[list[dict[str, Any]], list[list[Continuation]]],
    path: Path,
    aliases: Mapping[str, set[str]] | None,
    seed: int,
) -> str | None:
    """Fit a probe (`cfg`: a HiddenProbeConfig) to the validation answers (records and their
    continuations), save it at `path`, and add its score to the test records and, out of fold,
    to the validation records. Returns why no probe could be fitted, or None."""
    path.unlink(missing_ok=True)  # a probe of an earlier evaluation of other weights
    (valid_records, valid_answers), (test_records, test_answers) = valid, test
    features = hidden_features(valid_answers)
    rows, labels = probe_labels(valid_records, cfg.label, aliases)
    reason = untrainable(labels, cfg.label)
    if reason is not None:
        return f"no hidden-state probe for {path.parent}: the validation set has {reason}"
    probe, held_out = fit_probe(
        features[rows], labels, layer=cfg.layer, label=cfg.label, folds=cfg.folds, seed=seed, trained_on="valid"
    )
    probe.save(path)
    add_scores(test_records, probe.estimator, probe.score(hidden_features(test_answers)))
    valid_scores = probe.score(features)  # the answers it did not learn from (abstentions) as they are
    valid_scores[rows] = held_out
    add_scores(valid_records, probe.estimator, valid_scores)
    return None
