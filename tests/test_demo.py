"""`make demo` at test size: its own experiment configs (`experiment=demo`) through the real
commands, shrunk by overrides: pretrain -> a finetune sweep (multirun) -> score runs= with KB
verification into summary.csv and plots."""

from __future__ import annotations

import csv
from pathlib import Path

from cli_helpers import run_cli

SMALL_MODEL = ["model.num_layers=1", "model.num_heads=2", "model.hidden_dim=32", "data.max_subjects=40"]
FEW_STEPS = ["train.max_steps=4", "train.eval_every=2", "train.save_every=2", "train.batch_size=4",
             "train.warmup_steps=1", "train.progress=false"]
SMALL_SETS = ["data.finetune_size=8", "data.valid_size=4", "data.test_size=4"]


def test_the_demo_end_to_end_at_test_size(tmp_path: Path) -> None:
    replicates, sweep, score_dir = tmp_path / "replicates", tmp_path / "finetune", tmp_path / "score"
    # two pretraining replicates, each its own split of the KB (README, "Pretraining replicates")
    result = run_cli("pretrain", "-m", "experiment=demo", *SMALL_MODEL, *FEW_STEPS, "train.seq_len=16",
                     "train.eval_batches=2", "data.split_seed=0,1", f"hydra.sweep.dir={replicates}")
    assert result.exit_code == 0, result.stderr + result.stdout
    ckpts = [replicates / "split_0", replicates / "split_1"]

    # mitigation=none only: a model trained for 4 steps knows no fact, so cleaning would drop
    # them all (tests/test_clean_cli.py covers cleaning with a model that knows some)
    result = run_cli("finetune", "-m", "experiment=demo", f"ckpt={ckpts[0]},{ckpts[1]}", "mitigation=none",
                     "data.unknown_fraction=0.0,1.0", *SMALL_SETS, *FEW_STEPS, f"hydra.sweep.dir={sweep}")
    assert result.exit_code == 0, result.stderr + result.stdout
    runs = sorted(str(path.parent.relative_to(sweep)) for path in sweep.glob("*/*/*/*/summary.json"))
    assert runs == [f"{ckpt.name}/none/unknown_{fraction}/seed_{seed}"
                    for ckpt in ckpts for fraction in ("0.0", "1.0") for seed in (1, 2)]
    assert "run 8/8" in result.stdout

    result = run_cli("score", f"runs={sweep}", "mitigation=kb_verify", "mitigation.policy=abstain",
                     f"hydra.run.dir={score_dir}")
    assert result.exit_code == 0, result.stderr + result.stdout
    with (score_dir / "summary.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    groups = {(row["mitigation"], row["unknown_fraction"]) for row in rows}
    mitigations = ("none", "none+kb_verify(abstain)")
    assert groups == {(m, f) for m in mitigations for f in ("0.0", "1.0")}
    assert {(row["n_replicates"], row["n_seeds"]) for row in rows} == {("2", "2")}  # each replicate's own split
    assert (score_dir / "rates_vs_unknown_fraction.png").stat().st_size > 10_000
