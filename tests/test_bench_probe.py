"""scripts/bench_probe.py: a smoke run of the whole benchmark on a tiny model (no timings checked)."""

from cli_helpers import import_script


def test_the_probe_benchmark_runs_on_a_tiny_model(capsys) -> None:
    bench = import_script("bench_probe")
    argv = ["--size", "tiny", "--facts", "2", "--loop-facts", "1", "--exemplar-sets", "2", "--num-samples", "2",
            "--max-new-tokens", "3", "--rounds", "1"]  # fmt: skip
    assert bench.main(argv) > 0
    printed = capsys.readouterr().out
    assert "facts/s" in printed and "speed-up" in printed
    assert "greedy answers equal generate's in 2/2 prompts" in printed
