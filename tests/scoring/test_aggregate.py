"""`halluc score runs=...`: hand-made finetune run dirs with known scores give the known
summary.csv, effects.csv, runs.csv, tables, plots and report.md, grouped by what the sweep
varied (replicates and seeds apart); broken or missing runs are reported."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table

from cli_helpers import run_cli
from halluc_cli.errors import UserError
from halluc_cli.scoring.aggregate import effect_rows, gather, summary_rows, with_verified_runs
from halluc_cli.scoring.tables import effects_table, sweep_table

T1 = 12.7062  # t(0.975, df=1): two seeds
HALF = T1 * 0.1 / math.sqrt(2) / math.sqrt(2)  # two seeds 0.1 apart: sd 0.1/sqrt(2), over sqrt(2)


def clipped(mean: float) -> tuple[float, float, float]:
    """A rate's mean with its two-seed interval (seeds 0.1 apart), kept inside [0, 1]."""
    return mean, max(mean - HALF, 0.0), min(mean + HALF, 1.0)


def rates(accuracy: float, abstention: float, n: int = 10) -> dict:
    hallucination = 1 - accuracy - abstention
    return {"n": n, "accuracy": accuracy, "abstention_rate": abstention, "hallucination_rate": hallucination,
            "hallucination_rate_answered": hallucination / (1 - abstention)}


def make_run(run_dir: Path, fraction: float, mitigation: str, freeze: str, seed: int, paraphrases: int = 2,
             ckpt: Path | None = None, lr: float = 1e-3, overrides: tuple[str, ...] = (), **freeze_keys) -> None:
    """A finished finetune run dir whose numbers follow from its choices:
    known accuracy 0.9 - 0.4 * fraction, +0.1 under clean, -0.2 under head_only, +0.05 at the
    early-stopping point, -0.1 for seed 1, -100 * lr; unknown accuracy 0.1 (+0.1 for seed 1);
    clean abstains on half the unknown questions; 10 known and 10 unknown test questions.
    `overrides`: the command line Hydra records in .hydra/overrides.yaml."""
    ckpt = ckpt or run_dir.parent / "no-such-pretrain-run"
    config = {"ckpt": str(ckpt), "seed": seed, "train": {"max_steps": 40, "lr": lr},
              "data": {"unknown_fraction": fraction, "unknown_label": "answer", "paraphrases": paraphrases},
              "freeze": {"name": freeze, **freeze_keys}}
    if mitigation != "none":  # runs made before finetune had mitigation= have no such key
        config["mitigation"] = {"name": mitigation, "unknown_action": "drop"}
    (run_dir / "checkpoint").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    (run_dir / "checkpoint" / "halluc_model.json").write_text('{"family": "lstm"}')
    summary = {"steps": 40, "seconds": (4.0 if freeze == "head_only" else 10.0) + seed,
               "trainable_parameters": 100 if freeze == "head_only" else 1000, "total_parameters": 1000}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    curve = [{"step": step, "train_loss": 1.0, "train_acc_known": step / 40, "train_acc_unknown": step / 80}
             for step in (10, 20, 30, 40)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in curve))
    if overrides:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {line}\n" for line in overrides))
    for point, bonus in (("early_stop", 0.05), ("final", 0.0)):
        known = 0.9 - 0.4 * fraction + (0.1 if mitigation == "clean" else 0) - (0.2 if freeze == "head_only" else 0)
        known += bonus - 0.1 * seed - 100 * (lr - 1e-3)
        unknown_abstention = 0.5 if mitigation == "clean" else 0.0
        by_known = {"known": rates(known, 0.0), "unknown": rates(0.1 + 0.1 * seed, unknown_abstention)}
        overall = rates((known + 0.1 + 0.1 * seed) / 2, unknown_abstention / 2, n=20)
        (run_dir / "eval" / point).mkdir(parents=True)
        (run_dir / "eval" / point / "scores.json").write_text(
            json.dumps({"overall": overall, "by_known": by_known, "by_relation": {}}))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multirun dir: 2 unknown fractions x 2 mitigations x 2 seeds with freeze=none, and
    freeze=head_only at fraction 0.25 without mitigation; job 99 has a broken scores.json."""
    root = tmp_path_factory.mktemp("multirun")
    job = 0
    combos = [(f, m, "none") for f in (0.25, 0.75) for m in ("none", "clean")] + [(0.25, "none", "head_only")]
    for fraction, mitigation, freeze in combos:
        for seed in (0, 1):
            make_run(root / str(job), fraction, mitigation, freeze, seed)
            job += 1
    make_run(root / "99", 0.5, "none", "none", 0)
    (root / "99" / "eval" / "final" / "scores.json").write_text("{not json")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


@pytest.fixture(scope="module")
def gathered(sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`halluc score runs=<sweep>` once: (its run dir, its stdout)."""
    out = tmp_path_factory.mktemp("score") / "run"
    result = run_cli("score", f"runs={sweep}", f"hydra.run.dir={out}")
    assert result.exit_code == 0, result.stdout + result.stderr
    return out, result.stdout


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def row_of(rows: list[dict[str, str]], **choices: str) -> dict[str, str]:
    found = [row for row in rows if all(row[key] == value for key, value in choices.items())]
    assert len(found) == 1, (choices, found)
    return found[0]


