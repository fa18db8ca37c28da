"""Reading image files: which files are images, how a class folder is scanned, decoding to RGB."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
SPLIT_DIRS = ("train", "val", "test")


class CorruptImageError(ValueError):
    """One or more image files cannot be decoded."""


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB (grayscale, palette, RGBA and 16-bit PNGs are converted)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                peak = 65535.0 if arr.max() > 255 else 255.0
                img = Image.fromarray((arr / peak * 255.0).clip(0, 255).astype(np.uint8))
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(f"Cannot read image {path}: {type(err).__name__}: {err}") from err


def scan_class_folder(root: Path) -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """``root/<class>/<image>`` -> (samples, class names, ignored non-image files)."""
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(
            f"No class sub-folders in {root}. Expected one sub-folder per class "
            f"(e.g. {root}/cats/*.jpg, {root}/dogs/*.jpg)."
        )
    samples, ignored = [], []
    for index, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_file():
                if path.suffix.lower() in IMG_EXTENSIONS:
                    samples.append((str(path), index))
                elif not path.name.startswith("."):
                    ignored.append(str(path))
    return samples, classes, ignored
