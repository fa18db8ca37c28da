"""Fast input paths for image folders: a decoded-once cache and batched decoding on the GPU.

* :class:`DecodedImages` decodes every image once, applies the geometric steps that the
  transforms allow to be done once (the eval resize and centre crop; for random-resized-crop
  training a shrink of large images to the size the crops need), and stores the uint8 pixels
  in one memory-mapped file. Later epochs and runs read pixels instead of decoding files.
* :class:`BatchDecoder` decodes a batch of encoded files at once with
  ``torchvision.io.decode_jpeg(device=...)`` (nvJPEG on CUDA) and runs the transforms on that
  device, so a GPU is not starved by CPU JPEG decoding. Non-JPEG files are decoded on the CPU
  by :func:`~ftlight.data.io.load_rgb`, and JPEGs are turned upright by their EXIF orientation
  (nvJPEG ignores it), so both paths give the pixels of the per-image path.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import v2 as T

from ftlight.data.config import DataConfig
from ftlight.data.io import MAX_IMAGE_PIXELS, load_rgb
from ftlight.data.transforms import split_transform

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: 16-bit images scaled by bit depth, EXIF orientation applied


# ---- decoded-once cache ------------------------------------------------------------------


class _DecodeOnce(Dataset):
    def __init__(self, paths: Sequence[str], once: Callable, max_pixels: int | None) -> None:
        self.paths, self.once, self.max_pixels = list(paths), once, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        image = self.once(load_rgb(self.paths[i], max_pixels=self.max_pixels))
        return np.ascontiguousarray(image.numpy())


def _cache_key(paths: Sequence[str], geometry: dict[str, Any]) -> str:
    h = hashlib.sha1(json.dumps({"v": CACHE_VERSION, **geometry}, sort_keys=True).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


class DecodedImages:
    """uint8 images ``(3, h, w)`` decoded once and memory-mapped from ``folder``.

    Files: ``<key>.u8`` (all pixels, flat) and ``<key>.index.npy`` (offset, h, w per image).
    The key hashes the file paths, sizes and modification times and the geometry, so a
    changed folder or image size builds a new cache; an existing one is reused.
    """

    def __init__(self, data: np.memmap, index: np.ndarray, path: Path) -> None:
        self.data, self.index, self.path = data, index, path

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        offset, h, w = (int(v) for v in self.index[i])
        pixels = np.asarray(self.data[offset : offset + 3 * h * w]).reshape(3, h, w)
        return torch.from_numpy(pixels.copy())

    @classmethod
    def build(
        cls,
        paths: Sequence[str],
        folder: str | os.PathLike,
        once: Callable,
        geometry: dict[str, Any],
        *,
        num_workers: int = 0,
        max_pixels: int | None = MAX_IMAGE_PIXELS,
    ) -> DecodedImages:
        """Load the cache for ``paths`` from ``folder``, decoding them first when needed."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        key = _cache_key(paths, geometry)
        data_path, index_path = folder / f"{key}.u8", folder / f"{key}.index.npy"
        if not (data_path.exists() and index_path.exists()):
            log.info("Decoding %d images once into %s", len(paths), data_path)
            loader = DataLoader(
                _DecodeOnce(paths, once, max_pixels), batch_size=None, num_workers=num_workers
            )
            index = np.zeros((len(paths), 3), dtype=np.int64)
            offset = 0
            tmp = data_path.with_suffix(f".tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                for i, arr in enumerate(loader):
                    arr = np.asarray(arr, dtype=np.uint8)
                    index[i] = (offset, arr.shape[1], arr.shape[2])
                    f.write(arr.tobytes())
                    offset += arr.size
            np.save(index_path, index)
            os.replace(tmp, data_path)  # complete files only: safe for concurrent readers
        index = np.load(index_path)
        data = np.memmap(data_path, dtype=np.uint8, mode="r")
        return cls(data, index, data_path)


class DecodedDataset(Dataset):
    """``(transform(pixels), label)`` from a :class:`DecodedImages` cache."""

    def __init__(
        self, images: DecodedImages, labels: Sequence[int], transform: Callable | None = None
    ) -> None:
        self.images, self.labels, self.transform = images, list(labels), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i]
        return (self.transform(image) if self.transform else image), self.labels[i]


# ---- batched decoding on a device ----------------------------------------------------------


