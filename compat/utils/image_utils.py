"""``keras.utils`` image helpers (``load_img``, ``img_to_array``, ``array_to_img``,
``save_img``) and the resize ``image_dataset_from_directory`` uses, with Keras's semantics:
PIL resampling for ``load_img`` (default ``"nearest"``), and Keras's ``ops.image.resize``
on float32 pixels (torch ``interpolate``, no antialias) for datasets."""

from __future__ import annotations

import io
import os
import pathlib
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PIL_INTERPOLATION_METHODS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "hamming": Image.Resampling.HAMMING,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}

# Keras's torch backend: ``keras.ops.image.resize`` interpolation -> torch mode
RESIZE_INTERPOLATIONS = {"bilinear": "bilinear", "nearest": "nearest-exact", "bicubic": "bicubic"}


def _channels_last(data_format: str | None, what: str) -> None:
    if data_format not in (None, "channels_last"):
        raise NotImplementedError(
            f"{what}(data_format={data_format!r}): compat is channels_last at its boundary."
        )


def load_img(
    path: Any,
    color_mode: str = "rgb",
    target_size: tuple[int, int] | None = None,
    interpolation: str = "nearest",
    keep_aspect_ratio: bool = False,
) -> Image.Image:
    """A PIL image, converted to ``color_mode`` and resized with PIL like Keras."""
    if isinstance(path, io.BytesIO):
        img = Image.open(path)
    elif isinstance(path, (pathlib.Path, bytes, str)):
        with open(path, "rb") as f:
            img = Image.open(io.BytesIO(f.read()))
    else:
        raise TypeError(f"path should be path-like or io.BytesIO, not {type(path)}")
    if color_mode == "grayscale":
        if img.mode not in ("L", "I;16", "I"):
            img = img.convert("L")
    elif color_mode == "rgba":
        if img.mode != "RGBA":
            img = img.convert("RGBA")
    elif color_mode == "rgb":
        if img.mode != "RGB":
            img = img.convert("RGB")
    else:
        raise ValueError('color_mode must be "grayscale", "rgb", or "rgba"')
    if target_size is None:
        return img
    size = (target_size[1], target_size[0])
    if img.size == size:
        return img
    if interpolation not in PIL_INTERPOLATION_METHODS:
        raise ValueError(
            f"Invalid interpolation method {interpolation} specified. Supported methods "
            f"are {', '.join(PIL_INTERPOLATION_METHODS)}"
        )
    resample = PIL_INTERPOLATION_METHODS[interpolation]
    if not keep_aspect_ratio:
        return img.resize(size, resample)
    width, height = img.size
    crop_height = min(height, (width * size[1]) // size[0])
    crop_width = min(width, (height * size[0]) // size[1])
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return img.resize(size, resample, box=(left, top, left + crop_width, top + crop_height))


def img_to_array(img: Any, data_format: str | None = None, dtype: Any = None) -> np.ndarray:
    """PIL image -> ``(H, W, C)`` array (float32 unless ``dtype``)."""
    _channels_last(data_format, "img_to_array")
    x = np.asarray(img, dtype=dtype or "float32")
    if x.ndim == 2:
        return x.reshape((x.shape[0], x.shape[1], 1))
    if x.ndim != 3:
        raise ValueError(f"Unsupported image shape: {x.shape}")
    return x


def array_to_img(
    x: Any, data_format: str | None = None, scale: bool = True, dtype: Any = None
) -> Image.Image:
    """``(H, W, C)`` array -> PIL image; ``scale`` maps the array's range to 0..255."""
    _channels_last(data_format, "array_to_img")
    x = np.array(x, dtype=dtype or "float32")
    if x.ndim != 3:
        raise ValueError(
            f"Expected image array to have rank 3 (single image). Got array with shape: {x.shape}"
        )
    if scale:
        x = x - np.min(x)
        x_max = np.max(x)
        if x_max != 0:
            x /= x_max
        x *= 255
    if x.shape[2] == 4:
        return Image.fromarray(x.astype("uint8"), "RGBA")
    if x.shape[2] == 3:
        return Image.fromarray(x.astype("uint8"), "RGB")
    if x.shape[2] == 1:
        if np.max(x) > 255:
            return Image.fromarray(x[:, :, 0].astype("int32"), "I")
        return Image.fromarray(x[:, :, 0].astype("uint8"), "L")
    raise ValueError(f"Unsupported channel number: {x.shape[2]}")


def save_img(
    path: Any,
    x: Any,
    data_format: str | None = None,
    file_format: str | None = None,
    scale: bool = True,
    **kwargs: Any,
) -> None:
    """Write an ``(H, W, C)`` array as an image file (format from the extension)."""
    if file_format is None and isinstance(path, (str, pathlib.Path, os.PathLike)):
        file_format = pathlib.Path(path).suffix[1:].lower()
    if file_format and file_format.lower() == "jpg":
        file_format = "jpeg"
    img = array_to_img(x, data_format=data_format, scale=scale)
    if img.mode == "RGBA" and file_format == "jpeg":
        warnings.warn(
            "The JPEG format does not support RGBA images, converting to RGB.", stacklevel=2
        )
        img = img.convert("RGB")
    img.save(path, format=file_format, **kwargs)


def resize_array(x: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """``keras.ops.image.resize`` of one ``(H, W, C)`` float32 image (torch backend)."""
    if interpolation not in RESIZE_INTERPOLATIONS:
        raise NotImplementedError(
            f"interpolation={interpolation!r}: Keras's torch backend supports "
            f"{sorted(RESIZE_INTERPOLATIONS)}."
        )
    if tuple(x.shape[:2]) == tuple(size):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)[None]
    mode = RESIZE_INTERPOLATIONS[interpolation]
    align = False if mode in ("bilinear", "bicubic") else None
    out = F.interpolate(t, size=tuple(size), mode=mode, align_corners=align, antialias=False)
    return out[0].permute(1, 2, 0).numpy()


__all__ = ["array_to_img", "img_to_array", "load_img", "resize_array", "save_img"]