def stat(row: dict[str, str], name: str) -> tuple[float, float, float]:
    return tuple(float(row[f"{name}_{part}"]) for part in ("mean", "low", "high"))


def test_summary_csv_holds_the_hand_computed_means_and_intervals(gathered: tuple[Path, str]) -> None:
    out, _ = gathered
    rows = read_csv(out / "summary.csv")
    assert len(rows) == 5 * 2  # 5 groups x (early_stop, final)
    row = row_of(rows, unknown_fraction="0.25", mitigation="none", freeze="none", eval="final")
    assert (row["n_replicates"], row["n_seeds"], row["n_runs"]) == ("1", "2", "2")
    assert row["model"] == "lstm" and row["paraphrases"] == "2"
    # known accuracy: seeds 0.8 and 0.7
    assert stat(row, "known_accuracy") == pytest.approx(clipped(0.75), abs=1e-5)
    # unknown hallucination: seeds 0.9 and 0.8; overall: (0.2 + 0.9) / 2 = (0.3 + 0.8) / 2, no spread
    assert stat(row, "unknown_hallucination_rate") == pytest.approx(clipped(0.85), abs=1e-5)
    assert stat(row, "hallucination_rate") == pytest.approx((0.55, 0.55, 0.55), abs=1e-5)
    assert stat(row, "seconds") == pytest.approx((10.5, 10.5 - T1 * 0.5, 10.5 + T1 * 0.5), abs=1e-4)
    # clean at 0.75, early stop: known 0.9 - 0.3 + 0.1 + 0.05 = 0.75 and 0.65; abstains on half the unknown
    row = row_of(rows, unknown_fraction="0.75", mitigation="clean", eval="early_stop")
    assert stat(row, "known_accuracy") == pytest.approx(clipped(0.7), abs=1e-5)
    assert stat(row, "unknown_abstention_rate") == pytest.approx((0.5, 0.5, 0.5))
    assert stat(row, "abstention_rate") == pytest.approx((0.25, 0.25, 0.25))
    assert stat(row, "unknown_hallucination_rate") == pytest.approx(clipped(0.35), abs=1e-5)
    row = row_of(rows, freeze="head_only", eval="final")
    assert stat(row, "known_accuracy")[0] == pytest.approx(0.55)
    assert stat(row, "trainable_parameters") == pytest.approx((100, 100, 100))


def test_runs_csv_has_a_row_per_readable_run(gathered: tuple[Path, str], sweep: Path) -> None:
    out, _ = gathered
    rows = read_csv(out / "runs.csv")
    assert [row["run"] for row in rows] == [str(sweep / str(job)) for job in range(10)]  # numeric order
    assert float(rows[1]["final_known_accuracy"]) == pytest.approx(0.7)  # fraction 0.25, none, seed 1
    assert {row["mitigation"] for row in rows} == {"none", "clean"}


