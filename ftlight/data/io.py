"""Reading image files: which files are images, how a folder tree is laid out, decoding to RGB."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
# Split folder names beside ``train/`` (the Keras blog layout uses ``validation/``).
SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
RESERVED_NAMES = tuple(name for names in SPLIT_NAMES.values() for name in names)
# The most pixels (width * height) an image may have before it is decoded: about 9460 x 9460,
# Pillow's own decompression-bomb warning threshold. A bigger image is refused by name (and
# skippable with ``skip_corrupt``) instead of filling the memory of every DataLoader worker.
# Pillow itself refuses twice its ``PIL.Image.MAX_IMAGE_PIXELS`` as a decompression bomb;
# a budget above that needs Pillow's limit raised too.
MAX_IMAGE_PIXELS = 89_478_485

_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class CorruptImageError(ValueError):
    """One or more image files cannot be decoded (or exceed the pixel budget)."""


class DataFolderNotFoundError(FileNotFoundError):
    """A data folder that does not exist (or is a file).

    ``argument`` names the setting that gave it (``root``: ``ImageDataModule(root=...)``,
    ``--data.root`` on the command line), ``path`` is the value as received and ``resolved``
    the absolute path it was looked for at.
    """

    def __init__(self, path: str | os.PathLike, argument: str = "root") -> None:
        self.path = os.fspath(path)
        self.argument = argument
        target = Path(self.path)
        self.resolved = str(target.absolute())
        self.problem = "is a file, not a folder" if target.exists() else "no such folder"
        super().__init__(
            f"Image folder not found: {argument}={self.path!r}: {self.problem} (resolved to "
            f"{self.resolved}). Expected a folder of images with one sub-folder per class."
        )

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # pickles (DDP) with its fields
        return type(self), (self.path, self.argument)


def _bit_depth(img: Image.Image) -> int:
    """Bits per sample of an integer-mode image, from the mode or the file's header."""
    if img.mode.startswith("I;16"):
        return 16
    tags = getattr(img, "tag_v2", None)  # TIFF: BitsPerSample
    if tags is not None and 258 in tags:
        bits = tags[258]
        return int(bits[0] if isinstance(bits, tuple) else bits)
    if img.format == "PNG":  # Pillow opens some 16-bit greyscale PNGs as "I"
        return 16
    if img.format == "PPM":  # maxval > 255 means 16 bits (Pillow gives "I")
        return 16
    return 32


def _to_8bit(img: Image.Image, bits: int) -> Image.Image:
    """16/32-bit integer and float greyscale -> 8-bit, scaled by the bit depth, not the maximum."""
    if img.mode in _INTEGER_MODES:
        peak = float(2**bits - 1)
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray((arr / peak * 255.0).round().clip(0, 255).astype(np.uint8))
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        low, high = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0.0 and high <= 1.0):
            raise ValueError(
                f"a floating-point image must hold values in 0..1; this one holds {low}..{high}"
            )
        return Image.fromarray((arr * 255.0).round().astype(np.uint8))
    return img


def load_rgb(
    path: str | os.PathLike | IO[bytes], *, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> Image.Image:
    """Open an image as 8-bit RGB, upright.

    16-bit and 32-bit integer images are scaled by their bit depth (a dark 16-bit image stays
    dark), float images (0..1) by 255, 1-bit, palette and grey images converted, transparent
    ones composited on white, and the EXIF orientation applied (phone photos are upright;
    Keras and torchvision ignore it). An image with more than ``max_pixels`` pixels (``None``:
    no budget beyond Pillow's decompression-bomb limit) is refused before it is decoded.
    """
    name = getattr(path, "name", path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise CorruptImageError(
                    f"Cannot read image {name}: {width}x{height} = {width * height} pixels "
                    f"exceeds the pixel budget of {max_pixels} (max_image_pixels; "
                    f"ftlight.data.io.MAX_IMAGE_PIXELS). Shrink the image, raise the budget, "
                    "or skip such files with skip_corrupt."
                )
            img.load()
            bits = _bit_depth(img) if img.mode in _INTEGER_MODES else 8  # from the header
            img = _to_8bit(ImageOps.exif_transpose(img), bits)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            return img.convert("RGB")
    except CorruptImageError:
        raise
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
    ) as err:
        raise CorruptImageError(f"Cannot read image {name}: {type(err).__name__}: {err}") from err


def is_hidden(path: Path, root: Path) -> bool:
    """True when ``path`` or a folder between ``root`` and it starts with '.' (``.DS_Store``,
    ``.thumbnails/``, macOS ``._photo.jpg``): such entries are never samples or classes."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def scan_class_folder(root: Path) -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """``root/<class>/<image>`` -> (samples, class names, ignored non-image files)."""
    if not root.is_dir():
        raise DataFolderNotFoundError(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(
            f"No class sub-folders in {root}. Expected one sub-folder per class "
            f"(e.g. {root}/cats/*.jpg, {root}/dogs/*.jpg)."
        )
    samples, ignored = [], []
    for index, name in enumerate(classes):
        folder = root / name
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or is_hidden(path, folder):
                continue
            if path.suffix.lower() in IMG_EXTENSIONS:
                samples.append((str(path), index))
            else:
                ignored.append(str(path))
    return samples, classes, ignored


def split_folders(root: Path) -> dict[str, Path]:
    """The folders of each split: ``root/train`` with ``val``/``valid``/``validation`` and
    ``test`` beside it, or ``{"train": root}`` for one tree of class folders.

    Folders beside ``train/`` that are no split are named in a warning; a split name among
    class folders (or a ``train/`` holding images itself) is an error that explains the
    reserved names.
    """
    if not root.is_dir():
        raise DataFolderNotFoundError(root)
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    train = root / "train"
    if train.is_dir() and not any(
        d.is_dir() and not d.name.startswith(".") for d in train.iterdir()
    ):
        raise ValueError(
            f"{train} holds no class sub-folders. 'train' is a reserved folder name: "
            f"{root}/train/<class>/ is the training split (with {root}/val/<class>/ and "
            f"{root}/test/<class>/ beside it). If 'train' is one of your classes, rename that "
            "folder (e.g. train_class)."
        )
    if not train.is_dir():
        reserved = [d for d in subdirs if d.lower() in RESERVED_NAMES]
        if reserved:
            raise ValueError(
                f"{root} has no train/ folder, so its sub-folders are read as classes, but "
                f"{reserved} are split folder names ({', '.join(RESERVED_NAMES)}). For "
                f"separate splits put the training images in {root}/train/<class>/; if these "
                "are classes, rename the folders (e.g. test -> test_class)."
            )
        return {"train": root}
    found: dict[str, Path] = {"train": train}
    for split, names in SPLIT_NAMES.items():
        present = [n for n in names if (root / n).is_dir()]
        if len(present) > 1:
            raise ValueError(
                f"{root} has several {split} folders {present}; keep one of them (ftlight "
                f"reads any one of {list(names)})."
            )
        if present:
            found[split] = root / present[0]
    others = [d for d in subdirs if d not in RESERVED_NAMES]
    if others:
        warnings.warn(
            f"Ignored folder(s) {others} beside {train}: only {', '.join(RESERVED_NAMES)} "
            f"are read as splits. Rename a validation folder to val/ (or valid/, validation/), "
            "a test folder to test/.",
            stacklevel=3,
        )
    return found
