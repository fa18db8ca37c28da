"""``ftlight report RUN_DIR``: learning curves, confusion matrix, most confident mistakes,
and a Markdown summary linking them. (Written by real runs too: test_demo.py, test_faults.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftlight.cli.report import worst_mistakes, write_report


def test_worst_mistakes_are_the_most_confident_wrong_predictions() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.05, 0.95], [0.7, 0.3]])
    truth = [0, 0, 0, 1, 1]  # wrong: rows 1 (P=0.8), 2 (P=0.6), 4 (P=0.7)
    paths = [f"img{i}.png" for i in range(5)]
    got = worst_mistakes(paths, truth, probs, ["cat", "dog"], k=2)
    assert [m["path"] for m in got] == ["img1.png", "img4.png"]
    assert got[0] == {
        "path": "img1.png",
        "true": "cat",
        "pred": "dog",
        "prob": 0.8,
        "prob_true": 0.2,
    }
    assert worst_mistakes(paths, [0, 1, 1, 1, 0], probs, ["cat", "dog"]) == []


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "imgs").mkdir(parents=True)
    mistakes = []
    for i, (true, pred) in enumerate((("3", "8"), ("5", "9"), ("7", "1"))):
        path = run / "imgs" / f"{i}.png"
        Image.fromarray(np.full((16, 16), 40 * i, dtype=np.uint8), mode="L").save(path)
        mistakes.append({"path": str(path), "true": true, "pred": pred, "prob": 0.9 - i / 10})
    mistakes.append({"path": str(run / "missing.png"), "true": "0", "pred": "6", "prob": 0.5})
    epochs = [
        {
            "phase": "head" if e < 3 else "fine-tune",
            "epoch": e,
            "train_loss": 1 / (e + 1),
            "val_loss": 1.2 / (e + 1),
            "train_acc": 0.5 + e / 10,
            "val_acc": 0.45 + e / 10,
        }
        for e in range(5)
    ]
    names = [str(d) for d in range(10)]
    metrics = {
        "backbone": "efficientnet_lite0",
        "test_accuracy": 0.9612,
        "epochs": epochs,
        "class_names": names,
        "confusion_matrix": (np.eye(10, dtype=int) * 30 + 1).tolist(),
        "confusion_split": "test",
        "mistakes": mistakes,
        "mistakes_split": "validation",
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_report_writes_valid_pngs_and_a_summary_linking_them(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "ftlight.cli", "report", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "report.md" in proc.stdout
    sizes = {}
    for name in ("learning_curves.png", "confusion_matrix.png", "mistakes.png"):
        with Image.open(run / name) as img:
            img.verify()
        with Image.open(run / name) as img:
            sizes[name] = img.size
            assert img.format == "PNG"
            # Not blank: a real plot has many distinct colours.
            assert len(img.convert("RGB").getcolors(1_000_000)) > 50, name
    assert sizes["mistakes.png"][0] >= 600  # 4 tiles wide, legible
    report = (run / "report.md").read_text()
    for link in ("](learning_curves.png)", "](confusion_matrix.png)", "](mistakes.png)"):
        assert link in report
    assert "**test_accuracy**: 0.9612" in report
    assert "Most confident mistakes (validation)" in report
    assert f"| 1 | `{run / 'imgs' / '0.png'}` | 3 | 8 | 0.900 |" in report
    assert not list(run.glob(".*.tmp-*"))  # atomic writes leave no temporary files


def test_report_on_a_directory_without_metrics_explains(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"No metrics\.json in .*ftlight demo"):
        write_report(tmp_path)
