"""The built-in demo: real ImageNet weights, offline, six steps, >= 0.95 held-out accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path) -> None:
    """Runs the demo, or (in CI, ``.ci/run``) checks the run of the README's own demo command
    named by FTLIGHT_DEMO_OUT / FTLIGHT_DEMO_LOG, which exited 0 there."""
    given = os.environ.get("FTLIGHT_DEMO_OUT")
    if given:
        out, stdout = Path(given), Path(os.environ["FTLIGHT_DEMO_LOG"]).read_text()
    else:
        out = tmp_path / "demo"
        result = subprocess.run(
            [sys.executable, "-m", "ftlight.cli", "demo", "--out", str(out), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        stdout = result.stdout
    for step in range(1, 7):
        assert f"[{step}/6]" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["weights"]["source"] == "packaged"
    assert metrics["test_accuracy"] >= 0.95, metrics
    assert metrics["val_accuracy"] >= 0.9
    assert {"feature_cache", "head_phase", "finetune_phase", "total"} <= set(metrics["seconds"])
    assert len(metrics["epochs"]) == 25 + 3
    assert (out / "model.ckpt").stat().st_size > 1_000_000
    for png in ("learning_curves.png", "confusion_matrix.png"):
        with Image.open(out / png) as img:
            img.verify()
    assert "learning_curves.png" in (out / "report.md").read_text()
    # What the README's set-up section says the demo writes is what it writes.
    top = {"data", "logs", "model.ckpt", "metrics.json", "report.md"}
    top |= {"learning_curves.png", "confusion_matrix.png", "mistakes.png"}
    assert {p.name for p in out.iterdir()} == top
    assert {p.name for p in (out / "data").iterdir()} == {
        ".ftlight-demo.json",
        "train",
        "val",
        "test",
    }
    logs = {str(p.relative_to(out / "logs")) for p in (out / "logs").rglob("*") if p.is_file()}
    assert logs == {
        f"{phase}/version_0/{name}"
        for phase in ("head", "finetune")
        for name in ("metrics.csv", "hparams.yaml")
    }
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    said = readme.split("<!-- ci:demo -->", 1)[1].split("Run the tests:", 1)[0]
    for name in [
        *top,
        "train/",
        "val/",
        "test/",
        "logs/head/version_0/",
        "logs/finetune/version_0/",
    ]:
        assert f"`{name}" in said, name


def test_demo_with_a_hub_backbone_fails_with_the_weights_error(tmp_path) -> None:
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftlight.cli",
            "demo",
            "--backbone",
            "resnet50",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )
    assert result.returncode == 1
    assert "Could not get ImageNet weights for 'resnet50'" in result.stderr
    assert "weights=" in result.stderr
