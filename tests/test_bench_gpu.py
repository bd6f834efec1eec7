"""benchmarks/bench_gpu.py runs anywhere in its tiny version and prints its one table."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.mark.tf
def test_tiny_gpu_benchmark_prints_inference_and_training_rows(capsys):
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--tiny", "--ks", "1", "2", "--widths", "1", "--train-batches", "4"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("devices: ")
    rows = [line.split() for line in out.splitlines() if line.startswith(("model call", "inference", "training"))]
    inference = [r for r in rows if r[0] == "inference"]
    assert [r[2] for r in inference] == ["K=1", "K=2"]
    # two tiles side by side: about two FOVs per model call
    per_call = [float(re.search(r"([0-9.]+)/call", " ".join(r))[1]) for r in inference]
    assert per_call[0] == 1.0 and per_call[1] > 1.5, inference
    assert any(r[0] == "training" for r in rows) and sum(r[0] == "model" for r in rows) == 2
