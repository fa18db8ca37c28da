"""Image datasets and the :class:`ImageDataModule` (folders of images, or arrays)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from ftlight.data.augment import resolve_auto_augment
from ftlight.data.config import DataConfig
from ftlight.data.datasets import (
    ArrayDataset,
    ImageFileDataset,
    images_to_tensor,
    labels_to_tensor,
    stratified_split,
)
from ftlight.data.fast_decode import (
    BatchDecoder,
    DecodedDataset,
    DecodedImages,
    EncodedBatch,
    EncodedFiles,
    collate_encoded,
    resolve_decode_device,
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
from ftlight.data.sampling import EpochSampler, ResumableDataLoader
from ftlight.data.transforms import eval_transform, split_transform, train_transform

log = logging.getLogger(__name__)


def default_num_workers() -> int:
    """Leave one core to the main process; a few workers are enough for most image sets."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(8, (cores or 1) - 1))


class ImageDataModule(L.LightningDataModule):
    """Images from a folder tree (one sub-folder per class) or from arrays.

    Folder layouts: ``root/train/<class>/…`` with ``root/val`` (or ``valid``, ``validation``)
    and ``root/test``, or ``root/<class>/…`` split into train/val by a stratified, seeded
    ``val_split``. Hidden entries (``.DS_Store``, ``.thumbnails/``) are never samples or classes;
    other folders beside ``train/`` are named in a warning.
    Transforms come from the backbone's data config, which :class:`~ftlight.FineTuner` hands
    over at set-up unless ``data_config`` was given here.

    Args:
        root: the image folder (``None`` for :meth:`from_arrays`).
        batch_size: images per batch.
        val_split: fraction held out for validation when there is no ``val/`` folder.
        test_split: fraction held out for testing when there is no ``test/`` folder.
        seed: seed of the splits.
        augment: random-resized crop (and flip) for training; ``False`` = eval transform.
            ``None`` (default, "auto"): random augmentation, except in a ``fit`` whose
            backbone is static from its first epoch (a fully frozen
            :class:`~ftlight.FineTuner`, or the frozen first phase of a staged run): the
            model then turns it off for that fit (logged once) so that the head trains on
            backbone features computed once (``cache_features``) instead of one backbone
            pass per image per epoch (see :meth:`settle_augment`). ``True``/``False`` are
            never changed.
        hflip: random horizontal flips when augmenting.
        auto_augment: an automatic augmentation policy for training images, after the crop
            and flip: ``"randaugment"`` or ``"trivialaugment"`` (torchvision's ``RandAugment``,
            ``TrivialAugmentWide``; see :mod:`ftlight.data.augment`), ``None``: none. Random,
            so it switches feature caching off like ``augment``.
        image_size: override the backbone's input size.
        num_workers: loader workers (``None``: one fewer than the cores, at most 8).
        skip_corrupt: skip unreadable files (and images over ``max_image_pixels``) with a
            warning and a count (default: raise). Classes are checked after the skipping.
        verify_images: decode every image once at set-up to find corrupt files early.
        decode_cache: folder for a decoded-once cache of folder images (uint8, memory-mapped;
            see :class:`ftlight.data.fast_decode.DecodedImages`): resize and centre crop (or, when
            augmenting, the shrink of large images) happen once, not every epoch.
        decode_device: ``"cpu"`` (PIL in DataLoader workers) or ``"cuda"``: workers only read
            the files; batches of JPEGs are decoded on the GPU (nvJPEG) and transformed there
            (:class:`~ftlight.data.fast_decode.BatchDecoder`). Without a GPU: the CPU path, with a
            warning.
        max_image_pixels: the pixel budget (width * height) of one image, checked before it is
            decoded (default :data:`ftlight.data.io.MAX_IMAGE_PIXELS`, about 9460 x 9460;
            ``None``: no budget beyond Pillow's decompression-bomb limit).
    """

    def __init__(
        self,
        root: str | None = None,
        *,
        batch_size: int = 32,
        val_split: float = 0.2,
        test_split: float = 0.0,
        seed: int = 0,
        augment: bool | None = None,
        hflip: bool = True,
        auto_augment: str | None = None,
        image_size: int | None = None,
        num_workers: int | None = None,
        skip_corrupt: bool = False,
        verify_images: bool = True,
        data_config: dict[str, Any] | None = None,
        decode_cache: str | None = None,
        decode_device: str = "cpu",
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__()
        self.root = Path(root) if root is not None else None
        self._root_given = root
        self.batch_size = batch_size
        self.val_split = val_split
        self.test_split = test_split
        self.seed = seed
        # augment=None: random augmentation unless FineTuner.setup settles it off (auto).
        self.augment_auto = augment is None
        self.augment = True if augment is None else bool(augment)
        self.hflip = hflip
        self.auto_augment = resolve_auto_augment(auto_augment)
        self.image_size = image_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.skip_corrupt = skip_corrupt
        self.verify_images = verify_images
        self.decode_cache = decode_cache
        self.decode_device = decode_device
        self.max_image_pixels = max_image_pixels
        self._decoded: dict[Any, Dataset] = {}
        self._data_config = DataConfig.from_dict(data_config) if data_config else None
        self._explicit_config = data_config is not None
        self._arrays: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._class_names: list[str] | None = None
        self._folders: dict[str, Path] | None = None
        self.datasets: dict[str, Dataset] = {}
        self.skipped_files: list[str] = []

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_folder(cls, root: str | os.PathLike, **kwargs: Any) -> ImageDataModule:
        """Images in ``root/<class>/`` (or ``root/train|val|test/<class>/``)."""
        return cls(str(root), **kwargs)

    @classmethod
    def from_arrays(
        cls,
        x: Any,
        y: Any,
        *,
        x_val: Any = None,
        y_val: Any = None,
        x_test: Any = None,
        y_test: Any = None,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        channels: str = "auto",
        **kwargs: Any,
    ) -> ImageDataModule:
        """Images as NumPy arrays or tensors (NHWC or NCHW), labels integer or one-hot."""
        kwargs.setdefault("num_workers", 0)
        dm = cls(None, **kwargs)
        if num_classes is None and class_names is not None:
            num_classes = len(class_names)
        images = images_to_tensor(x, channels)
        labels = labels_to_tensor(y, num_classes)
        if len(images) != len(labels):
            raise ValueError(f"x has {len(images)} images but y has {len(labels)} labels.")
        n_classes = num_classes or int(labels.max()) + 1
        arrays = {"train": (images, labels)}
        if x_val is not None:
            arrays["val"] = (images_to_tensor(x_val, channels), labels_to_tensor(y_val, n_classes))
        if x_test is not None:
            arrays["test"] = (
                images_to_tensor(x_test, channels),
                labels_to_tensor(y_test, n_classes),
            )
        dm._arrays = arrays
        dm._class_names = list(class_names) if class_names else [str(i) for i in range(n_classes)]
        return dm

    # ---- facts --------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            if self.root is None:
                raise ValueError("ImageDataModule has neither a root folder nor arrays.")
            _, self._class_names, _ = scan_class_folder(self._split_folders()["train"])
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def data_config(self) -> DataConfig:
        """The preprocessing in use (the model's, with this module's ``image_size``)."""
        return self._own(self._data_config or DataConfig())

    @data_config.setter
    def data_config(self, cfg: DataConfig | dict[str, Any]) -> None:
        self._data_config = DataConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg

    def _own(self, cfg: DataConfig) -> DataConfig:
        """Apply this module's size and framing: arrays are resized, never centre-cropped."""
        if self.image_size is not None:
            cfg = cfg.with_image_size(self.image_size)
        if self._arrays is not None:
            cfg = dataclasses.replace(cfg, crop=False)
        return cfg

    def adopt_data_config(self, cfg: DataConfig) -> None:
        """Take the model's preprocessing unless the user gave one explicitly."""
        if not self._explicit_config:
            self.data_config = cfg

    def settle_augment(self, augment: bool, why: str) -> bool:
        """Settle ``augment=None`` (auto) for the coming fit; an explicit value never changes.

        Called by :meth:`ftlight.FineTuner.setup` with ``augment=False`` when the backbone is
        static from the fit's first epoch (features are then cached), ``True`` otherwise.
        A change is logged once, with ``why``. Returns the value in use.
        """
        if self.augment_auto and self.augment != augment:
            self.augment = augment
            if augment:
                rank_zero_info(f"ImageDataModule(augment=None): random augmentation on ({why}).")
            else:
                rank_zero_info(
                    f"ImageDataModule(augment=None): no random augmentation in this fit ({why}): "
                    "the head trains on backbone features computed once. Pass augment=True for "
                    "random crops and flips (each epoch then runs the backbone on every image)."
                )
        return self.augment

    # ---- set-up -------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self._arrays is not None:
            self._setup_arrays()
        else:
            self._setup_folder()
        if len(self.class_names) < 2:
            where = (
                "labels with at least two values"
                if self._arrays is not None
                else f"one sub-folder per class under {self.root}"
            )
            raise ValueError(
                f"Found a single class ({self.class_names}). Classification needs at least two "
                f"classes: {where}."
            )

    def _setup_arrays(self) -> None:
        assert self._arrays is not None
        arrays = dict(self._arrays)
        if "test" not in arrays and self.test_split:
            images, labels = arrays["train"]
            keep, held = stratified_split(labels.tolist(), self.test_split, self.seed + 1)
            arrays["train"] = (images[keep], labels[keep])
            arrays["test"] = (images[held], labels[held])
        if "val" not in arrays and self.val_split:
            images, labels = arrays["train"]
            keep, held = stratified_split(labels.tolist(), self.val_split, self.seed)
            arrays["train"] = (images[keep], labels[keep])
            arrays["val"] = (images[held], labels[held])
        self.datasets = {k: ArrayDataset(*v) for k, v in arrays.items()}

    def _setup_folder(self) -> None:
        assert self.root is not None
        folders = self._split_folders()
        splits: dict[str, list[tuple[str, int]]] = {}
        splits["train"], classes, ignored = scan_class_folder(folders["train"])
        for name in ("val", "test"):
            if name in folders:
                samples, other, more = scan_class_folder(folders[name])
                if other != classes:
                    raise ValueError(
                        f"Classes in {folders[name]} {other} differ from those in "
                        f"{folders['train']} {classes}."
                    )
                splits[name] = samples
                ignored += more
        self._class_names = classes
        self._refuse_empty_classes(splits["train"], folders["train"])  # before decoding any
        if ignored:
            warnings.warn(
                f"Ignored {len(ignored)} non-image files (e.g. {ignored[:3]}); accepted "
                f"extensions: {IMG_EXTENSIONS}.",
                stacklevel=2,
            )
        if self.verify_images:
            for name in list(splits):
                splits[name] = self._drop_corrupt(splits[name])
        # Again after the skipping: a class whose every file was unreadable has no images.
        self._refuse_empty_classes(splits["train"], folders["train"])
        if "test" not in splits and self.test_split:
            keep, held = stratified_split(
                [s[1] for s in splits["train"]], self.test_split, self.seed + 1
            )
            splits["test"] = [splits["train"][i] for i in held]
            splits["train"] = [splits["train"][i] for i in keep]
        if "val" not in splits and self.val_split:
            keep, held = stratified_split(
                [s[1] for s in splits["train"]], self.val_split, self.seed
            )
            splits["val"] = [splits["train"][i] for i in held]
            splits["train"] = [splits["train"][i] for i in keep]
        self.datasets = {
            k: ImageFileDataset(v, max_pixels=self.max_image_pixels) for k, v in splits.items()
        }

    def _refuse_empty_classes(self, samples: list[tuple[str, int]], folder: Path) -> None:
        classes = self.class_names
        counts = np.bincount([label for _, label in samples], minlength=len(classes))
        empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
        if empty:
            skipped = ""
            if self.skipped_files:
                skipped = f" ({len(self.skipped_files)} unreadable files skipped)"
            raise ValueError(
                f"Class folders without any image: {empty} (in {folder}){skipped}. Every class "
                "needs at least one image; add images or remove the folder."
            )

    def _split_folders(self) -> dict[str, Path]:
        """The folder of each split (looked at, and warned about, once)."""
        if self._folders is None:
            assert self.root is not None
            if not self.root.is_dir():  # named as given: the CLI says which flag set it
                raise DataFolderNotFoundError(self._root_given, "root")
            self._folders = split_folders(self.root)
        return self._folders

    def _drop_corrupt(self, samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
        good, bad = [], []
        for path, label in samples:
            try:
                load_rgb(path, max_pixels=self.max_image_pixels)
                good.append((path, label))
            except CorruptImageError as err:
                bad.append(str(err))
        if bad and not self.skip_corrupt:
            listing = "\n  ".join(bad[:20])
            raise CorruptImageError(
                f"{len(bad)} unreadable image file(s):\n  {listing}\nRemove or fix them, or "
                "pass skip_corrupt=True to skip them with a warning (images over the pixel "
                "budget: or raise max_image_pixels)."
            )
        if bad:
            self.skipped_files += bad
            warnings.warn(f"Skipped {len(bad)} unreadable image file(s): {bad[:5]}", stacklevel=2)
        return good

    # ---- loaders ------------------------------------------------------------------------
    def transform_for(self, split: str) -> Callable:
        cfg = self.data_config  # cfg.crop: False for arrays (usually framed already)
        if split == "train":
            return train_transform(
                cfg,
                augment=self.augment,
                hflip=self.hflip,
                crop=cfg.crop,
                auto_augment=self.auto_augment,
            )
        return eval_transform(cfg)

    def loader(self, split: str, *, shuffle: bool | None = None) -> DataLoader:
        """A DataLoader over ``split`` ('train', 'val', 'test') with that split's transform."""
        self.setup()
        if split not in self.datasets:
            hint = ""
            if split == "test" and self._arrays is not None:
                hint = (
                    " Pass your held-out arrays as from_arrays(..., x_test=..., y_test=...), "
                    "or hold part of the training data out with test_split=FRACTION."
                )
            elif split == "test":
                hint = (
                    " Give the data a test/ sub-folder (beside train/), or hold part of the "
                    "training data out with test_split=FRACTION (CLI: --data.test_split 0.1)."
                )
            raise ValueError(f"No {split!r} split; have {sorted(self.datasets)}.{hint}")
        dataset = self._fast_dataset(split)
        workers = self.num_workers
        shuffle = (split == "train") if shuffle is None else shuffle
        # Seeded per epoch and resumable mid-epoch (ftlight.data.sampling): kill-safe, repeatable.
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochSampler(len(dataset), shuffle=shuffle, seed=self.seed),
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            collate_fn=collate_encoded if isinstance(dataset, EncodedFiles) else None,
            # A last training batch of one image breaks BatchNorm in training mode: drop it.
            drop_last=split == "train" and len(dataset) % self.batch_size == 1,
        )

    def _fast_dataset(self, split: str) -> Dataset:
        """The split's dataset with its transform, or its decoded-once / encoded variant."""
        dataset = self.datasets[split]
        if not isinstance(dataset, ImageFileDataset):  # arrays: decoded already
            dataset.transform = self.transform_for(split)
            return dataset
        augment = self.augment and split == "train"
        auto = self.auto_augment if split == "train" else None
        if self.decode_device != "cpu":
            device = resolve_decode_device(self.decode_device, num_workers=self.num_workers)
            if device != "cpu":
                self.decoders["train" if split == "train" else "eval"] = BatchDecoder(
                    self.data_config,
                    augment=augment,
                    hflip=self.hflip,
                    device=device,
                    max_pixels=self.max_image_pixels,
                    auto_augment=auto,
                )
                return EncodedFiles(dataset.samples)
            self.decode_device = "cpu"  # warned once; the CPU path from now on
        if self.decode_cache is None:
            dataset.transform = self.transform_for(split)
            return dataset
        once, every, geometry = split_transform(
            self.data_config, augment=augment, hflip=self.hflip, auto_augment=auto
        )
        key = (split, json.dumps(geometry, sort_keys=True))
        if key not in self._decoded:
            paths = [path for path, _ in dataset.samples]
            images = DecodedImages.build(
                paths,
                self.decode_cache,
                once,
                geometry,
                num_workers=self.num_workers,
                max_pixels=self.max_image_pixels,
            )
            self._decoded[key] = DecodedDataset(images, [y for _, y in dataset.samples])
        decoded = self._decoded[key]
        decoded.transform = every
        return decoded

    @property
    def decoders(self) -> dict[str, Any]:
        """Per-split :class:`~ftlight.data.fast_decode.BatchDecoder` of the GPU decoding path."""
        return self.__dict__.setdefault("_decoders", {})

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """Encoded batches (``decode_device="cuda"``) are decoded on ``device`` here."""
        if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], EncodedBatch):
            training = self.trainer is not None and self.trainer.training
            decoder = self.decoders.get("train" if training else "eval") or next(
                iter(self.decoders.values())
            )
            decoder.device = torch.device(device)
            return decoder(batch[0]), batch[1].to(device, non_blocking=True)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self.loader("val") if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.loader("test" if "test" in self.datasets else "val", shuffle=False)