def resolve_decode_device(requested: str, *, num_workers: int = 0) -> str:
    """``"cuda"`` when asked for and available; otherwise ``"cpu"`` with a warning saying why."""
    if requested not in ("cpu", "cuda") and not requested.startswith("cuda:"):
        raise ValueError(f"decode_device must be 'cpu' or 'cuda'. Received: {requested!r}")
    if requested == "cpu" or torch.cuda.is_available():
        return requested
    warnings.warn(
        f"decode_device={requested!r} asks for JPEG decoding on the GPU, but no CUDA device is "
        "available (torch.cuda.is_available() is False). Falling back to decoding on the CPU "
        f"in {num_workers} DataLoader worker(s) (PIL).",
        stacklevel=3,
    )
    return "cpu"


class EncodedFiles(Dataset):
    """``(file bytes as a uint8 tensor, label)``: decoding happens later, per batch."""

    def __init__(self, samples: Sequence[tuple[str, int]]) -> None:
        self.samples = list(samples)
        self.transform = None  # set by ImageDataModule.loader; unused here

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return read_file(path), label


class EncodedBatch(list):
    """A list of encoded files (kept on the CPU by ``transfer_batch_to_device``)."""


def collate_encoded(items: list[tuple[torch.Tensor, int]]) -> tuple[EncodedBatch, torch.Tensor]:
    return EncodedBatch(d for d, _ in items), torch.as_tensor([y for _, y in items])


def _is_jpeg(data: torch.Tensor) -> bool:
    return len(data) > 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8


def _exif_orientation(data: torch.Tensor) -> int:
    """The EXIF orientation tag (1-8; 1 = upright) of encoded image bytes (header only)."""
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
            return int(img.getexif().get(0x0112, 1))
    except (OSError, ValueError, SyntaxError):
        return 1


def apply_orientation(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a ``(C, H, W)`` image upright by its EXIF orientation, as ``exif_transpose`` does."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-2, -1)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-2, -1)
    if orientation == 6:
        return img.rot90(-1, (-2, -1))
    if orientation == 7:
        return img.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return img.rot90(1, (-2, -1))
    return img


class BatchDecoder:
    """Decode a batch of encoded images on ``device`` and apply the transforms there.

    JPEGs go through ``decode_jpeg`` in one batched call (nvJPEG on CUDA); other formats (and
    JPEGs the GPU decoder rejects) are decoded on the CPU and moved. The result equals the
    CPU path's transform up to decoder rounding.
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        augment: bool,
        hflip: bool = True,
        crop: bool = True,
        device: str | torch.device = "cuda",
        max_pixels: int | None = MAX_IMAGE_PIXELS,
        auto_augment: str | None = None,
    ) -> None:
        once, every, _ = split_transform(
            cfg, augment=augment, hflip=hflip, crop=crop, auto_augment=auto_augment
        )
        # No ToImage, no float conversion and normalisation (done below, on the batch).
        steps = every.transforms[:-2] if augment else once.transforms[1:] + every.transforms[:-2]
        self.geometry = T.Compose(steps)
        self.mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.std).view(1, 3, 1, 1)
        self.device = torch.device(device)
        self.max_pixels = max_pixels

    def decode(self, files: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(files)
        jpegs = [i for i, d in enumerate(files) if _is_jpeg(d)]
        if jpegs:
            try:
                decoded = decode_jpeg(
                    [files[i] for i in jpegs], mode=ImageReadMode.RGB, device=self.device
                )
                for i, img in zip(jpegs, decoded, strict=True):
                    out[i] = apply_orientation(img, _exif_orientation(files[i]))
            except RuntimeError as err:  # e.g. CMYK or progressive quirks: CPU decodes them
                log.debug("batched JPEG decode failed (%s); decoding on the CPU", err)
        for i, img in enumerate(out):
            if img is None:  # 16-bit, float, TIFF, ...: the per-image path's pixels exactly
                image = load_rgb(io.BytesIO(files[i].numpy().tobytes()), max_pixels=self.max_pixels)
                out[i] = T.functional.pil_to_tensor(image).to(self.device)
        return out  # type: ignore[return-value]

    def __call__(self, files: Sequence[torch.Tensor]) -> torch.Tensor:
        images = torch.stack([self.geometry(img) for img in self.decode(files)])
        x = images.float().div_(255.0)
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))
