"""``ftlight predict``: top-k class predictions for a folder or a list of images, to CSV.

Uses the checkpoint's class names and preprocessing (input size, crop, mean/std). When the
folder is labelled (``root/<class>/...``), its class names are checked against the
checkpoint's, mismatches are reported, and accuracy is printed for the classes that match.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ftlight.data import IMG_EXTENSIONS, ImageFileDataset, scan_class_folder
from ftlight.data.transforms import eval_transform
from ftlight.files import atomic_path
from ftlight.finetuner import FineTuner


@dataclass
class Inputs:
    """Image paths to predict, with folder labels (class name or ``None``) when labelled."""

    paths: list[str]
    labels: list[str | None]
    folder_classes: list[str] = field(default_factory=list)


def collect_inputs(sources: Sequence[str | os.PathLike]) -> Inputs:
    """Folders (labelled ``root/<class>/…`` or flat), image files, or ``.txt`` lists of paths."""
    paths: list[str] = []
    labels: list[str | None] = []
    folder_classes: list[str] = []
    for source in sources:
        src = Path(source)
        if src.is_dir():
            subdirs = [d for d in src.iterdir() if d.is_dir() and not d.name.startswith(".")]
            if subdirs:
                samples, classes, _ = scan_class_folder(src)
                folder_classes += [c for c in classes if c not in folder_classes]
                paths += [p for p, _ in samples]
                labels += [classes[i] for _, i in samples]
            for p in sorted(src.iterdir()):
                if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS:
                    paths.append(str(p))
                    labels.append(None)
        elif src.is_file() and src.suffix.lower() == ".txt":
            for line in src.read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    paths.append(line.strip())
                    labels.append(None)
        elif src.is_file():
            paths.append(str(src))
            labels.append(None)
        else:
            raise FileNotFoundError(f"No such image, folder or file list: {src}")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed image(s) not found, e.g. {missing[:3]}")
    if not paths:
        raise ValueError(
            f"No images found in {list(map(str, sources))} (extensions {IMG_EXTENSIONS})."
        )
    return Inputs(paths, labels, folder_classes)


def class_name_mismatch(model_classes: Sequence[str], folder_classes: Sequence[str]) -> str | None:
    """A message when a labelled folder's classes differ from the checkpoint's, else ``None``."""
    if not folder_classes or list(folder_classes) == list(model_classes):
        return None
    unknown = [c for c in folder_classes if c not in model_classes]
    absent = [c for c in model_classes if c not in folder_classes]
    parts = []
    if unknown:
        parts.append(f"folder classes not known to the checkpoint: {unknown}")
    if absent:
        parts.append(f"checkpoint classes without a folder: {absent}")
    if not parts:
        parts.append("same classes in a different order (labels are matched by name)")
    return "Class names differ between the checkpoint and the labelled folder: " + "; ".join(parts)


@torch.no_grad()
def predict_probabilities(
    model: FineTuner, paths: Sequence[str], *, batch_size: int = 32, num_workers: int = 0
) -> torch.Tensor:
    """Class probabilities ``(N, C)`` for image files, with the checkpoint's preprocessing."""
    model.eval()
    dataset = ImageFileDataset([(p, 0) for p in paths], eval_transform(model.data_config))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    out = []
    device = next(model.parameters()).device
    for images, _ in loader:
        probs = model.probabilities(model(images.to(device)))
        if probs.ndim == 1:  # binary: P(class 1) -> two columns
            probs = torch.stack([1 - probs, probs], dim=1)
        out.append(probs.float().cpu())
    return torch.cat(out)


def write_predictions(
    path: str | os.PathLike,
    paths: Sequence[str],
    probs: torch.Tensor,
    class_names: Sequence[str],
    *,
    top_k: int = 3,
    labels: Sequence[str | None] | None = None,
) -> Path:
    """CSV: ``path, pred_1, prob_1, …, pred_k, prob_k`` (and ``label`` when known)."""
    k = min(top_k, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    has_labels = labels is not None and any(lab is not None for lab in labels)
    header = ["path"]
    for i in range(1, k + 1):
        header += [f"pred_{i}", f"prob_{i}"]
    if has_labels:
        header.append("label")
    out = Path(path)
    with atomic_path(out) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row, p in enumerate(paths):
            line: list[object] = [p]
            for j in range(k):
                line += [class_names[int(indices[row, j])], f"{float(values[row, j]):.6f}"]
            if has_labels:
                line.append(labels[row] or "")
            writer.writerow(line)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``ftlight predict CHECKPOINT INPUT… [--output CSV] [--top_k K]``."""
    parser = argparse.ArgumentParser(prog="ftlight predict", description=__doc__)
    parser.add_argument("checkpoint", help="a .ckpt written by `ftlight fit`")
    parser.add_argument("inputs", nargs="+", help="image folders, image files or .txt lists")
    parser.add_argument("-o", "--output", default="predictions.csv", help="CSV to write")
    parser.add_argument("-k", "--top_k", type=int, default=3, help="classes per image")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument(
        "--strict", action="store_true", help="fail (exit 3) on a class-name mismatch"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)

    model = FineTuner.from_checkpoint(args.checkpoint)
    class_names = list(model.class_names or [])
    inputs = collect_inputs(args.inputs)
    probs = predict_probabilities(
        model, inputs.paths, batch_size=args.batch_size, num_workers=args.num_workers
    )
    if len(class_names) != probs.shape[1]:
        class_names = [str(i) for i in range(probs.shape[1])]
    mismatch = class_name_mismatch(class_names, inputs.folder_classes)
    if mismatch:
        print(f"ftlight predict: WARNING: {mismatch}", file=sys.stderr)
    out = write_predictions(
        args.output, inputs.paths, probs, class_names, top_k=args.top_k, labels=inputs.labels
    )
    print(f"ftlight predict: {len(inputs.paths)} images -> {out}")
    known = [
        (i, lab) for i, lab in enumerate(inputs.labels) if lab is not None and lab in class_names
    ]
    if known:
        top1 = probs.argmax(1)
        correct = sum(class_names[int(top1[i])] == lab for i, lab in known)
        print(
            f"ftlight predict: accuracy on {len(known)} labelled images: {correct / len(known):.4f}"
        )
    return 3 if mismatch and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
