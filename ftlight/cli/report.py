"""Run records and pictures: per-epoch metrics with timings, learning curves, confusion matrix
and the most confident mistakes.

``ftlight report RUN_DIR`` redraws the plots and writes ``report.md`` from ``metrics.json``
(written by ``ftlight demo`` and at the end of ``ftlight fit``). All files are written
atomically (a kill never leaves half a file).
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

from ftlight.files import atomic_path, atomic_write

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
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
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
    return _save(fig, path)


def worst_mistakes(
    paths: Sequence[str],
    truth: Sequence[int],
    probs: Any,
    class_names: Sequence[str],
    k: int = 16,
) -> list[dict[str, Any]]:
    """The ``k`` most confident misclassifications: path, true and predicted class, P(pred)."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(truth)
    pred = p.argmax(1)
    wrong = np.flatnonzero(pred != t)
    order = wrong[np.argsort(-p[wrong, pred[wrong]], kind="stable")][:k]
    return [
        {
            "path": str(paths[i]),
            "true": str(class_names[int(t[i])]),
            "pred": str(class_names[int(pred[i])]),
            "prob": round(float(p[i, pred[i]]), 4),
            "prob_true": round(float(p[i, t[i]]), 4),
        }
        for i in order
    ]


def plot_mistakes(
    mistakes: Sequence[dict[str, Any]], path: str | Path, title: str = "most confident mistakes"
) -> Path:
    """A grid of misclassified images, each titled with its true and predicted class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    n = max(1, len(mistakes))
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for number, (ax, m) in enumerate(zip(axes.flat, mistakes, strict=False), start=1):
        try:
            with Image.open(m["path"]) as img:
                image = np.asarray(img.convert("RGB"))
            small = max(image.shape[:2]) < 128
            ax.imshow(image, interpolation="nearest" if small else "antialiased")
        except OSError:
            ax.text(0.5, 0.5, "image not found", ha="center", va="center", fontsize=9)
        ax.set_title(
            f"#{number}  true: {m['true']}\npred: {m['pred']} ({m['prob']:.2f})",
            fontsize=11,
            color="#b00020",
        )

    if not mistakes:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return _save(fig, path)


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
    summary = {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float, str)) and not k.endswith("_split")
    }
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
        split = metrics.get("confusion_split", "test")
        plot_confusion_matrix(
            metrics["confusion_matrix"],
            names,
            run_dir / "confusion_matrix.png",
            title=f"confusion matrix ({split})",
        )
        lines += ["", "## Confusion matrix", "", "![confusion matrix](confusion_matrix.png)"]
    mistakes = metrics.get("mistakes")
    if mistakes is not None:
        split = metrics.get("mistakes_split", "validation")
        plot_mistakes(
            mistakes, run_dir / "mistakes.png", title=f"most confident mistakes ({split})"
        )
        lines += [
            "",
            f"## Most confident mistakes ({split})",
            "",
            "![most confident mistakes](mistakes.png)",
            "",
            "| # | image | true | predicted | P(predicted) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {i} | `{m['path']}` | {m['true']} | {m['pred']} | {m['prob']:.3f} |"
            for i, m in enumerate(mistakes, start=1)
        ]
        if not mistakes:
            lines.append("| | (none) | | | |")
    report = run_dir / "report.md"
    atomic_write(report, "\n".join(lines) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ftlight report", description=__doc__)
    parser.add_argument(
        "run_dir",
        help="directory with metrics.json (from demo or fit), or a fit's default_root_dir "
        "(its newest logs/version_N)",
    )
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        # A fit's default_root_dir: its runs are logs/version_N; take the newest with metrics.
        found = {
            p.parent.name.removeprefix("version_"): p.parent
            for p in run_dir.glob(f"logs/version_*/{METRICS_FILE}")
        }
        runs = [found[n] for n in sorted((n for n in found if n.isdigit()), key=int)]
        if runs:
            if len(runs) > 1:
                print(f"{len(runs)} runs in {run_dir / 'logs'}: {', '.join(p.name for p in runs)}")
            run_dir = runs[-1]
    report = write_report(run_dir)
    print(f"Report: {report}")
    return 0
