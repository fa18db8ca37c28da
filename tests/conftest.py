"""Shared fixtures: small real image folders and arrays made in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

if TYPE_CHECKING:
    from ftlight import ImageDataModule


def pytest_configure(config: pytest.Config) -> None:
    """At most two torch threads per pytest process: two for a lone run, one per worker when
    pytest-xdist runs two (``addopts``: the CI machine's two cores). Set here, not at import,
    so a subprocess that imports a test module (tests.test_faults' callbacks in ``ftlight
    fit``) keeps torch's default, as the runs it is compared with do."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // workers)))


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
PALETTE = [(220, 40, 40), (40, 40, 220), (40, 220, 40)]  # for other class names, in order


def make_image_folder(
    root: Path,
    *,
    classes: tuple[str, ...] = ("red", "blue"),
    per_class: int = 8,
    size: int = 40,
    splits: tuple[str, ...] = (),
    seed: int = 0,
) -> Path:
    """Noisy solid-colour PNGs, one sub-folder per class (optionally under split folders).

    Colour names get that colour; other names take the palette in order (learnable, tiny).
    """
    rng = np.random.default_rng(seed)
    for split in splits or ("",):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array(COLOURS.get(name, PALETTE[index % len(PALETTE)]), dtype=np.float64)
            for i in range(per_class):
                pixels = base + rng.normal(0, 25, size=(size, size, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def colour_arrays() -> tuple[np.ndarray, np.ndarray]:
    """32 NHWC uint8 images of two colours and their integer labels."""
    rng = np.random.default_rng(0)
    labels = np.arange(32) % 2
    base = np.where(labels[:, None] == 0, [[220, 30, 30]], [[30, 40, 220]]).astype(np.float64)
    images = base[:, None, None, :] + rng.normal(0, 20, size=(32, 32, 32, 3))
    return images.clip(0, 255).astype(np.uint8), labels


def frozen_bn_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of running statistics of every BatchNorm layer."""
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, _BatchNorm) and m.running_mean is not None:
            out[f"{name}.running_mean"] = m.running_mean.clone()
            out[f"{name}.running_var"] = m.running_var.clone()
            out[f"{name}.num_batches_tracked"] = m.num_batches_tracked.clone()
    return out


def quiet_trainer_options(root: Path | str | None = None, **kw: Any) -> dict[str, Any]:
    """Arguments of a Lightning Trainer on the CPU, in ``root``, that writes and prints nothing
    it is not asked for: no logger, checkpoints, progress bar, model summary or sanity
    validation; ``kw`` add to or override them."""
    return {
        "accelerator": "cpu",
        "default_root_dir": root,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **kw,
    }


def quiet_trainer(root: Path | str | None = None, **kw: Any) -> L.Trainer:
    """A Lightning Trainer with :func:`quiet_trainer_options`."""
    return L.Trainer(**quiet_trainer_options(root, **kw))


def two_batch_pydataset(mod: Any, x: np.ndarray, y: np.ndarray) -> Any:
    """A ``mod.utils.PyDataset`` (``mod``: real Keras or compat) serving ``x``, ``y`` as two
    equal batches."""
    half = len(x) // 2

    class Batches(mod.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()

        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            return x[i * half : (i + 1) * half], y[i * half : (i + 1) * half]

    return Batches()


def batches_per_epoch(mod: Any) -> tuple[Any, list[int]]:
    """A ``mod.callbacks.Callback`` (``mod``: real Keras or compat) and the list in which it
    counts the training batches of each epoch."""
    counts: list[int] = []

    class Count(mod.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            counts.append(0)

        def on_train_batch_end(self, batch, logs=None):
            counts[-1] += 1

    return Count(), counts


def two_class_arrays_dm(*, batch_size: int = 8, test: int = 0) -> ImageDataModule:
    """32 images (32 px) in two classes told apart by the red channel; 8 for validation;
    ``test``: the first ``test`` images again as a test split."""
    from ftlight import ImageDataModule

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)
    y = np.repeat([0, 1], 16)
    x[y == 1, :, :, 0] = 255
    held_out = {"x_test": x[:test], "y_test": y[:test]} if test else {}
    return ImageDataModule.from_arrays(
        x, y, batch_size=batch_size, val_split=0.25, augment=False, image_size=32, **held_out
    )
