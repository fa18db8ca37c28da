"""Logged metrics equal the same metrics computed independently (scikit-learn, numpy)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch.utils.data import DataLoader, TensorDataset

import ftlight
from ftlight.callbacks.feature_cache import FeatureBatch

CLASSES, PER_CLASS = 8, 8


def _logits_with_ranks(labels: np.ndarray, ranks: np.ndarray, seed: int = 0) -> np.ndarray:
    """Logits in which each sample's true class sits at the given rank (0 = top-1)."""
    rng = np.random.default_rng(seed)
    logits = np.zeros((len(labels), CLASSES), dtype=np.float32)
    for i, (label, rank) in enumerate(zip(labels, ranks, strict=True)):
        others = rng.permutation([c for c in range(CLASSES) if c != label])
        order = np.insert(others, rank, label)
        logits[i, order] = np.arange(CLASSES, 0, -1, dtype=np.float32)
    return logits


def _as_feature_batch(rows: list) -> tuple[FeatureBatch, torch.Tensor]:
    """Rows of precomputed features: the model runs its head only."""
    features, labels = zip(*rows, strict=True)
    return FeatureBatch(torch.stack(features)), torch.stack(labels)


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_f1_accuracy_and_top5_on_a_class_sorted_loader_match_sklearn(
    tmp_path: Path, stage: str
) -> None:
    """The first batch holds one class, all right at top-1: torchmetrics' compute groups then
    merged macro F1 with top-5 accuracy (issue 9: F1 1.0000001 at 0.97 accuracy)."""
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)  # sorted by class, never shuffled
    rng = np.random.default_rng(1)
    ranks = np.where(labels == 0, 0, rng.choice([0, 0, 0, 1, 2, 4, 5, 7], size=len(labels)))
    logits = _logits_with_ranks(labels, ranks)

    model = ftlight.FineTuner("resnet18", num_classes=CLASSES, image_size=32)
    head = model.head[-1]
    features = np.zeros((len(labels), head.in_features), dtype=np.float32)
    features[:, :CLASSES] = logits  # the head passes the first CLASSES features through
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:, :CLASSES] = torch.eye(CLASSES)
        head.bias.zero_()
    loader = DataLoader(
        TensorDataset(torch.from_numpy(features), torch.from_numpy(labels)),
        batch_size=PER_CLASS,
        shuffle=False,
        collate_fn=_as_feature_batch,
    )
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    got = getattr(trainer, stage)(model, dataloaders=loader, verbose=False)[0]

    predicted = logits.argmax(1)
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    expected = {
        "acc": accuracy_score(labels, predicted),
        "f1": f1_score(labels, predicted, average="macro", zero_division=0),
        "acc_top5": float(np.mean(np.any(top5 == labels[:, None], axis=1))),
    }
    # The three differ, so that a metric computed from another's statistics would show.
    assert len({round(v, 6) for v in expected.values()}) == 3, expected
    prefix = "val_" if stage == "validate" else "test_"
    for name, value in expected.items():
        assert got[prefix + name] == pytest.approx(value, abs=1e-6), (name, got, expected)
