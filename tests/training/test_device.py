"""Device choices as pure functions (no GPU needed), batch pinning, and torch.compile wiring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import pretrain
from halluc_cli.config import DeviceConfig, TrainConfig
from halluc_cli.errors import UserError
from halluc_cli.models import LanguageModel, load_model
from halluc_cli.models.lstm import LSTMLanguageModel
from halluc_cli.training.batches import TokenStream
from halluc_cli.training.checkpoint import TRAINING_STATE_FILE
from halluc_cli.training.device import (
    PinnedBatches,
    build_accelerator,
    pin_batches,
    resolve_precision,
    use_gpu,
    weights_dtype,
)
from halluc_cli.training.loop import Trainer


@pytest.mark.parametrize(
    "precision, on_gpu, native_bf16, expected",
    [
        ("auto", True, True, "bf16"),  # Ampere and newer
        ("auto", True, False, "fp16"),  # pre-Ampere: fp16, accelerate adds the gradient scaler
        ("auto", False, False, "no"),  # the CPU: fp32
        ("bf16", False, False, "bf16"),
        ("fp32", True, True, "no"),
        ("fp16", True, True, "fp16"),
    ],
)
def test_precision_choice(precision: str, on_gpu: bool, native_bf16: bool, expected: str) -> None:
    assert resolve_precision(precision, on_gpu, native_bf16) == expected


def test_weights_load_in_the_autocast_precision() -> None:
    assert weights_dtype("bf16") == torch.bfloat16
    assert weights_dtype("fp16") == torch.float16
    assert weights_dtype("no") == torch.float32


def test_bad_precisions_are_user_errors() -> None:
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        resolve_precision("fp16", on_gpu=False, native_bf16=False)


def test_device_choice() -> None:
    assert use_gpu("auto", has_cuda=True) and use_gpu("gpu", has_cuda=True)
    assert not use_gpu("auto", has_cuda=False) and not use_gpu("cpu", has_cuda=True)


def test_gpu_without_a_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="device=gpu but no CUDA GPU is visible"):
        build_accelerator(DeviceConfig(name="gpu"))


def test_batches_are_pinned_for_a_gpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = TokenStream(np.arange(201), batch_size=2, seq_len=5, ordered=True)
    assert pin_batches(stream, torch.device("cpu")) is stream
    pinned_calls = []
    # Pinning needs a CUDA driver; stand in for it with a copy that is counted.
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned_calls.append(1) or self.clone())
    pinned = pin_batches(stream, torch.device("cuda"))
    reference = TokenStream(np.arange(201), batch_size=2, seq_len=5, ordered=True)
    assert isinstance(pinned, PinnedBatches)
    first, expected = pinned.next_batch(), reference.next_batch()
    assert torch.equal(first.input_ids, expected.input_ids) and torch.equal(first.labels, expected.labels)
    assert len(pinned_calls) == 2  # inputs and labels (no mask)
    assert len(list(pinned.one_pass(3))) == 3
    state = pinned.state_dict()
    pinned.next_batch()
    pinned.load_state_dict(state)
    assert torch.equal(pinned.next_batch().input_ids, reference.next_batch().input_ids)


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.nn.Module, dict]]:
    """torch.compile with dynamo's "eager" backend; the list gets each (module, kwargs) call.

    Inductor's code generation takes ~40 s on 2 CPU cores; the "eager" backend traces the
    same graphs and runs them as they are, so the wiring is tested in seconds.
    """
    real_compile, calls = torch.compile, []

    def eager_compile(model, **kwargs):
        calls.append((model, kwargs))
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    return calls


def test_trainer_trains_compiled_and_hands_out_the_module_itself(tmp_path: Path, compiled: list) -> None:
    model = LSTMLanguageModel(vocab_size=50, embedding_dim=8, hidden_dim=8, num_layers=1)
    accelerator = build_accelerator(DeviceConfig(name="cpu", precision="fp32", compile=True))
    stream = TokenStream(np.arange(401) % 50, batch_size=2, seq_len=5, ordered=True)
    trainer = Trainer(model, None, TrainConfig(progress=False), accelerator, tmp_path, stream, stream)
    trainer._train_step()
    assert compiled[0][0] is model and trainer.model is not model
    assert trainer.unwrapped is model  # what checkpoints and evaluators get


def test_compiled_pretrain_writes_clean_checkpoint_keys(tmp_path: Path, compiled: list) -> None:
    run_dir = tmp_path / "run"
    pretrain(run_dir, "model=transformer", "device.compile=true", "train.max_steps=4", "train.eval_every=2")
    [(model, kwargs)] = compiled
    assert isinstance(model, LanguageModel) and kwargs["backend"] == "inductor"
    keys = load_file(str(run_dir / "checkpoint" / "model.safetensors")).keys()
    assert keys and not any("_orig_mod" in key for key in keys)
    assert isinstance(load_model(run_dir / "checkpoint"), LanguageModel)


def test_compile_is_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda *args, **kwargs: pytest.fail("compiled without device.compile"))
    pretrain(tmp_path / "run", "model=lstm", "train.max_steps=2", "train.eval_every=2")


def test_the_fp16_loss_scale_survives_a_resume(tmp_path: Path) -> None:
    """fp16 needs a GPU, so the gradient scaler accelerate would make is put in by hand."""

    def trainer_with_scaler(scale: float) -> Trainer:
        model = LSTMLanguageModel(vocab_size=50, embedding_dim=8, hidden_dim=8, num_layers=1)
        accelerator = build_accelerator(DeviceConfig(name="cpu", precision="fp32"))
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        stream = TokenStream(np.arange(401) % 50, batch_size=2, seq_len=5, ordered=True)
        return Trainer(model, None, TrainConfig(progress=False), accelerator, tmp_path, stream, stream)

    saved = trainer_with_scaler(scale=2.0**10)._training_state(carry=None)
    resumed = trainer_with_scaler(scale=2.0**16)
    torch.save(saved, tmp_path / TRAINING_STATE_FILE)
    resumed._restore(tmp_path)
    assert resumed.accelerator.scaler.get_scale() == 2.0**10
