"""``keras.utils.image_dataset_from_directory`` with Keras's file order, split and resize.

Files are indexed as Keras does (class folders sorted, then each folder walked recursively,
files sorted per folder), shuffled with Keras's ``RandomState(seed)`` before the
validation split (so each subset holds the same files as in Keras), read with PIL and
resized as float32 with Keras's ``ops.image.resize``. Batches are NHWC float32 NumPy
arrays; a shuffled dataset also reshuffles its batches each epoch.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from PIL import Image

from compat.utils.image_utils import resize_array
from compat.utils.numerical import to_categorical

ALLOWLIST_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
COLOR_CHANNELS = {"rgb": 3, "rgba": 4, "grayscale": 1}


def iter_valid_files(directory: str, follow_links: bool, formats: tuple[str, ...]):
    """``(folder, file name)`` pairs in Keras's order: folders sorted, files sorted."""
    walk = os.walk(directory, followlinks=follow_links)
    for root, _, files in sorted(walk, key=lambda x: x[0]):
        for fname in sorted(files):
            if fname.lower().endswith(formats):
                yield root, fname


def class_folders(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Image folder not found: {directory}")
    return [
        d
        for d in sorted(os.listdir(directory))
        if os.path.isdir(os.path.join(directory, d)) and not d.startswith(".")
    ]


def index_directory(
    directory: str,
    class_names: list[str] | None,
    *,
    follow_links: bool,
    formats: tuple[str, ...],
    shuffle: bool,
    seed: int,
) -> tuple[list[str], np.ndarray, list[str]]:
    """Keras's ``index_directory`` for ``labels="inferred"``: paths, labels, class names."""
    subdirs = class_folders(directory)
    if class_names is not None:
        if not set(class_names).issubset(set(subdirs)):
            raise ValueError(
                "The `class_names` passed did not match the names of the subdirectories of "
                f"the target directory. Expected: {subdirs} (or a subset of it), but "
                f"received: class_names={class_names}"
            )
        subdirs = list(class_names)
    paths, labels = [], []
    for index, sub in enumerate(subdirs):
        for root, fname in iter_valid_files(os.path.join(directory, sub), follow_links, formats):
            paths.append(os.path.join(root, fname))
            labels.append(index)
    label_array = np.array(labels, dtype="int32")
    if shuffle:
        np.random.RandomState(seed).shuffle(paths)
        np.random.RandomState(seed).shuffle(label_array)
    return paths, label_array, subdirs


def load_array(path: str, color_mode: str) -> np.ndarray:
    """One image file -> ``(H, W, C)`` float32 as Keras decodes it (PIL ``convert``)."""
    with Image.open(path) as img:
        if color_mode == "grayscale":
            if img.mode not in ("L", "I;16", "I"):
                img = img.convert("L")
        elif color_mode == "rgba":
            img = img.convert("RGBA") if img.mode != "RGBA" else img
        elif img.mode != "RGB":
            img = img.convert("RGB")
        x = np.array(img, dtype="float32")
    return x[..., None] if x.ndim == 2 else x


class ImageDataset:
    """Batches of ``(images NHWC float32 0..255, labels)`` read from a class folder."""

    _compat_batches = True

    def __init__(
        self,
        paths: list[str],
        labels: np.ndarray,
        class_names: list[str],
        *,
        label_mode: str | None,
        image_size: tuple[int, int],
        batch_size: int | None,
        shuffle: bool,
        seed: int | None,
        interpolation: str = "bilinear",
        color_mode: str = "rgb",
    ) -> None:
        self.file_paths, self.labels, self.class_names = list(paths), labels, class_names
        self.label_mode, self.image_size = label_mode, tuple(image_size)
        self.batch_size = batch_size or max(len(paths), 1)
        self.unbatched = batch_size is None
        self.shuffle, self.seed = shuffle, seed
        self.interpolation, self.color_mode = interpolation, color_mode
        self._epoch = 0
        self._order = np.arange(len(paths))
        self._reorder()

    @property
    def files(self) -> list[tuple[str, int]]:
        return [(p, int(y)) for p, y in zip(self.file_paths, self.labels, strict=True)]

    def _reorder(self) -> None:
        if self.shuffle:
            seed = None if self.seed is None else self.seed + self._epoch
            self._order = np.random.default_rng(seed).permutation(len(self.file_paths))

    def on_epoch_end(self) -> None:
        self._epoch += 1
        self._reorder()

    def __len__(self) -> int:
        return math.ceil(len(self.file_paths) / self.batch_size)

    def _labels(self, labels: np.ndarray) -> np.ndarray:
        if self.label_mode == "categorical":
            return to_categorical(labels, len(self.class_names))
        if self.label_mode == "binary":
            return labels.astype("float32")[:, None]
        return labels.astype("int32")

    def __getitem__(self, i: int) -> Any:
        if i >= len(self):
            raise IndexError(i)
        idx = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        images = np.stack(
            [
                resize_array(
                    load_array(self.file_paths[j], self.color_mode),
                    self.image_size,
                    self.interpolation,
                )
                for j in idx
            ]
        )
        if self.unbatched:
            images = images[0] if len(images) == 1 else images
        if self.label_mode is None:
            return images
        return images, self._labels(self.labels[idx])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def image_dataset_from_directory(
    directory: str | os.PathLike,
    labels: Any = "inferred",
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
    follow_links: bool = False,
    crop_to_aspect_ratio: bool = False,
    pad_to_aspect_ratio: bool = False,
    data_format: str | None = None,
    format: str = "tf",
    verbose: bool = True,
) -> Any:
    """Class-per-subfolder images -> :class:`ImageDataset` (a pair with ``subset="both"``)."""
    if labels != "inferred":
        raise NotImplementedError("image_dataset_from_directory(labels=...): only 'inferred'")
    for arg, value in (
        ("crop_to_aspect_ratio", crop_to_aspect_ratio),
        ("pad_to_aspect_ratio", pad_to_aspect_ratio),
    ):
        if value:
            raise NotImplementedError(f"image_dataset_from_directory({arg}=True)")
    if data_format not in (None, "channels_last"):
        raise NotImplementedError(f"image_dataset_from_directory(data_format={data_format!r})")
    if format not in ("tf", "grain"):
        raise ValueError(f'`format` should be either "tf" or "grain". Received: format={format}')
    if color_mode not in COLOR_CHANNELS:
        raise ValueError(
            '`color_mode` must be one of {"rgb", "rgba", "grayscale"}. '
            f"Received: color_mode={color_mode}"
        )
    if label_mode not in ("int", "categorical", "binary", None):
        raise ValueError(
            "`label_mode` argument must be one of 'int', 'categorical', 'binary', or None. "
            f"Received: label_mode={label_mode}"
        )
    if validation_split and subset not in ("training", "validation", "both"):
        raise ValueError(
            f'`subset` must be either "training", "validation" or "both". Received: subset={subset}'
        )
    if seed is None:
        seed = int(np.random.randint(1e6))
    directory = os.fspath(directory)
    paths, label_array, names = index_directory(
        directory,
        class_names,
        follow_links=follow_links,
        formats=ALLOWLIST_FORMATS,
        shuffle=shuffle,
        seed=seed,
    )
    if label_mode == "binary" and len(names) != 2:
        raise ValueError(
            'When passing `label_mode="binary"`, there must be exactly 2 class_names. '
            f"Received: class_names={names}"
        )
    if verbose:
        print(f"Found {len(paths)} files belonging to {len(names)} classes.")

    def make(part: slice) -> ImageDataset:
        return ImageDataset(
            paths[part],
            label_array[part],
            names,
            label_mode=label_mode,
            image_size=tuple(image_size),
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            interpolation=interpolation,
            color_mode=color_mode,
        )

    if not validation_split:
        return make(slice(None))
    n_val = int(validation_split * len(paths))
    train, val = make(slice(None, len(paths) - n_val)), make(slice(len(paths) - n_val, None))
    return {"training": train, "validation": val, "both": (train, val)}[subset]


__all__ = ["ImageDataset", "image_dataset_from_directory", "index_directory", "iter_valid_files"]
