"""Run records and pictures: per-epoch metrics with timings, learning curves, confusion matrix
and the most confident mistakes.

``ftlight report RUN_DIR`` redraws the plots and writes ``report.md`` from ``metrics.json``
(written by ``ftlight demo`` and at the end of ``ftlight fit``). All files are written
atomically (a kill never leaves half a file).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from ftlight.cli.errors import debug_enabled, print_error
from ftlight.files import atomic_path, atomic_write

METRICS_FILE = "metrics.json"
# Logged values that are a state, not a metric.
NOT_METRICS = frozenset({"staged_phase"})


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


def summary_metrics(values: dict[str, Any]) -> dict[str, Any]:
    """Final metrics without Lightning's repeated series: ``x_step`` (one batch) is dropped,
    ``x_epoch`` is ``x`` (kept under that name only when ``x`` is missing), and
    ``staged_phase`` (the :class:`~ftlight.callbacks.StagedUnfreeze` phase, drawn on the
    learning curves) is not a metric."""
    out = {}
    for key, value in values.items():
        if key.endswith("_step") or key in NOT_METRICS:
            continue
        if key.endswith("_epoch") and key.removesuffix("_epoch") in values:
            continue
        out[key.removesuffix("_epoch")] = value
    return out


def epoch_numbers(epochs: Sequence[dict[str, Any]]) -> list[int]:
    """The epoch number of each row, counted from 0 as Lightning does (its progress bar's
    ``Epoch 0``, checkpoint names ``epoch=0``, ``StagedUnfreeze`` milestones).

    A single run's rows carry Lightning's own ``epoch`` (also after a resume); rows of several
    trainers (the demo's head and fine-tune phases) are numbered on, from 0, in order.
    """
    own = [row.get("epoch") for row in epochs]
    if all(isinstance(e, int) for e in own) and all(a < b for a, b in itertools.pairwise(own)):
        return [int(e) for e in own]  # type: ignore[arg-type]
    return list(range(len(epochs)))


def _milestones(epochs: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
    """``(i, label)``: epoch row ``i`` starts a new phase or staged-unfreezing milestone."""
    marks = []
    for i in range(1, len(epochs)):
        before, now = epochs[i - 1], epochs[i]
        labels = []
        if now.get("phase", "") != before.get("phase", ""):
            labels.append(str(now.get("phase", "")))
        staged, previous = now.get("staged_phase"), before.get("staged_phase")
        if staged is not None and previous is not None and staged != previous:
            labels.append(f"unfreeze: phase {int(staged)}")
        if labels:
            marks.append((i, ", ".join(labels)))
    return marks


def plot_learning_curves(epochs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss and accuracy per epoch (train and validation), phases and milestones marked."""
    return _save(learning_curves_figure(epochs), path)


def learning_curves_figure(epochs: Sequence[dict[str, Any]]) -> Any:
    """The learning curves as a matplotlib figure: integer epoch ticks (also for one epoch),
    a dashed line where a phase or a staged-unfreezing milestone starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = np.array(epoch_numbers(epochs))
    marks = [(int(x[i]), label) for i, label in _milestones(epochs)]
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            key = f"{split}_{metric}"
            ys = np.array([e.get(key, np.nan) for e in epochs], dtype=float)
            if not np.all(np.isnan(ys)):
                ax.plot(x, ys, style, label=key, markersize=4 if len(x) > 30 else 6)
        for first, label in marks:  # between the last epoch before and the first one after
            ax.axvline(first - 0.5, color="grey", linestyle="--", linewidth=1)
            ax.annotate(
                label,
                (first - 0.5, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -3),
                textcoords="offset points",
                va="top",
                rotation=90,
                fontsize=8,
                color="dimgrey",
            )
        ax.set_xlim(x[0] - 0.5, x[-1] + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("epoch (from 0)")
        ax.set_title("accuracy" if metric == "acc" else "loss")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def _short(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def plot_confusion_matrix(
    matrix: Any, class_names: Sequence[str], path: str | Path, title: str = "confusion matrix"
) -> Path:
    """Draw :func:`confusion_matrix_figure` to a PNG file."""
    return _save(confusion_matrix_figure(matrix, class_names, title), path)


def confusion_matrix_figure(
    matrix: Any, class_names: Sequence[str], title: str = "confusion matrix"
) -> Any:
    """Counts per (true, predicted) class: annotated up to 30 classes, a colour bar beyond.

    The figure grows with the class count between a floor (so that the title and labels of a
    2-class matrix fit) and a ceiling (100 classes stay one readable page).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix)
    n = len(cm)
    names = [_short(str(c)) for c in class_names]
    longest = max((len(c) for c in names), default=1)
    cell = 0.5 if n <= 30 else max(0.2, 16.0 / n)
    label_space = min(2.5, 0.4 + 0.07 * longest)  # inches for the y labels
    side = max(3.0, cell * n)
    fig, ax = plt.subplots(figsize=(side + label_space + 1.2, side + label_space + 0.8))
    image = ax.imshow(cm, cmap="Blues")
    fontsize = 10 if n <= 10 else 8 if n <= 30 else max(5, min(7, int(600 / n)))
    rotate = longest * n > 40  # the labels would not fit side by side
    ax.set_xticks(
        range(n),
        names,
        rotation=90 if n > 30 else 45 if rotate else 0,
        ha="right" if rotate and n <= 30 else "center",
        rotation_mode="anchor" if rotate and n <= 30 else "default",
        fontsize=fontsize,
    )
    ax.set_yticks(range(n), names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=11, wrap=True)
    if n <= 30:
        peak = cm.max() if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8 if n <= 15 else 6,
                    color="white" if cm[i, j] > peak / 2 else "black",
                )
    else:
        fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label="images")
    fig.tight_layout()
    return fig


