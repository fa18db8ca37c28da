"""``keras.preprocessing.image.ImageDataGenerator`` (rescale, flips, shifts, rotation, zoom;
``flow`` and ``flow_from_directory``). Batches are NHWC float32 NumPy arrays."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from compat.utils import ImageDataset, image_dataset_from_directory, to_categorical


class ImageDataGenerator:
    _supported = (
        "rescale",
        "horizontal_flip",
        "vertical_flip",
        "rotation_range",
        "width_shift_range",
        "height_shift_range",
        "zoom_range",
        "preprocessing_function",
        "validation_split",
        "fill_mode",
    )

    def __init__(
        self,
        rescale: float | None = None,
        horizontal_flip: bool = False,
        vertical_flip: bool = False,
        rotation_range: float = 0,
        width_shift_range: float = 0.0,
        height_shift_range: float = 0.0,
        zoom_range: Any = 0.0,
        preprocessing_function: Any = None,
        validation_split: float = 0.0,
        fill_mode: str = "nearest",
        **kwargs: Any,
    ) -> None:
        unsupported = {k: v for k, v in kwargs.items() if v not in (None, False, 0, 0.0)}
        if unsupported:
            raise NotImplementedError(
                f"ImageDataGenerator({', '.join(unsupported)}=...). "
                f"Supported: {', '.join(self._supported)}"
            )
        self.rescale, self.horizontal_flip, self.vertical_flip = (
            rescale,
            horizontal_flip,
            vertical_flip,
        )
        self.rotation_range = rotation_range
        self.width_shift_range, self.height_shift_range = width_shift_range, height_shift_range
        self.zoom_range = (
            (1 - zoom_range, 1 + zoom_range)
            if isinstance(zoom_range, (int, float))
            else tuple(zoom_range)
        )
        self.preprocessing_function = preprocessing_function
        self.validation_split = validation_split
        self.rng = np.random.default_rng()

    def random_transform(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)
        h, w = x.shape[:2]
        if self.horizontal_flip and self.rng.random() < 0.5:
            t = t.flip(2)
        if self.vertical_flip and self.rng.random() < 0.5:
            t = t.flip(1)
        angle = (
            self.rng.uniform(-self.rotation_range, self.rotation_range)
            if self.rotation_range
            else 0.0
        )
        tx = (
            self.rng.uniform(-self.width_shift_range, self.width_shift_range) * w
            if self.width_shift_range
            else 0.0
        )
        ty = (
            self.rng.uniform(-self.height_shift_range, self.height_shift_range) * h
            if self.height_shift_range
            else 0.0
        )
        zoom = self.rng.uniform(*self.zoom_range) if self.zoom_range != (1, 1) else 1.0
        if angle or tx or ty or zoom != 1.0:
            t = TF.affine(
                t,
                angle=float(angle),
                translate=[int(tx), int(ty)],
                scale=float(zoom),
                shear=[0.0, 0.0],
            )
        return t.permute(1, 2, 0).numpy()

    def standardize(self, x: np.ndarray) -> np.ndarray:
        if self.preprocessing_function is not None:
            x = self.preprocessing_function(x)
        if self.rescale:
            x = x * self.rescale
        return x

    def _process(self, batch: np.ndarray, augment: bool) -> np.ndarray:
        out = [
            self.standardize(self.random_transform(img) if augment else img)
            for img in batch.astype("float32")
        ]
        return np.stack(out).astype("float32")

    def flow(
        self,
        x: Any,
        y: Any = None,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int | None = None,
        subset: str | None = None,
    ) -> NumpyArrayIterator:
        x = np.asarray(x, dtype="float32")
        if x.ndim != 4:
            raise ValueError(
                f"Input data in `NumpyArrayIterator` should have rank 4. You "
                f"passed an array with shape {x.shape}"
            )
        if y is not None:
            y = np.asarray(y)
        if self.validation_split and subset:
            cut = int(len(x) * (1 - self.validation_split))
            sl = slice(0, cut) if subset == "training" else slice(cut, None)
            x = x[sl]
            y = y[sl] if y is not None else None
        return NumpyArrayIterator(self, x, y, batch_size, shuffle, seed)

    def flow_from_directory(
        self,
        directory: str | os.PathLike,
        target_size: tuple[int, int] = (256, 256),
        color_mode: str = "rgb",
        classes: list[str] | None = None,
        class_mode: str | None = "categorical",
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int | None = None,
        subset: str | None = None,
        interpolation: str = "nearest",
    ) -> DirectoryIterator:
        modes = {
            "categorical": "categorical",
            "binary": "binary",
            "sparse": "int",
            None: None,
            "input": None,
        }
        if class_mode not in modes:
            raise ValueError(
                f'Invalid class_mode: {class_mode}; expected one of "categorical", '
                '"binary", "sparse", "input" or None.'
            )
        kw = {}
        if self.validation_split and subset:
            kw = {"validation_split": self.validation_split, "subset": subset}
        ds = image_dataset_from_directory(
            directory,
            label_mode=modes[class_mode],
            class_names=classes,
            color_mode=color_mode,
            batch_size=batch_size,
            image_size=target_size,
            shuffle=shuffle,
            seed=seed or 0,
            **kw,
        )
        return DirectoryIterator(self, ds, class_mode)


class NumpyArrayIterator:
    _compat_batches = True

    def __init__(
        self,
        gen: ImageDataGenerator,
        x: np.ndarray,
        y: Any,
        batch_size: int,
        shuffle: bool,
        seed: int | None,
    ) -> None:
        self.gen, self.x, self.y, self.batch_size = gen, x, y, batch_size
        self.n = len(x)
        self.index = (
            np.random.default_rng(seed).permutation(self.n) if shuffle else np.arange(self.n)
        )

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __getitem__(self, i: int) -> Any:
        if i >= len(self):
            raise IndexError(i)
        idx = self.index[i * self.batch_size : (i + 1) * self.batch_size]
        xb = self.gen._process(self.x[idx], augment=True)
        return xb if self.y is None else (xb, self.y[idx])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class DirectoryIterator(NumpyArrayIterator):
    def __init__(self, gen: ImageDataGenerator, ds: ImageDataset, class_mode: Any) -> None:
        self.gen, self.ds, self.class_mode = gen, ds, class_mode
        self.class_indices = {c: i for i, c in enumerate(ds.class_names)}
        self.classes = np.array([y for _, y in ds.files])
        self.filenames = [f for f, _ in ds.files]
        self.n, self.batch_size = len(ds.files), ds.batch_size

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        item = self.ds[i]
        x = item[0] if isinstance(item, tuple) else item
        xb = self.gen._process(x, augment=True)
        if self.class_mode == "input":
            return xb, xb
        return (xb, item[1]) if isinstance(item, tuple) else xb


__all__ = ["DirectoryIterator", "ImageDataGenerator", "NumpyArrayIterator", "to_categorical"]