def test_table_warning_and_plots(gathered: tuple[Path, str], sweep: Path) -> None:
    out, stdout = gathered
    assert f"warning: skipped {sweep / '99'}: scores.json is not valid JSON" in stdout
    assert "10 finetune runs in 5 groups" in stdout and "0.750" in stdout and "[0.11, 1.00]" in stdout
    for name in ("rates_vs_unknown_fraction.png", "train_accuracy_over_steps.png", "freeze_strategies.png"):
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000, name
        assert f"plot {path}" in stdout


def test_unfinished_run_and_setting_variants(tmp_path: Path) -> None:
    make_run(tmp_path / "a", 0.5, "none", "layers", 0, trainable_layers=1)
    make_run(tmp_path / "b", 0.5, "none", "layers", 0, trainable_layers=2)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.yaml").write_text("ckpt: p\nseed: 0\ndata: {unknown_fraction: 0.5}\n")
    (tmp_path / "c" / "metrics.jsonl").write_text("")  # started, never finished
    sweep = gather(str(tmp_path / "*"))  # a glob of run dirs
    assert [run.choices["freeze"] for run in sweep.runs] == ["layers (trainable_layers=1)",
                                                              "layers (trainable_layers=2)"]
    assert sweep.varying() == ["freeze"]
    assert sweep.skipped == [(tmp_path / "c", "no summary.json or eval/*/scores.json yet (unfinished or failed run?)")]
    assert len(gather([str(tmp_path / "a"), str(tmp_path / "a")]).runs) == 1  # a list; named twice = once


