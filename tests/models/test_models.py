"""Both model families: shapes, gradients, carried state, save/load round trip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from halluc_cli.config import LSTMConfig, TokenizerConfig, TransformerConfig
from halluc_cli.data.tokenizer import train_tokenizer
from halluc_cli.errors import UserError
from halluc_cli.models import build_model, load_model

VOCAB_LINES = [f"word{i} and some other words number {i % 7}" for i in range(50)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(VOCAB_LINES, TokenizerConfig(kind="word"))


def _configs():
    return [
        LSTMConfig(hidden_dim=16, num_layers=2, dropout=0.1),
        LSTMConfig(hidden_dim=16, num_layers=3, dropout=0.0, tie_weights=True),
        TransformerConfig(hidden_dim=16, num_layers=2, num_heads=2, max_positions=32, dropout=0.0),
        TransformerConfig(architecture="llama", hidden_dim=16, num_layers=2, num_heads=2, max_positions=32),
    ]


@pytest.mark.parametrize("cfg", _configs(), ids=lambda c: f"{c.name}-{getattr(c, 'architecture', '')}{c.num_layers}")
def test_forward_backward_shapes(cfg, tokenizer) -> None:
    model = build_model(cfg, tokenizer)
    ids = torch.randint(0, len(tokenizer), (3, 7))
    logits, _ = model(ids)
    assert logits.shape == (3, 7, len(tokenizer))
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert len(model.blocks()) == cfg.num_layers


@pytest.mark.parametrize("cfg", _configs(), ids=lambda c: f"{c.name}-{c.num_layers}")
def test_save_load_round_trip(cfg, tokenizer, tmp_path: Path) -> None:
    model = build_model(cfg, tokenizer).eval()
    model.save(tmp_path)
    loaded = load_model(tmp_path).eval()
    ids = torch.randint(0, len(tokenizer), (2, 5))
    assert torch.equal(model(ids)[0], loaded(ids)[0])
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.bin"))  # safetensors only


@pytest.mark.parametrize("cfg", _configs(), ids=lambda c: f"{c.name}-{c.num_layers}")
def test_load_in_a_dtype(cfg, tokenizer, tmp_path: Path) -> None:
    build_model(cfg, tokenizer).save(tmp_path)
    assert {p.dtype for p in load_model(tmp_path, dtype=torch.bfloat16).parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_model(tmp_path).parameters()} == {torch.float32}


def test_transformer_checkpoint_loads_in_plain_transformers(tokenizer, tmp_path: Path) -> None:
    model = build_model(TransformerConfig(hidden_dim=16, num_layers=2, num_heads=2), tokenizer).eval()
    model.save(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, len(tokenizer), (2, 5))
    assert torch.allclose(plain(ids).logits, model(ids)[0])


def test_lstm_carried_state_equals_one_long_pass(tokenizer) -> None:
    model = build_model(LSTMConfig(hidden_dim=16, num_layers=2, dropout=0.0), tokenizer).eval()
    ids = torch.randint(0, len(tokenizer), (2, 10))
    whole, _ = model(ids)
    first, state = model(ids[:, :6])
    second, _ = model(ids[:, 6:], state)
    assert torch.allclose(torch.cat([first, second], dim=1), whole, atol=1e-6)


def test_tied_lstm_needs_equal_sizes(tokenizer) -> None:
    with pytest.raises(UserError, match="embedding_dim == model.hidden_dim"):
        build_model(LSTMConfig(hidden_dim=16, embedding_dim=8, num_layers=1, tie_weights=True), tokenizer)


def test_load_refuses_other_family(tokenizer, tmp_path: Path) -> None:
    build_model(LSTMConfig(hidden_dim=8, num_layers=1), tokenizer).save(tmp_path)
    with pytest.raises(UserError, match="is a lstm model but model=transformer"):
        load_model(tmp_path, expected_family="transformer")


def test_load_refuses_a_dir_that_is_no_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a halluc checkpoint"):
        load_model(tmp_path)


@pytest.mark.parametrize("cfg", [_configs()[0], _configs()[2]], ids=lambda c: c.name)
@pytest.mark.parametrize("damage", ["truncated", "not safetensors", "empty"])
def test_damaged_weights_are_a_user_error(cfg, damage: str, tokenizer, tmp_path: Path) -> None:
    build_model(cfg, tokenizer).save(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "not safetensors": b"PK\x03\x04" * 64, "empty": b""}
    weights.write_bytes(damaged[damage])
    with pytest.raises(UserError, match=re.escape(f"{weights} is truncated or not a safetensors file")):
        load_model(tmp_path)


@pytest.mark.parametrize("name", ["halluc_model.json", "config.json"])
def test_malformed_json_of_a_checkpoint_is_a_user_error(name: str, tokenizer, tmp_path: Path) -> None:
    build_model(LSTMConfig(hidden_dim=8, num_layers=1), tokenizer).save(tmp_path)
    (tmp_path / name).write_text('{"family": "ls')  # cut short
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / name} is not valid JSON")):
        load_model(tmp_path)


def test_transformer_attention_is_sdpa_built_and_loaded(tokenizer, tmp_path: Path) -> None:
    # PyTorch's fused scaled_dot_product_attention (flash / memory-efficient kernels on a GPU).
    cfg = TransformerConfig(hidden_dim=16, num_layers=1, num_heads=2, max_positions=32)
    model = build_model(cfg, tokenizer)
    model.save(tmp_path)
    assert model.hf.config._attn_implementation == "sdpa"
    assert load_model(tmp_path).hf.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("cfg", [_configs()[0], _configs()[2], _configs()[3]], ids=["lstm", "gpt2", "llama"])
def test_repeat_state_repeats_each_row_in_place(cfg, tokenizer) -> None:
    """Row i of the state becomes rows 3i, 3i+1, 3i+2, and decoding from them continues row i."""
    model = build_model(cfg, tokenizer).eval()
    ids = torch.randint(0, len(tokenizer), (2, 5))
    next_ids = torch.randint(0, len(tokenizer), (2, 1))
    with torch.no_grad():
        _, state = model(ids, use_cache=True)
        expected, _ = model(torch.cat([ids, next_ids], dim=1))
        repeated = model.repeat_state(state, 3)
        if cfg.name == "lstm":  # per layer (h, c), each (1, B, H)
            assert [tuple(t.shape) for layer in repeated for t in layer] == [(1, 6, 16)] * 4
        else:  # per layer keys and values (B, heads, T, head_dim)
            assert [tuple(layer.keys.shape) for layer in repeated.layers] == [(6, 2, 5, 8)] * 2
        logits, _ = model(next_ids.repeat_interleave(3, dim=0), repeated, use_cache=True)
    assert torch.allclose(logits[:, -1], expected[:, -1].repeat_interleave(3, dim=0), atol=1e-5)
