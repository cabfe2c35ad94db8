"""`halluc finetune mitigation=clean` end to end through the CLI, and its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import TINY, run_cli

SHORT = ["train.max_steps=2", "train.eval_every=2", "eval_after=false"]
FAST_PROBE = ["probe.num_samples=2", "probe.max_new_tokens=4"]  # the tiny model answers in a word or two
IDK = "I don't know"
CATEGORIES = ["HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown"]


def finetune(run_dir: Path, ckpt: Path, *overrides: str):
    return run_cli("finetune", *TINY, f"ckpt={ckpt}", f"hydra.run.dir={run_dir}", *SHORT, *overrides)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_report_adds_up(run_dir: Path) -> dict:
    """The report's counts agree with each other and with the files; returns the report."""
    report = json.loads((run_dir / "cleaning_report.json").read_text())
    raw = _jsonl(run_dir / "qa" / "finetune.jsonl")
    cleaned = _jsonl(run_dir / "qa" / "finetune_clean.jsonl")
    assert report["input"] == len(raw) and report["output"] == len(cleaned)
    steps = report["steps"]
    names = [s["step"] for s in steps]
    assert names == ["normalize", "deduplicate", "drop_kb_contradictions", "drop_conflicts", "probe"]
    assert steps[0]["before"] == len(raw) and steps[-1]["after"] == len(cleaned)
    for earlier, later in zip(steps, steps[1:]):
        assert earlier["after"] == later["before"]
    for step in steps:
        assert step["before"] - step["removed"] == step["after"]
        assert sum(step["reasons"].values()) >= step["removed"] + step["changed"]
    slick = report["slick"]
    assert sum(slick["all"].values()) + slick["unprobed"] == steps[-1]["before"]
    for category in CATEGORIES:
        assert slick["by_split"]["known"][category] + slick["by_split"]["unknown"][category] == slick["all"][category]
    for record in cleaned:
        assert {"id", "question", "answer", "aliases", "subject", "relation", "known", "split"} <= set(record)
        assert record["slick_category"] in CATEGORIES
        assert 0 <= record["p_correct_greedy"] <= 1 and 0 <= record["p_correct_sample"] <= 1
    return report


def test_clean_with_idk_end_to_end_on_the_tiny_experiment(lstm_run: Path, tmp_path: Path) -> None:
    result = finetune(tmp_path, lstm_run, "mitigation=clean", "mitigation.unknown_action=idk", *FAST_PROBE)
    assert result.exit_code == 0, result.stderr + result.stdout
    assert "cleaning: 24 -> 24 fine-tuning examples" in result.stdout and "SliCK" in result.stdout
    report = _check_report_adds_up(tmp_path)
    cleaned = _jsonl(tmp_path / "qa" / "finetune_clean.jsonl")
    relabelled = {item["id"] for item in report["steps"][-1]["examples"]}
    assert report["steps"][-1]["changed"] == len(relabelled) == report["slick"]["all"]["Unknown"]
    for record in cleaned:
        assert (record["answer"] == IDK) == (record["id"] in relabelled)
        assert (record["slick_category"] == "Unknown") == (record["id"] in relabelled)
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()
    config = (tmp_path / "config.yaml").read_text()
    assert "unknown_action: idk" in config


def test_clean_drops_the_facts_a_model_does_not_know(knowing_run, tmp_path: Path) -> None:
    # 4 fine-tuning examples, 2 of facts in the model's pretraining text, 2 of others.
    result = finetune(tmp_path, knowing_run.path, *knowing_run.data_overrides, "mitigation=clean")
    assert result.exit_code == 0, result.stderr + result.stdout
    report = _check_report_adds_up(tmp_path)
    cleaned = _jsonl(tmp_path / "qa" / "finetune_clean.jsonl")
    assert (report["input"], report["output"]) == (4, 2)
    assert all(record["known"] for record in cleaned)
    assert report["slick"]["by_split"]["unknown"]["Unknown"] == 2
    assert report["steps"][-1]["reasons"] == {"SliCK Unknown": 2}
    metrics = _jsonl(tmp_path / "metrics.jsonl")
    assert "train_acc_known" in metrics[-1] and "train_acc_unknown" not in metrics[-1]  # trained on the cleaned set

    # Run again into the same dir: the cleaned set is read back, not probed again.
    again = finetune(tmp_path, knowing_run.path, *knowing_run.data_overrides, "mitigation=clean")
    assert again.exit_code == 0, again.stderr + again.stdout
    assert "cleaned set read back" in again.stdout and "cleaning:" not in again.stdout


def test_dropping_every_example_is_a_clear_error(lstm_run: Path, tmp_path: Path) -> None:
    # The tiny pretraining run knows none of its facts: every example is Unknown.
    result = finetune(tmp_path, lstm_run, "mitigation=clean", *FAST_PROBE)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cleaning left no fine-tuning example of 24" in lines[0]
    assert "mitigation.unknown_action=idk" in lines[0]
    assert json.loads((tmp_path / "cleaning_report.json").read_text())["output"] == 0
    assert not (tmp_path / "qa" / "finetune_clean.jsonl").exists()
    assert not (tmp_path / "checkpoint").exists()


def test_a_checkpoint_trained_without_cleaning_is_not_resumed_with_it(lstm_run: Path, tmp_path: Path) -> None:
    assert finetune(tmp_path, lstm_run).exit_code == 0
    result = finetune(tmp_path, lstm_run, "mitigation=clean")
    assert result.exit_code == 2 and "trained with mitigation.name=none, not clean" in result.stderr


def test_bad_unknown_action_is_one_line_and_writes_nothing(lstm_run: Path, tmp_path: Path) -> None:
    result = finetune(tmp_path / "run", lstm_run, "mitigation=clean", "mitigation.unknown_action=maybe")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Invalid value 'maybe', expected one of [drop, idk]" in lines[0]
    assert "full_key: mitigation.unknown_action" in lines[0]
    assert not (tmp_path / "run").exists()


def test_misspelled_clean_key_fails_at_composition(lstm_run: Path, tmp_path: Path) -> None:
    result = finetune(tmp_path, lstm_run, "mitigation=clean", "mitigation.num_sample=3")
    assert result.exit_code == 2 and "num_sample" in result.stderr


def test_kb_verify_belongs_to_score_and_clean_to_finetune(lstm_run: Path, tmp_path: Path) -> None:
    result = finetune(tmp_path / "ft", lstm_run, "mitigation=kb_verify")
    assert result.exit_code == 2
    assert "Could not find 'mitigation/kb_verify'; Available options in 'mitigation': clean, distill, none, replay" in result.stderr
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps({"id": "1", "question": "q", "prediction": "Paris", "answer": "Paris",
                                       "known": True, "abstained": False}) + "\n")
    result = run_cli("score", f"predictions={predictions}", "mitigation=clean", f"hydra.run.dir={tmp_path / 'score'}")
    assert result.exit_code == 2
    assert "Could not find 'mitigation/clean'; Available options in 'mitigation': abstain_uncertain, kb_verify, none" in result.stderr
