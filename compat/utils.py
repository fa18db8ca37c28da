"""``keras.utils``: ``to_categorical``, ``set_random_seed``, ``image_dataset_from_directory``."""

from __future__ import annotations

import math
import os
import random
from typing import Any

import lightning as L
import numpy as np
import torch

from compat.backend import clear_session
from ftlight.data import load_rgb, scan_class_folder

__all__ = [
    "ImageDataset",
    "clear_session",
    "image_dataset_from_directory",
    "set_random_seed",
    "to_categorical",
]


def to_categorical(x: Any, num_classes: int | None = None) -> np.ndarray:
    """Integer labels -> one-hot float32 array (``keras.utils.to_categorical``)."""
    x = np.asarray(x, dtype="int64")
    if x.ndim > 1 and x.shape[-1] == 1:
        x = x[..., 0]
    if num_classes is None:
        num_classes = int(x.max()) + 1
    if x.size and (x.min() < 0 or x.max() >= num_classes):
        raise ValueError(
            f"to_categorical: labels must be in [0, {num_classes}). Received "
            f"min={x.min()}, max={x.max()}"
        )
    return np.eye(num_classes, dtype="float32")[x]


def set_random_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (via ``lightning.seed_everything``)."""
    if not isinstance(seed, int):
        raise ValueError(f"Expected `seed` argument to be an integer. Received: seed={seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    L.seed_everything(seed, verbose=False)


class ImageDataset:
    """Batches of ``(images NHWC float32 0..255, labels)`` read from a class folder."""

    _compat_batches = True

    def __init__(
        self,
        files: list[tuple[str, int]],
        class_names: list[str],
        *,
        label_mode: str | None,
        image_size: tuple[int, int],
        batch_size: int | None,
        shuffle: bool,
        seed: int | None,
    ) -> None:
        self.files, self.class_names = files, class_names
        self.label_mode, self.image_size = label_mode, image_size
        self.batch_size = batch_size or len(files)
        self.shuffle, self.seed = shuffle, seed
        self._order = np.arange(len(files))
        if shuffle:
            np.random.default_rng(seed).shuffle(self._order)

    def __len__(self) -> int:
        return math.ceil(len(self.files) / self.batch_size)

    def _labels(self, labels: np.ndarray) -> np.ndarray:
        if self.label_mode == "categorical":
            return to_categorical(labels, len(self.class_names))
        if self.label_mode == "binary":
            return labels.astype("float32")[:, None]
        return labels.astype("int64")

    def __getitem__(self, i: int) -> Any:
        if i >= len(self):
            raise IndexError(i)
        idx = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        h, w = self.image_size
        images = np.stack(
            [np.asarray(load_rgb(self.files[j][0]).resize((w, h)), dtype="float32") for j in idx]
        )
        if self.label_mode is None:
            return images
        return images, self._labels(np.array([self.files[j][1] for j in idx]))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def image_dataset_from_directory(
    directory: str | os.PathLike,
    labels: str = "inferred",
    label_mode: str | None = "int",
    class_names: list[str] | None = None,
    color_mode: str = "rgb",
    batch_size: int | None = 32,
    image_size: tuple[int, int] = (256, 256),
    shuffle: bool = True,
    seed: int | None = None,
    validation_split: float | None = None,
    subset: str | None = None,
    interpolation: str = "bilinear",
    **kwargs: Any,
) -> Any:
    """Class-per-subfolder images -> :class:`ImageDataset` (or a pair with ``subset="both"``)."""
    from pathlib import Path

    if labels != "inferred":
        raise NotImplementedError("image_dataset_from_directory(labels=list): only 'inferred'")
    if color_mode != "rgb":
        raise NotImplementedError(f"image_dataset_from_directory(color_mode={color_mode!r})")
    if kwargs:
        raise NotImplementedError(f"image_dataset_from_directory({', '.join(kwargs)}=...)")
    if label_mode not in ("int", "categorical", "binary", None):
        raise ValueError(
            f"`label_mode` must be one of 'int', 'categorical', 'binary', None. "
            f"Received: label_mode={label_mode!r}"
        )
    files, names, _ = scan_class_folder(Path(directory))
    if class_names is not None:
        if sorted(class_names) != sorted(names):
            raise ValueError(f"class_names {class_names} do not match the subfolders {names}")
        remap = {names.index(c): i for i, c in enumerate(class_names)}
        files = [(f, remap[y]) for f, y in files]
        names = list(class_names)
    if label_mode == "binary" and len(names) != 2:
        raise ValueError(
            f'When passing `label_mode="binary"`, there must be exactly 2 '
            f"class_names. Received: class_names={names}"
        )
    print(f"Found {len(files)} files belonging to {len(names)} classes.")
    order = np.random.default_rng(seed if seed is not None else 1337).permutation(len(files))
    files = [files[i] for i in order]

    def make(part: list, shuf: bool) -> ImageDataset:
        return ImageDataset(
            part,
            names,
            label_mode=label_mode,
            image_size=tuple(image_size),
            batch_size=batch_size,
            shuffle=shuf,
            seed=seed,
        )

    if validation_split:
        if subset not in ("training", "validation", "both"):
            raise ValueError(
                f"With validation_split, `subset` must be 'training', "
                f"'validation' or 'both'. Received: subset={subset!r}"
            )
        cut = len(files) - int(validation_split * len(files))
        train, val = make(files[:cut], shuffle), make(files[cut:], False)
        return {"training": train, "validation": val, "both": (train, val)}[subset]
    return make(files, shuffle)
