"""mitigation=distill and replay: fine-tuning that keeps every example. The KL term, the
batch mixer, resume, bad settings, and the runs through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli_helpers import TINY, assert_one_line_error, assert_same_weights, run_cli, run_killed_at_step
from halluc_cli.config import DistillOn
from halluc_cli.mitigation.distill import SelfDistillation
from halluc_cli.models import load_model
from halluc_cli.training.batches import Example, ExampleBatches, ReplayMixedBatches, replay_rows


def finetune(run_dir: Path, ckpt: Path, *overrides: str):
    result = run_cli("finetune", *TINY, f"ckpt={ckpt}", f"hydra.run.dir={run_dir}", *overrides)
    assert result.exit_code == 0, result.stderr + result.stdout
    return result


def _mixed_batch(pad_id: int) -> "Batch":  # noqa: F821
    """Two QA rows (prompt, then answer) and one replayed row (loss on every token)."""
    qa = [Example([5, 6, 7], [8, 2]), Example([5, 9], [10, 11, 2])]
    replayed = [Example([2], [12, 13, 14, 2])]
    mixer = ReplayMixedBatches(ExampleBatches(qa, 2, pad_id), ExampleBatches(replayed, 1, pad_id, drop_last=True))
    return mixer.next_batch()


@pytest.mark.parametrize("inputs", list(DistillOn))
def test_the_kl_term_is_zero_while_the_model_is_its_reference(inputs: DistillOn, transformer_run: Path) -> None:
    model = load_model(transformer_run / "checkpoint").eval()
    term = SelfDistillation(load_model(transformer_run / "checkpoint"), 1.0, 2.0, inputs)
    batch = _mixed_batch(pad_id=0)
    logits, _ = model(batch.input_ids, None, batch.attention_mask)
    assert term.count(batch) > 0
    assert term(batch, logits).item() == 0.0  # exactly: the step-0 loss is the plain loss
    torch.manual_seed(0)
    with torch.no_grad():  # once trained, the two differ
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    logits, _ = model(batch.input_ids, None, batch.attention_mask)
    assert term(batch, logits).item() > 1e-4


def test_the_kl_term_covers_prompts_or_replayed_text_never_answers() -> None:
    batch = _mixed_batch(pad_id=0)
    term = SelfDistillation(torch.nn.Linear(1, 1), 1.0, 1.0, DistillOn.finetune)  # positions need no model
    prompts = term.positions(batch)
    assert not (prompts & (batch.labels != -100)).any()  # the answer positions are the answer loss's
    assert prompts[:2].sum() == 2 + 1 and not prompts[2].any()  # prompt tokens but the last, QA rows only
    term.inputs = DistillOn.replay
    assert term.positions(batch)[2].sum() == 4 and not term.positions(batch)[:2].any()
    term.inputs = DistillOn.both
    assert term.count(batch) == 2 + 1 + 4


def test_replay_batches_hold_the_configured_share() -> None:
    rows = replay_rows(0.25, 8)
    assert rows == 2 and replay_rows(0.01, 8) == 1 and replay_rows(0.99, 8) == 7  # one of each kind at least
    qa = [Example([1, 2], [3, 0]) for _ in range(18)]  # 3 batches of 6 QA rows an epoch
    replayed = [Example([0], [4 + i, 0]) for i in range(5)]

    def mixer() -> ReplayMixedBatches:
        return ReplayMixedBatches(ExampleBatches(qa, 8 - rows, 9, seed=1), ExampleBatches(replayed, rows, 9, seed=1, drop_last=True))

    batches = mixer()
    for _ in range(7):
        batch = batches.next_batch()
        assert batch.input_ids.shape[0] == 8 and batch.replayed.tolist() == [False] * 6 + [True] * 2
        assert (batch.input_ids[batch.replayed, 0] == 0).all() and (batch.input_ids[~batch.replayed, 0] == 1).all()
        assert ((batch.labels != -100) == batch.attention_mask.bool())[batch.replayed].all()  # loss on every token
    state = batches.state_dict()
    resumed = mixer()
    resumed.load_state_dict(state)
    for _ in range(4):  # continues both sources exactly
        assert torch.equal(resumed.next_batch().input_ids, batches.next_batch().input_ids)


SETTINGS = {
    "replay": ["mitigation=replay", "mitigation.share=0.25"],
    "distill_lora": ["mitigation=distill", "mitigation.inputs=both", "mitigation.weight=0.5",
                     "mitigation.temperature=2", "freeze=lora"],
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_killed_run_resumes_to_the_same_weights(name: str, transformer_run: Path, tmp_path: Path) -> None:
    settings = [*SETTINGS[name], "train.max_steps=8", "train.save_every=3", "train.eval_every=4", "eval_after=false"]
    finetune(tmp_path / "whole", transformer_run, *settings)
    run_killed_at_step(5, "finetune", *TINY, f"ckpt={transformer_run}", f"hydra.run.dir={tmp_path / 'killed'}",
                       *settings)
    assert "resuming from" in finetune(tmp_path / "killed", transformer_run, *settings).stdout
    assert_same_weights(tmp_path / "whole", tmp_path / "killed")
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["train_acc_unknown"] is not None  # the unknown examples are still trained on and watched


def test_distill_on_finetune_inputs_and_replay_of_a_named_file(transformer_run: Path, tmp_path: Path) -> None:
    finetune(tmp_path / "distill", transformer_run, "mitigation=distill", "train.max_steps=2", "eval_after=false")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The capital of France is Paris.\n\nParis is in Europe.\n")
    result = finetune(tmp_path / "replay", transformer_run, "mitigation=replay", f"mitigation.corpus=[{corpus}]",
                      "train.max_steps=2", "eval_after=false")
    assert "replay: 2 of the 8 rows of each batch from 2 lines of text" in result.stdout


@pytest.mark.parametrize(
    "overrides, phrases",
    [
        (["mitigation=replay", "mitigation.share=0"], ["mitigation.share=0.0 is out of range", "(0, 1)"]),
        (["mitigation=replay", "mitigation.share=1.5"], ["mitigation.share=1.5 is out of range"]),
        (["mitigation=distill", "mitigation.weight=-1"], ["mitigation.weight=-1.0 is out of range", "at least 0"]),
        (["mitigation=distill", "mitigation.temperature=0"], ["mitigation.temperature=0.0 is out of range"]),
        (["mitigation=replay", "mitigation.corpus=[no_such_file.txt]"], ["no_such_file.txt is not a file"]),
        (["mitigation=distill", "mitigation.inputs=both", "train.batch_size=1"], ["train.batch_size to 2 or more"]),
    ],
)
def test_bad_settings_fail_before_the_run_dir_exists(overrides: list[str], phrases: list[str],
                                                     transformer_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("finetune", *TINY, f"ckpt={transformer_run}", f"hydra.run.dir={run_dir}", *overrides)
    assert_one_line_error(result, *phrases)
    assert not run_dir.exists()


def test_replay_of_a_model_without_pretraining_text_asks_for_a_corpus(transformer_run: Path, tmp_path: Path) -> None:
    finetuned = tmp_path / "finetuned"  # a finetune run holds no tokens/ of its own
    finetune(finetuned, transformer_run, "train.max_steps=1", "eval_after=false")
    result = run_cli("finetune", *TINY, f"ckpt={finetuned}", f"hydra.run.dir={tmp_path / 'run'}", "mitigation=replay")
    assert_one_line_error(result, "holds no pretraining text to replay", "mitigation.corpus=[file.txt]")
    assert not (tmp_path / "run").exists()