def test_no_readable_run(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text("ckpt: p\ndata: {unknown_fraction: 0.5}\n")
    (tmp_path / "bad" / "summary.json").write_text("[]")
    with pytest.raises(UserError, match="no readable finetune run.*summary.json is not a JSON object"):
        gather(str(tmp_path))


@pytest.mark.parametrize(
    "spec, phrase",
    [("empty", "holds no finetune run dir"), ("nowhere", "no such directory"), ("nowhere/*", "matches nothing")],
)
def test_no_runs_is_a_one_line_error(tmp_path: Path, spec: str, phrase: str) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli("score", f"runs={tmp_path / spec}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and phrase in lines[0], result.stderr
    assert not (tmp_path / "run" / "summary.csv").exists()


def test_predictions_and_runs_together(tmp_path: Path) -> None:
    result = run_cli("score", "predictions=p.jsonl", f"runs={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.exit_code == 2 and "not both" in result.stderr, result.stderr


def prediction(id_: str, subject: str, answer: str, predicted: str, known: bool) -> dict:
    return {"id": id_, "question": f"What is the capital of {subject}?", "prediction": predicted, "answer": answer,
            "aliases": [], "known": known, "abstained": False, "subject": subject, "relation": "capital"}


def test_kb_verify_adds_a_verified_twin_of_every_run(tmp_path: Path) -> None:
    """Each run's test answers verified against the bundled KB: a wrong capital is
    contradicted and, under policy abstain, becomes an abstention; right ones stay."""
    records = [prediction("k1", "France", "Paris", "Paris", True), prediction("k2", "Germany", "Berlin", "Munich", True),
               prediction("u1", "Japan", "Tokyo", "Osaka", False), prediction("u2", "Italy", "Rome", "Rome", False)]
    for seed in (0, 1):
        run_dir = tmp_path / "sweep" / str(seed)
        make_run(run_dir, 0.5, "none", "none", seed)
        for point in ("early_stop", "final"):
            (run_dir / "eval" / point / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "score"
    result = run_cli("score", f"runs={tmp_path / 'sweep'}", "mitigation=kb_verify", "mitigation.policy=abstain",
                     f"hydra.run.dir={out}")
    assert result.exit_code == 0, result.stdout + result.stderr
    rows = read_csv(out / "summary.csv")
    assert {row["mitigation"] for row in rows} == {"none", "none+kb_verify(abstain)"}
    row = row_of(rows, mitigation="none+kb_verify(abstain)", eval="final")
    assert row["n_seeds"] == "2"
    assert stat(row, "known_accuracy") == pytest.approx((0.5, 0.5, 0.5))
    assert stat(row, "known_hallucination_rate") == pytest.approx((0.0, 0.0, 0.0))
    assert stat(row, "unknown_abstention_rate") == pytest.approx((0.5, 0.5, 0.5))
    assert stat(row, "verifier_precision") == pytest.approx((1.0, 1.0, 1.0))
    assert row_of(rows, mitigation="none", eval="final")["verifier_precision_mean"] == ""
    assert "none+kb_verify(abstain)" in result.stdout
    assert "verifier precision" in (out / "report.md").read_text()  # the table shows what fits 100 columns
    assert "2 finetune runs (+ 2 again under the score mitigation) in 2 groups" in result.stdout


def test_paraphrase_sweep_is_plotted_against_the_paraphrase_count(tmp_path: Path) -> None:
    for paraphrases in (1, 4):
        for seed in (0, 1):
            make_run(tmp_path / "sweep" / f"p{paraphrases}_{seed}", 0.0, "none", "none", seed, paraphrases=paraphrases)
    out = tmp_path / "score"
    result = run_cli("score", f"runs={tmp_path / 'sweep'}", f"hydra.run.dir={out}")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert (out / "rates_vs_paraphrases.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "rates_vs_unknown_fraction.png").exists()
    assert "no plot rates_vs_unknown_fraction.png" in result.stdout


def test_a_learning_rate_sweep_is_grouped_by_its_overrides(tmp_path: Path) -> None:
    """train.lr is no choice halluc knows of: the runs' own overrides (.hydra/overrides.yaml)
    group them, the seeds (seed, probe.seed) and how they ran (device) do not."""
    for lr in (1e-3, 2e-3):
        for seed in (0, 1):
            make_run(tmp_path / "sweep" / f"lr{lr}_{seed}", 0.5, "none", "none", seed, lr=lr,
                     overrides=(f"train.lr={lr}", f"seed={seed}", f"probe.seed={seed}", "device=cpu",
                                "experiment=tiny"))
    out = tmp_path / "score"
    result = run_cli("score", f"runs={tmp_path / 'sweep'}", f"hydra.run.dir={out}")
    assert result.exit_code == 0, result.stdout + result.stderr
    rows = read_csv(out / "summary.csv")
    assert {row["train.lr"] for row in rows} == {"0.001", "0.002"} and len(rows) == 2 * 2
    row = row_of(rows, **{"train.lr": "0.002"}, eval="final")
    assert row["n_seeds"] == "2"
    assert stat(row, "known_accuracy") == pytest.approx(clipped(0.55), abs=1e-5)  # 0.6 and 0.5
    # paired on the seed, lr 0.002 minus 0.001 is -0.1 in every pair: a point, not an interval
    effect = row_of(read_csv(out / "effects.csv"), setting="train.lr", eval="final")
    assert (effect["baseline"], effect["value"], effect["n_pairs"]) == ("0.001", "0.002", "2")
    assert stat(effect, "known_accuracy_diff") == pytest.approx((-0.1, -0.1, -0.1))
    assert (out / "rates_vs_train_lr.png").read_bytes()[:4] == b"\x89PNG"
    assert "train" in result.stdout and "0.002" in result.stdout


def pretrain_dir(path: Path, split_seed: int) -> Path:
    """A pretraining run dir as finetune's ckpt= names it: its config.yaml is all gather reads."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(json.dumps({"seed": 0, "model": {"name": "transformer"},
                                                  "data": {"split_seed": split_seed, "paraphrases": 4}}))
    return path


def test_replicates_and_seeds(tmp_path: Path) -> None:
    """3 pretraining replicates x 2 seeds x 2 mitigations: a group of 6 runs over 3 replicates,
    its interval over the 3 replicate means; effects paired on replicate and seed."""
    shift = {0: 0.0, 1: 0.1, 2: 0.2}  # each replicate's split makes its known questions easier
    for split_seed in shift:
        ckpt = pretrain_dir(tmp_path / "pretrain" / f"split_{split_seed}", split_seed)
        for mitigation in ("none", "clean"):
            for seed in (0, 1):
                run_dir = tmp_path / "finetune" / f"rep{split_seed}" / mitigation / str(seed)
                make_run(run_dir, 0.5, mitigation, "none", seed, ckpt=ckpt,
                         overrides=(f"ckpt={ckpt}", f"mitigation={mitigation}", f"seed={seed}"))
                scores = run_dir / "eval" / "final" / "scores.json"
                data = json.loads(scores.read_text())
                data["by_known"]["known"]["accuracy"] -= shift[split_seed]
                scores.write_text(json.dumps(data))
    sweep = gather(str(tmp_path / "finetune"))
    assert len(sweep.groups) == 2 and sweep.varying() == ["mitigation"]
    rows = summary_rows(sweep)
    row = next(row for row in rows if row["mitigation"] == "none" and row["eval"] == "final")
    assert (row["n_replicates"], row["n_seeds"], row["n_runs"]) == (3, 2, 6)
    # seeds 0.7 and 0.6 within each replicate: means 0.65, 0.55, 0.45; t over the 3 of them
    assert (row["known_accuracy_mean"], row["known_accuracy_low"], row["known_accuracy_high"]) == pytest.approx(
        (0.55, 0.55 - 4.3027 * 0.1 / math.sqrt(3), 0.55 + 4.3027 * 0.1 / math.sqrt(3)), abs=1e-4)
    assert row["paraphrases"] == 4  # read from each pretraining run
    effect = next(row for row in effect_rows(sweep) if row["eval"] == "final")
    assert (effect["value"], effect["n_replicates"], effect["n_pairs"]) == ("clean", 3, 6)
    assert effect["known_accuracy_diff_mean"] == pytest.approx(0.1)  # clean's +0.1 in each pair
    assert effect["unknown_abstention_rate_diff_low"] == pytest.approx(0.5)


def _mitigation_sweep(root: Path, key: str, settings: tuple[tuple[str, Any], ...]) -> Path:
    """Two seeds of each (mitigation, value of its own setting `key`; None: the run has no such
    setting), as `finetune -m mitigation=... mitigation.<key>=...` writes them."""
    for mitigation, value in settings:
        for seed in (0, 1):
            run_dir = root / f"{mitigation}_{value}" / str(seed)
            overrides = (f"mitigation={mitigation}", f"seed={seed}") + ((f"mitigation.{key}={value}",) if value else ())
            make_run(run_dir, 0.5, mitigation, "none", seed, ckpt=root.parent / "pretrain", overrides=overrides)
            if value:
                config = json.loads((run_dir / "config.yaml").read_text())
                config["mitigation"][key] = value
                (run_dir / "config.yaml").write_text(json.dumps(config))
    return root


def test_a_mitigation_with_its_own_setting_is_compared_with_none(tmp_path: Path) -> None:
    """`mitigation=distill mitigation.inputs=both` beside `mitigation=none`: none has no inputs
    (UNSET), which must not keep distill from its baseline, and inputs=finetune is its own row."""
    settings = (("none", None), ("distill", "both"), ("distill", "finetune"))
    sweep = gather(str(_mitigation_sweep(tmp_path / "finetune", "inputs", settings)))
    assert sweep.varying() == ["mitigation", "mitigation.inputs"]
    effects = [row for row in effect_rows(sweep) if row["eval"] == "final" and row["setting"] == "mitigation"]
    assert sorted(row["mitigation.inputs"] for row in effects) == ["both", "finetune"]
    assert all(row["baseline"] == "none" and row["n_pairs"] == 2 for row in effects)
    # the sub-setting compared within distill (none has no inputs to compare)
    (inputs,) = [row for row in effect_rows(sweep) if row["eval"] == "final" and row["setting"] == "mitigation.inputs"]
    assert (inputs["baseline"], inputs["value"], inputs["mitigation"]) == ("both", "finetune", "distill")


def test_an_ambiguous_baseline_gives_no_row(tmp_path: Path) -> None:
    """replay (no weight) against distill at weights 1 and 3: either could be its baseline, so
    none is guessed; weight 3 against weight 1 is still compared."""
    settings = (("distill", 1.0), ("distill", 3.0), ("replay", None))
    sweep = gather(str(_mitigation_sweep(tmp_path / "finetune", "weight", settings)))
    rows = [row for row in effect_rows(sweep) if row["eval"] == "final"]
    assert [(row["setting"], row["baseline"], row["value"]) for row in rows] == [("mitigation.weight", 1.0, 3.0)]


def test_report_and_a_table_that_fits_100_columns(gathered: tuple[Path, str], sweep: Path) -> None:
    out, stdout = gathered
    report = (out / "report.md").read_text()
    assert report.startswith("# Sweep of 10 finetune runs in 5 groups")
    for part in ("## Results", "| freeze | mitigation | unknown_fraction | eval |", "0.750 [0.11, 1.00]", "## Effects",
                 "| mitigation | none | clean |", "![rates_vs_unknown_fraction](rates_vs_unknown_fraction.png)",
                 "(summary.csv)", "(effects.csv)", "Student-t"):
        assert part in report, part
    assert stdout.rstrip().endswith(f"report {out / 'report.md'}")
    assert "effects.csv" in stdout and (out / "effects.csv").is_file()


def rendered(table: Table, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_sweep_tables_fit_100_columns_and_keep_their_key_columns(sweep: Path) -> None:
    gathered = gather(str(sweep))
    # a long mitigation name, as kb_verify's twins have
    rescore = lambda point_dir: json.loads((point_dir / "scores.json").read_text())  # noqa: E731
    gathered = with_verified_runs(gathered, {"kb_verify(abstain)": rescore})
    summary = rendered(sweep_table(gathered, summary_rows(gathered), 100), 100)
    effects = rendered(effects_table(gathered, effect_rows(gathered), 100), 100)
    for text in (summary, effects):
        assert max(len(line) for line in text.splitlines()) <= 100
    for whole in ("freeze", "mitigation", "eval", "seeds", "acc", "known", "none+kb_verify(abstain)", "head_only",
                  "0.750", "[0.11, 1.00]"):
        assert whole in summary, whole
    assert "diff acc" in effects and "+0.100" in effects


def test_a_labelled_data_sweep_is_gathered_by_its_error_rate(tmp_path: Path) -> None:
    for split_seed in (0, 1):  # data=labelled draws its own split: a replicate each
        for seed in (0, 1):
            run_dir = tmp_path / f"split{split_seed}_seed{seed}"
            (run_dir / "eval" / "final").mkdir(parents=True)
            (run_dir / "config.yaml").write_text(json.dumps(
                {"ckpt": str(tmp_path / "lm"), "seed": seed, "data": {"split_seed": split_seed, "train": "t.csv"}}))
            error = 0.2 + 0.1 * split_seed + 0.05 * seed
            (run_dir / "eval" / "final" / "scores.json").write_text(
                json.dumps({"n": 20, "error_rate": error, "accuracy": 1 - error, "by_class": {}, "confusion": {}}))
    sweep = gather(str(tmp_path))
    [row] = summary_rows(sweep)
    assert (row["n_replicates"], row["n_seeds"], row["unknown_fraction"]) == (2, 2, "-")
    # replicate means 0.225 and 0.325: a t-interval over 2, clipped to [0, 1]
    assert (row["error_rate_mean"], row["error_rate_low"], row["error_rate_high"]) == pytest.approx((0.275, 0.0, 0.91),
                                                                                                    abs=0.01)


def test_over_refusal_columns_of_a_sweep_taught_to_abstain(tmp_path: Path) -> None:
    # data.unknown_label=idk runs: seeds refuse 0.2 and 0.4 of the known questions and answer
    # 0.6 and 0.8 of all questions right among those they answer
    for seed, (refused, answered_right) in enumerate(((0.2, 0.6), (0.4, 0.8))):
        run_dir = tmp_path / "sweep" / str(seed)
        make_run(run_dir, 0.5, "none", "none", seed)
        for point in ("early_stop", "final"):
            file = run_dir / "eval" / point / "scores.json"
            scores = json.loads(file.read_text())
            scores["by_known"]["known"]["abstention_rate"] = refused
            scores["overall"].update(abstention_rate=0.5, answered_accuracy=answered_right)
            file.write_text(json.dumps(scores))
    out = tmp_path / "score"
    result = run_cli("score", f"runs={tmp_path / 'sweep'}", f"hydra.run.dir={out}")
    assert result.exit_code == 0, result.stdout + result.stderr
    row = row_of(read_csv(out / "summary.csv"), eval="final")
    assert stat(row, "false_abstention_rate")[0] == pytest.approx(0.3)
    assert stat(row, "answered_accuracy")[0] == pytest.approx(0.7)
    assert "acc answered" in (out / "report.md").read_text() and "abstain known" in (out / "report.md").read_text()
    # the console table puts them after known accuracy (a sweep that abstains on nothing leaves them out)
    assert "answered" in result.stdout and "0.700" in result.stdout and "0.300" in result.stdout


def test_a_run_a_score_mitigation_cannot_score_is_skipped_not_fatal(sweep: Path) -> None:
    from halluc_cli.errors import UserError
    from halluc_cli.scoring.aggregate import Unscorable

    gathered = gather(str(sweep))
    first = gathered.runs[0].path

    def rescore(point_dir: Path) -> dict:
        if first in point_dir.parents:
            raise Unscorable("its validation answers carry no hidden_probe score")
        return json.loads((point_dir / "scores.json").read_text())

    twinned = with_verified_runs(gathered, {"rule": rescore})
    assert twinned.verified_twins == len(gathered.runs) - 1
    assert (first, "not under rule: its validation answers carry no hidden_probe score") in twinned.skipped
    twins = [row for row in effect_rows(twinned) if "+rule" in str(row["value"])]
    assert twins and all(row["baseline"] == row["value"].removesuffix("+rule") for row in twins)  # its own training

    def never(point_dir: Path) -> dict:
        raise Unscorable("its validation answers carry no vibes score")

    with pytest.raises(UserError, match="carry no vibes score, nor is any other run"):
        with_verified_runs(gathered, {"rule": never})


def test_every_estimator_gets_both_detection_columns() -> None:
    # "<estimator>_unknown_roc_auc" must not also be "<another estimator>_roc_auc"
    from halluc_cli.scoring.aggregate import METRICS
    from halluc_cli.uncertainty import ESTIMATORS

    for estimator in ESTIMATORS:
        assert METRICS[f"{estimator}_roc_auc"].path[2] == estimator
        assert METRICS[f"{estimator}_unknown_roc_auc"].path[2] == estimator


def test_the_ledger_shares_are_paired_effects(tmp_path: Path) -> None:
    """Known accuracy's drop splits into lost storage and failed extraction by the paired
    differences of the ledger's shares (ledger=true runs)."""
    for fraction, lost in ((0.0, 0.1), (0.5, 0.3)):
        for seed in (0, 1):
            run_dir = tmp_path / "finetune" / str(fraction) / str(seed)
            make_run(run_dir, fraction, "none", "none", seed, ckpt=tmp_path / "pretrain",
                     overrides=(f"data.unknown_fraction={fraction}", f"seed={seed}"))
            for point in ("early_stop", "final"):
                scores_file = run_dir / "eval" / point / "scores.json"
                scores = json.loads(scores_file.read_text())
                scores["ledger"] = {"retained": 0.8 - lost, "lost": lost + 0.01 * seed, "stored_not_extracted": 0.1}
                scores_file.write_text(json.dumps(scores))
    effect = next(row for row in effect_rows(gather(str(tmp_path / "finetune"))) if row["eval"] == "final")
    assert effect["ledger_lost_diff_mean"] == pytest.approx(0.2)
    assert effect["ledger_retained_diff_mean"] == pytest.approx(-0.2)
    assert effect["ledger_stored_not_extracted_diff_mean"] == pytest.approx(0.0)
