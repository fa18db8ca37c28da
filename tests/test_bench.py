"""The benchmark scripts: the GPU suite refuses clearly without a GPU; shared helpers work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).parents[1] / "benchmarks"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_gpu_suite_exits_with_a_clear_message_without_a_gpu() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_gpu.py")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "needs a CUDA GPU and none is available" in proc.stderr


def test_results_record_machine_load_and_versions(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import _common

    start = _common.machine()
    path = _common.write("x", {"ratio": 2.0}, start, str(tmp_path / "x.json"))
    record = json.loads(path.read_text())
    assert record["ratio"] == 2.0
    assert len(record["machine"]["load_average"]) == 3
    assert len(record["machine"]["load_average_end"]) == 3
    assert record["machine"]["cpu_count"] >= 1
    assert record["versions"]["torch"] == torch.__version__


def test_inference_bench_measures_every_contender(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH.parent))
    from benchmarks.bench_inference_cpu import bench_model

    out = bench_model("resnet18", 32, 2, rounds=1)
    assert out["batchnorms_folded"] == 20  # every BatchNorm of resnet18 follows a convolution
    assert set(out["speedup_vs_plain"]) == {
        "infer_channels_last",
        "infer_channels_last_folded",
        "train_channels_last",
    }
    assert all(v > 0 for v in out["ms_per_image"].values())
