"""``ftlight predict``: top-k class predictions for a folder or a list of images, to CSV.

Uses the checkpoint's class names and preprocessing (input size, crop, mean/std). When the
folder is labelled (``root/<class>/...``), its class names are checked against the
checkpoint's, mismatches are reported, and accuracy is printed for the classes that match.
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch
from torch.utils.data import DataLoader, Dataset

from ftlight.cli.errors import EXIT_CLASS_MISMATCH, debug_enabled, print_error, summary
from ftlight.data import IMG_EXTENSIONS, CorruptImageError, load_rgb, scan_class_folder
from ftlight.data.config import DataConfig
from ftlight.data.transforms import eval_transform
from ftlight.files import atomic_path
from ftlight.finetuner import FineTuner
from ftlight.tta import TTA_MODES, resolve_tta, tta_probabilities


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
            raise FileNotFoundError(
                f"input {os.fspath(source)}: no such image, folder or file list (resolved to "
                f"{src.absolute()})."
            )
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


class _PredictImages(Dataset):
    """Images with the checkpoint's eval transform; unreadable ones, when skipped, as flags."""

    def __init__(self, paths: Sequence[str], config: DataConfig, skip_corrupt: bool) -> None:
        self.paths, self.transform = list(paths), eval_transform(config)
        self.shape, self.skip_corrupt = tuple(config.input_size), skip_corrupt

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool]:
        try:
            return self.transform(load_rgb(self.paths[index])), True
        except CorruptImageError:
            if not self.skip_corrupt:
                raise
            return torch.zeros(self.shape), False


@torch.no_grad()
def predict_probabilities(
    model: FineTuner,
    paths: Sequence[str],
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    skipped: list[str] | None = None,
    tta: str | None = None,
) -> torch.Tensor:
    """Class probabilities ``(N, C)`` for image files, with the checkpoint's preprocessing.

    An unreadable image raises :class:`CorruptImageError`, unless a ``skipped`` list is given:
    then its path is appended there and it has no row in the result. ``tta``: test-time
    augmentation (``"flip"``, ``"crops"``, ``"flip+crops"``; ``"none"``: off; ``None``: the
    model's ``tta`` setting), the views' probabilities averaged (:mod:`ftlight.tta`).
    """
    mode = resolve_tta(model.hparams.get("tta") if tta is None else tta)
    model.eval()
    dataset = _PredictImages(paths, model.data_config, skip_corrupt=skipped is not None)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    out, flags = [], []
    device = next(model.parameters()).device
    for images, readable in loader:
        images = images.to(device)
        if mode is None:
            probs = model.probabilities(model(images))
        else:
            probs = tta_probabilities(model, images, mode)
        if probs.ndim == 1:  # binary: P(class 1) -> two columns
            probs = torch.stack([1 - probs, probs], dim=1)
        out.append(probs.float().cpu()[readable])
        flags += readable.tolist()
    if skipped is not None:
        skipped += [p for p, ok in zip(paths, flags, strict=True) if not ok]
    return torch.cat(out)


CSV_HEADER_START = "path,pred_1,prob_1"


def check_output(path: str) -> str | None:
    """Refuse to overwrite anything but a previous predictions CSV; a warning if it replaces one.

    Raises :class:`FileExistsError` for another file (a checkpoint given as ``-o``, say).
    """
    out = Path(path)
    if path == "-" or not out.exists():
        return None
    if out.is_dir():
        raise FileExistsError(f"-o {path} is a folder; expected a CSV file name (or - for stdout).")
    with out.open("rb") as fh:
        head = fh.read(len(CSV_HEADER_START))
    if head != CSV_HEADER_START.encode():
        raise FileExistsError(
            f"Refusing to overwrite {path}: it is not a predictions CSV written by ftlight predict "
            f"(it starts with {head[:12]!r}). Choose another -o file, or - for standard output."
        )
    return f"replacing the previous predictions in {path}"


def write_predictions(
    path: str | os.PathLike,
    paths: Sequence[str],
    probs: torch.Tensor,
    class_names: Sequence[str],
    *,
    top_k: int = 3,
    labels: Sequence[str | None] | None = None,
) -> Path | None:
    """CSV: ``path, pred_1, prob_1, …, pred_k, prob_k`` (and ``label`` when known).

    Written atomically (a failure keeps the previous file); ``path="-"``: standard output
    (returns ``None``).
    """
    if str(path) == "-":
        _write_rows(sys.stdout, paths, probs, class_names, top_k, labels)
        return None
    out = Path(path)
    with atomic_path(out) as tmp, tmp.open("w", newline="") as f:
        _write_rows(f, paths, probs, class_names, top_k, labels)
    return out


