"""Run records and pictures: per-epoch metrics with timings, learning curves, confusion matrix.

``ftlight report RUN_DIR`` redraws the plots and writes ``report.md`` from ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

METRICS_FILE = "metrics.json"


class MetricsHistory(L.Callback):
    """Record every epoch's logged metrics and wall time (train epoch incl. validation)."""

    def __init__(self, phase: str = "fit") -> None:
        self.phase = phase
        self.epochs: list[dict[str, Any]] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning 2 validates inside the training epoch: val_* are fresh here too.
        self._record(trainer)

    def _record(self, trainer: L.Trainer) -> None:
        row: dict[str, Any] = {"phase": self.phase, "epoch": trainer.current_epoch}
        for key, value in trainer.callback_metrics.items():
            if key.endswith("_step"):
                continue
            try:
                row[key.removesuffix("_epoch")] = float(value)
            except (TypeError, ValueError):
                continue
        row["seconds"] = round(time.perf_counter() - self._start, 3)
        self.epochs.append(row)


def plot_learning_curves(epochs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss and accuracy per epoch (train and validation), phases told apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(1, len(epochs) + 1)
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            key = f"{split}_{metric}"
            ys = [e.get(key, np.nan) for e in epochs]
            if not np.all(np.isnan(ys)):
                ax.plot(x, ys, style, label=key)
        phases = [e.get("phase", "") for e in epochs]
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                ax.axvline(i + 0.5, color="grey", linestyle="--", linewidth=1)
                ax.text(i + 0.6, ax.get_ylim()[1], phases[i], va="top", fontsize=8)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title("accuracy" if metric == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion_matrix(
    matrix: Any, class_names: Sequence[str], path: str | Path, title: str = "confusion matrix"
) -> Path:
    """Counts per (true, predicted) class, annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix)
    n = len(cm)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * n, 0.8 + 0.5 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45 if n > 6 else 0)
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                int(cm[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if cm[i, j] > peak / 2 else "black",
            )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(run_dir: str | Path) -> Path:
    """Plots and ``report.md`` for a run directory holding ``metrics.json``."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"No {METRICS_FILE} in {run_dir}. Expected a directory written by `ftlight demo` or "
            "`ftlight fit`."
        )
    metrics = json.loads(metrics_path.read_text())
    lines = [f"# ftlight run: {run_dir.name}", ""]
    summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    for key, value in summary.items():
        lines.append(
            f"- **{key}**: {value:.4f}" if isinstance(value, float) else f"- **{key}**: {value}"
        )
    if metrics.get("epochs"):
        plot_learning_curves(metrics["epochs"], run_dir / "learning_curves.png")
        lines += ["", "## Learning curves", "", "![learning curves](learning_curves.png)"]
    if metrics.get("confusion_matrix") is not None:
        names = metrics.get("class_names") or [
            str(i) for i in range(len(metrics["confusion_matrix"]))
        ]
        plot_confusion_matrix(
            metrics["confusion_matrix"],
            names,
            run_dir / "confusion_matrix.png",
            title="confusion matrix (test)",
        )
        lines += ["", "## Confusion matrix", "", "![confusion matrix](confusion_matrix.png)"]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ftlight report", description=__doc__)
    parser.add_argument("run_dir", help="directory with metrics.json (from demo or fit)")
    args = parser.parse_args(argv)
    report = write_report(args.run_dir)
    print(f"Report: {report}")
    return 0
