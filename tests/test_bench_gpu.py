"""scripts/bench_gpu.py: its FLOP counts by the textbook formulas, its peak table, and a tiny
smoke run of the whole benchmark on the CPU (the GPU numbers need a GPU)."""

import pytest
from omegaconf import OmegaConf

from halluc_cli.config import LSTMConfig, TransformerConfig
from halluc_cli.models import build_model
from cli_helpers import import_script


@pytest.fixture(scope="module")
def bench():
    """scripts/bench_gpu.py as a module."""
    return import_script("bench_gpu")


def test_transformer_flops_are_6n_plus_attention(bench) -> None:
    vocab, d, layers, positions, seq = 100, 16, 3, 32, 20
    cfg = TransformerConfig(hidden_dim=d, num_layers=layers, num_heads=2, max_positions=positions, tie_weights=True)
    model = build_model(OmegaConf.structured(cfg), bench._Vocab(vocab))
    # GPT-2: per block 12 d^2 weights + 13 d biases and norms, final norm 2 d, tied head V d;
    # the position table (positions x d) is only looked up.
    weights = vocab * d + layers * (12 * d * d + 13 * d) + 2 * d
    assert bench.matmul_parameters(model) == weights
    assert bench.flops_per_token(model, seq) == 6 * weights + 12 * layers * d * seq


def test_lstm_flops_leave_out_the_embedding(bench) -> None:
    vocab, h = 100, 16
    model = build_model(OmegaConf.structured(LSTMConfig(hidden_dim=h, num_layers=2)), bench._Vocab(vocab))
    lstm_layer = 4 * h * (h + h) + 2 * 4 * h  # input and recurrent weights, two biases
    assert bench.flops_per_token(model, 35) == 6 * (2 * lstm_layer + h * vocab + vocab)


@pytest.mark.parametrize(
    "name, tflops",
    [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H200", 989.4),
     ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.1), ("NVIDIA A10G", None)],
)  # fmt: skip
def test_peak_by_device_name(bench, name: str, tflops: float | None) -> None:
    assert bench.peak_tflops(name) == tflops


def test_tiny_run_on_the_cpu(bench, capsys: pytest.CaptureFixture) -> None:
    results = bench.main(["--device", "cpu", "--tiny", "--steps", "1", "--warmup", "0", "--peak-tflops", "1"])
    assert [r.title.split()[0] for r in results] == ["GPT", "LSTM"]
    assert all(r.tokens_per_s > 0 and r.model_tflops > 0 for r in results)
    assert "MFU" in capsys.readouterr().out
