"""The optimizer benchmark runs end to end in a reduced form and prints its three ratios."""

from __future__ import annotations

from bench_helpers import benchmark_ratios


def test_optimizers_benchmark_prints_its_ratios() -> None:
    args = ["--batch", "4", "--tiles", "8", "--tile", "32", "--bands", "40", "--rank", "4",
            "--steps", "1", "--repeats", "1", "--threads", "1"]  # fmt: skip
    ratios = benchmark_ratios("optimizers.py", args)
    assert set(ratios) == {"update/batched", "teacher/muon", "student/muon"}
    assert all(v > 0 for v in ratios.values()), ratios
