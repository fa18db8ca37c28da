"""``keras.utils``: data sets from folders, image helpers, ``PyDataset``, labels, seeding."""

from __future__ import annotations

from typing import Any

from compat.backend import clear_session
from compat.utils.image_dataset import ImageDataset, image_dataset_from_directory
from compat.utils.image_utils import array_to_img, img_to_array, load_img, save_img
from compat.utils.numerical import set_random_seed, to_categorical
from compat.utils.py_dataset import PyDataset, Sequence

__all__ = [
    "ImageDataset",
    "PyDataset",
    "Sequence",
    "array_to_img",
    "clear_session",
    "image_dataset_from_directory",
    "img_to_array",
    "load_img",
    "save_img",
    "set_random_seed",
    "to_categorical",
]


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    raise NotImplementedError(
        f"compat.utils.{name} is not implemented. Supported: {', '.join(__all__)}"
    )
