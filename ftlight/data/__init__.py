"""The data layer: data config, image I/O, datasets, transforms, fast decoding, sampling and
the :class:`ImageDataModule`. It never imports :mod:`ftlight.models`."""

from ftlight.data.config import DataConfig
from ftlight.data.datamodule import ImageDataModule, default_num_workers
from ftlight.data.datasets import (
    ArrayDataset,
    ImageFileDataset,
    images_to_tensor,
    labels_to_tensor,
    stratified_split,
)
from ftlight.data.io import (
    IMG_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    CorruptImageError,
    DataFolderNotFoundError,
    load_rgb,
    scan_class_folder,
    split_folders,
)
from ftlight.data.transforms import eval_transform, split_transform, train_transform

__all__ = [
    "IMG_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ArrayDataset",
    "CorruptImageError",
    "DataConfig",
    "DataFolderNotFoundError",
    "ImageDataModule",
    "ImageFileDataset",
    "default_num_workers",
    "eval_transform",
    "images_to_tensor",
    "labels_to_tensor",
    "load_rgb",
    "scan_class_folder",
    "split_folders",
    "split_transform",
    "stratified_split",
    "train_transform",
]
