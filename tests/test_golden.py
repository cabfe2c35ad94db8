"""Golden numbers: the tiny pretraining of each family, pinned before refactoring.

A refactor of configs, commands or the loop must not change what training computes
(torchtune's practice). The numbers were measured on the code before the typed-config
refactor of issue #11; the tolerance allows for the float rounding of another CPU's kernels,
not for a changed computation (a changed seed, order or init moves them by far more).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

GOLDEN = {
    # family: ({step: (train_loss, val_loss)}, sum of |weights| of the final checkpoint)
    "lstm": ({20: (6.23453, 5.741416), 40: (4.660671, 5.557472)}, 4755.6327518672115),
    "transformer": ({20: (6.612413, 6.6216), 40: (5.129183, 6.441425)}, 4172.254764658663),
}


def _losses(run_dir: Path) -> dict[int, tuple[float, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: (m["train_loss"], m["val_loss"]) for m in map(json.loads, lines)}


def _flat(losses: dict[int, tuple[float, float]]) -> list[float]:
    return [loss for step in sorted(losses) for loss in (step, *losses[step])]


def _weight_sum(run_dir: Path) -> float:
    from safetensors.torch import load_file

    tensors = load_file(str(run_dir / "checkpoint" / "model.safetensors"))
    return sum(float(t.double().abs().sum()) for t in tensors.values())


@pytest.mark.parametrize("family", ["lstm", "transformer"])
def test_tiny_pretraining_reproduces_the_golden_numbers(family: str, request: pytest.FixtureRequest) -> None:
    run_dir = request.getfixturevalue(f"{family}_run")
    losses, weight_sum = GOLDEN[family]
    assert _flat(_losses(run_dir)) == pytest.approx(_flat(losses), rel=1e-4)
    assert _weight_sum(run_dir) == pytest.approx(weight_sum, rel=1e-5)