def most_confused(
    matrix: Any, class_names: Sequence[str], k: int = 10
) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal cells: ``(true, predicted, count)``, largest first."""
    cm = np.array(matrix, dtype=np.int64)
    np.fill_diagonal(cm, 0)
    order = np.argsort(-cm, axis=None, kind="stable")[:k]
    return [
        (str(class_names[i]), str(class_names[j]), int(cm[i, j]))
        for i, j in zip(*np.unravel_index(order, cm.shape), strict=True)
        if cm[i, j] > 0
    ]


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
    """Draw :func:`mistakes_figure` to a PNG file."""
    return _save(mistakes_figure(mistakes, title), path)


def mistakes_figure(
    mistakes: Sequence[dict[str, Any]], title: str = "most confident mistakes"
) -> Any:
    """A grid of misclassified images, each titled with its true and predicted class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    n = max(1, len(mistakes))
    cols = min(4, n)
    rows = -(-n // cols)
    # At least ~6 inches wide so that the title fits; an empty grid is one short row.
    width = max(6.0, 2.6 * cols)
    height = 2.9 * rows + 0.4 if mistakes else 2.0
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
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
            f"#{number}  true: {_short(m['true'], 18)}\npred: {_short(m['pred'], 18)} "
            f"({m['prob']:.2f})",
            fontsize=11,
            color="#b00020",
        )

    if not mistakes:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return fig


def report_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """The report's confusion matrices and mistake grids as figures, by TensorBoard tag
    (``val/confusion_matrix``, ``val/mistakes``, and ``..._best`` for the best checkpoint)."""
    names = metrics.get("class_names") or [
        str(i) for i in range(len(metrics.get("confusion_matrix") or []))
    ]
    figures = {}
    for record, suffix, tag in (
        (metrics, "", "final epoch"),
        (metrics.get("best"), "_best", "best"),
    ):
        if not record:
            continue
        if record.get("confusion_matrix") is not None:
            figures[f"val/confusion_matrix{suffix}"] = confusion_matrix_figure(
                record["confusion_matrix"], names, f"confusion matrix (validation, {tag})"
            )
        if record.get("mistakes") is not None:
            figures[f"val/mistakes{suffix}"] = mistakes_figure(
                record["mistakes"], f"most confident mistakes (validation, {tag})"
            )
    return figures


def _state(record: dict[str, Any]) -> str:
    """``epoch=E, step=S`` as in Lightning's checkpoint names (epochs count from 0)."""
    return f"epoch={record.get('epoch', '?')}, step={record.get('global_step', '?')}"


def _evaluated(metrics: dict[str, Any]) -> tuple[str, list[str]]:
    """A short tag for plot titles and the sentences saying which weights were evaluated and
    where the best checkpoint is (``metrics["evaluation"]`` and ``metrics["best"]``)."""
    evaluation, best = metrics.get("evaluation"), metrics.get("best")
    if not evaluation:
        return "", []
    where = f", `{evaluation['checkpoint']}`" if evaluation.get("checkpoint") else ""
    lines = [
        f"Evaluated on the {evaluation.get('split', 'validation')} split with the weights of the "
        f"**final epoch** ({_state(evaluation)}{where})."
    ]
    if best:
        by = f" by {best['monitor']}" if best.get("monitor") else ""
        score = f" = {best['score']:.4f}" if isinstance(best.get("score"), float) else ""
        if best.get("same_as_final"):
            lines.append(f"This is also the best checkpoint{by}{score}: `{best['checkpoint']}`.")
        else:
            drawn = (
                " Its confusion matrix and mistakes are drawn below, after the final epoch's."
                if best.get("confusion_matrix") is not None
                else ""
            )
            lines.append(
                f"The **best checkpoint**{by}{score} is another state ({_state(best)}): "
                f"`{best['checkpoint']}`.{drawn} Use it with `ftlight predict "
                f"{best['checkpoint']} IMAGES` or `ftlight export {best['checkpoint']}`."
            )
    return "final epoch", lines