def _write_rows(
    f: TextIO,
    paths: Sequence[str],
    probs: torch.Tensor,
    class_names: Sequence[str],
    top_k: int,
    labels: Sequence[str | None] | None,
) -> None:
    k = min(top_k, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    has_labels = labels is not None and any(lab is not None for lab in labels)
    header = ["path"]
    for i in range(1, k + 1):
        header += [f"pred_{i}", f"prob_{i}"]
    if has_labels:
        header.append("label")
    writer = csv.writer(f)
    writer.writerow(header)
    for row, p in enumerate(paths):
        line: list[object] = [p]
        for j in range(k):
            line += [class_names[int(indices[row, j])], f"{float(values[row, j]):.6f}"]
        if has_labels:
            line.append(labels[row] or "")
        writer.writerow(line)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (received {value})")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``ftlight predict CHECKPOINT INPUT… [--output CSV] [--top_k K]``."""
    parser = argparse.ArgumentParser(prog="ftlight predict", description=__doc__)
    parser.add_argument("checkpoint", help="a .ckpt written by `ftlight fit`")
    parser.add_argument("inputs", nargs="+", help="image folders, image files or .txt lists")
    parser.add_argument(
        "-o",
        "--output",
        default="predictions.csv",
        help="CSV to write (- for standard output); an existing file is replaced only if it "
        "is a previous predictions CSV",
    )
    parser.add_argument("-k", "--top_k", type=_positive, default=3, help="classes per image")
    parser.add_argument("--batch_size", type=_positive, default=32)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 3, nothing written) when a labelled folder's classes differ from "
        "the checkpoint's",
    )
    parser.add_argument(
        "--skip-corrupt", action="store_true", help="skip unreadable images (listed on stderr)"
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="unpickle a checkpoint holding Python objects besides tensors (trusted files only)",
    )
    parser.add_argument(
        "--tta",
        choices=("none", *TTA_MODES),
        default=None,
        help="test-time augmentation: average the probabilities of the image and its mirror "
        "(flip), of it and four corner crops (crops), or of all ten (flip+crops); default: the "
        "checkpoint's --model.tta (usually none)",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return _predict(args)
    except BrokenPipeError:  # -o - piped into `head`: stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (OSError, ValueError) as err:  # known errors: one line (FTLIGHT_DEBUG=1: traceback)
        if debug_enabled():
            raise
        hint = " (--skip-corrupt skips unreadable images)"
        return print_error(f"{summary(err)}{hint if isinstance(err, CorruptImageError) else ''}")


def _predict(args: argparse.Namespace) -> int:
    # With -o -, standard output holds the CSV alone: messages go to standard error.
    say = functools.partial(print, file=sys.stderr if args.output == "-" else sys.stdout)
    replacing = check_output(args.output)
    inputs = collect_inputs(args.inputs)
    model = FineTuner.from_checkpoint(args.checkpoint, trust_pickle=args.trust_pickle)
    class_names = list(model.class_names or [])
    n_outputs = 2 if model.hparams.task == "binary" else model.num_outputs
    if len(class_names) != n_outputs:
        class_names = [str(i) for i in range(n_outputs)]
    mismatch = class_name_mismatch(class_names, inputs.folder_classes)
    if mismatch and args.strict:
        return print_error(f"{mismatch}. Nothing written (--strict).", EXIT_CLASS_MISMATCH)
    if mismatch:
        print(f"ftlight predict: WARNING: {mismatch}", file=sys.stderr)
    skipped: list[str] | None = [] if args.skip_corrupt else None
    probs = predict_probabilities(
        model,
        inputs.paths,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        skipped=skipped,
        tta=args.tta,
    )
    paths, labels = inputs.paths, inputs.labels
    if skipped:
        gone = set(skipped)
        kept = [i for i, p in enumerate(paths) if p not in gone]
        paths, labels = [paths[i] for i in kept], [labels[i] for i in kept]
        print(
            f"ftlight predict: WARNING: skipped {len(skipped)} unreadable image(s): {skipped[:5]}",
            file=sys.stderr,
        )
    if replacing:
        print(f"ftlight predict: WARNING: {replacing}", file=sys.stderr)
    out = write_predictions(args.output, paths, probs, class_names, top_k=args.top_k, labels=labels)
    say(f"ftlight predict: {len(paths)} images -> {out or 'standard output'}")
    known = [(i, lab) for i, lab in enumerate(labels) if lab is not None and lab in class_names]
    if known:
        top1 = probs.argmax(1)
        correct = sum(class_names[int(top1[i])] == lab for i, lab in known)
        say(
            f"ftlight predict: accuracy on {len(known)} labelled images: {correct / len(known):.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
