"""The evaluate-metrics benchmark runs end to end in a reduced form: its before and after
versions agree (it asserts so before timing) and it prints both ratios."""

from __future__ import annotations

from bench_helpers import benchmark_ratios


def test_evaluate_metrics_benchmark_prints_its_ratios() -> None:
    args = ["--batch", "4", "--tiles", "8", "--tile", "32", "--bands", "40",
            "--steps", "1", "--repeats", "1", "--threads", "1"]  # fmt: skip
    ratios = benchmark_ratios("evaluate_metrics.py", args)
    assert set(ratios) == {"metrics", "band_stats"}
    assert all(v > 0 for v in ratios.values()), ratios