def _evaluation_sections(
    run_dir: Path,
    record: dict[str, Any],
    names: Sequence[str],
    tag: str,
    suffix: str,
    defaults: tuple[str, str],
) -> list[str]:
    """Confusion matrix and mistakes of one set of weights: plots and Markdown."""
    lines: list[str] = []
    if record.get("confusion_matrix") is not None:
        split = record.get("confusion_split", defaults[0])
        label = ", ".join(x for x in (split, tag) if x)
        image = f"confusion_matrix{suffix}.png"
        plot_confusion_matrix(
            record["confusion_matrix"], names, run_dir / image, title=f"confusion matrix ({label})"
        )
        lines += ["", f"## Confusion matrix ({label})", "", f"![confusion matrix]({image})"]
        pairs = most_confused(record["confusion_matrix"], names)
        if len(names) > 10 and pairs:  # too many classes to read every cell of the picture
            lines += ["", "Most frequent confusions (true → predicted: images):", ""]
            lines += [f"- {true} → {pred}: {count}" for true, pred, count in pairs]
    mistakes = record.get("mistakes")
    if mistakes is not None:
        split = record.get("mistakes_split", defaults[1])
        label = ", ".join(x for x in (split, tag) if x)
        image = f"mistakes{suffix}.png"
        plot_mistakes(mistakes, run_dir / image, title=f"most confident mistakes ({label})")
        lines += [
            "",
            f"## Most confident mistakes ({label})",
            "",
            f"![most confident mistakes]({image})",
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
    return lines


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
    summary = summary_metrics(
        {
            k: v
            for k, v in metrics.items()
            if isinstance(v, (int, float, str)) and not k.endswith("_split")
        }
    )
    for key, value in summary.items():
        lines.append(
            f"- **{key}**: {value:.4f}" if isinstance(value, float) else f"- **{key}**: {value}"
        )
    epochs = metrics.get("epochs")
    if epochs:
        plot_learning_curves(epochs, run_dir / "learning_curves.png")
        lines += ["", "## Learning curves", "", "![learning curves](learning_curves.png)"]
        marks = _milestones(epochs)
        if marks:
            numbers = epoch_numbers(epochs)
            lines += ["", "Epochs count from 0, as in Lightning's progress bar and checkpoints."]
            for i, label in marks:
                own = epochs[i].get("epoch")
                phase_epoch = (
                    f" ({epochs[i].get('phase')} epoch {own})"
                    if own is not None and own != numbers[i]
                    else ""
                )
                lines.append(f"- from epoch {numbers[i]}{phase_epoch} (dashed line): {label}")
    tag, evaluated = _evaluated(metrics)
    if evaluated:
        lines += ["", "## Which weights", "", *evaluated]
    matrix = metrics.get("confusion_matrix")
    names = metrics.get("class_names") or [str(i) for i in range(len(matrix or []))]
    lines += _evaluation_sections(run_dir, metrics, names, tag, "", ("test", "validation"))
    best = metrics.get("best") or {}
    if best.get("confusion_matrix") is not None or best.get("mistakes") is not None:
        split = metrics.get("evaluation", {}).get("split", "validation")
        best = {"confusion_split": split, "mistakes_split": split, **best}
        lines += _evaluation_sections(run_dir, best, names, "best", "_best", (split, split))
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
    try:
        report = write_report(find_run(args.run_dir))
    except (OSError, ValueError) as err:  # one line (FTLIGHT_DEBUG=1: traceback)
        if debug_enabled():
            raise
        return print_error(err)
    print(f"Report: {report}")
    return 0


def find_run(given: str | os.PathLike) -> Path:
    """The run folder for ``ftlight report RUN_DIR``: ``RUN_DIR`` itself when it holds
    ``metrics.json``, else its newest ``logs/version_N`` that does."""
    run_dir = Path(given)
    if run_dir.is_file():
        raise NotADirectoryError(
            f"RUN_DIR {os.fspath(given)} is a file; `ftlight report` reads a run folder (with "
            f"metrics.json, or a fit's default_root_dir). Try: ftlight report {run_dir.parent}"
        )
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"RUN_DIR {os.fspath(given)}: no such folder (resolved to {run_dir.absolute()}). "
            "Expected a folder written by `ftlight demo` or a fit's --trainer.default_root_dir."
        )
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
    return run_dir
