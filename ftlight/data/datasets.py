"""Datasets over image files and arrays, conversions of arrays and labels, seeded splits."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ftlight.data.io import MAX_IMAGE_PIXELS, load_rgb


class ImageFileDataset(Dataset):
    """``(path, label)`` samples read as RGB, with a replaceable ``transform``."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable | None = None,
        *,
        max_pixels: int | None = MAX_IMAGE_PIXELS,
    ):
        self.samples = list(samples)
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = load_rgb(path, max_pixels=self.max_pixels)
        return (self.transform(image) if self.transform else image), label


class ArrayDataset(Dataset):
    """In-memory images ``(N, 3, H, W)`` (uint8, or float in [0, 1]) and labels."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None
    ):
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.labels[index]


def images_to_tensor(x: Any, channels: str = "auto") -> torch.Tensor:
    """NumPy/tensor images (NHWC or NCHW; 1, 3 or 4 channels) -> ``(N, 3, H, W)`` tensor.

    uint8 stays uint8; uint16 is scaled by 65535 and other integer types by 255 (decided by the
    dtype, never by the values: a dark 16-bit image stays dark), bool by 1; floats are scaled
    to [0, 1] (values above 1 are taken as 0-255, with a warning when the brightest is under
    128; beyond 255 or below 0 is an error).
    """
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x.detach().cpu()
    if t.ndim == 3:  # (N, H, W) grayscale
        t = t.unsqueeze(1) if channels != "last" else t.unsqueeze(-1)
    if t.ndim != 4:
        hint = ""
        if t.ndim == 2 and math.isqrt(t.shape[1]) ** 2 == t.shape[1]:  # flat square rows
            side = math.isqrt(t.shape[1])
            hint = f"; flat rows of {t.shape[1]} pixels? x.reshape(-1, {side}, {side})"
        raise ValueError(
            f"Images must be a 4-D array (N, H, W, C) or (N, C, H, W), or 3-D (N, H, W) "
            f"grayscale. Received: shape={tuple(t.shape)}{hint}"
        )
    if channels == "auto":
        channels = "last" if t.shape[-1] in (1, 3, 4) and t.shape[1] not in (1, 3, 4) else "first"
        if t.shape[1] in (1, 3, 4) and t.shape[-1] in (1, 3, 4):
            channels = "first"
    if channels == "last":
        t = t.permute(0, 3, 1, 2)
    elif channels != "first":
        raise ValueError(f"channels must be 'auto', 'first' or 'last'. Received: {channels!r}")
    if t.shape[1] not in (1, 3, 4):
        raise ValueError(
            f"Expected 1, 3 or 4 channels, got {t.shape[1]} (shape {tuple(t.shape)} read as "
            f"channels-{channels}). Pass channels='first' or 'last' to say which axis it is."
        )
    if t.is_floating_point():
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).flatten(1).any(1).sum())
            raise ValueError(f"Images contain NaN or Inf values ({bad} images affected).")
        t = t.float()
        low, high = (float(t.min()), float(t.max())) if t.numel() else (0.0, 0.0)
        if high > 1.0 + 1e-6:
            if high > 255.0 + 1e-3 or low < -1e-6:
                raise ValueError(
                    f"Float images are read as [0, 1], or as 0..255 when above 1; these hold "
                    f"{low:g}..{high:g}. Scale them to [0, 1] first (e.g. x / x.max())."
                )
            if high < 128.0:  # e.g. scikit-learn's digits (0..16): nearly black as 0..255
                warnings.warn(
                    f"Float images hold {low:g}..{high:g}: values above 1 are read as 0..255, "
                    f"so their brightest pixel is {high / 255:.0%} white. If {high:g} is white, "
                    f"scale them to [0, 1] first (x / {high:g}).",
                    UserWarning,
                    stacklevel=3,
                )
            t = t / 255.0
    elif t.dtype == torch.bool:
        t = t.float()
    elif t.dtype == torch.uint16:
        t = t.float() / 65535.0
    elif t.dtype != torch.uint8:
        dtype, t = str(t.dtype).removeprefix("torch."), t.double()  # min/max for every type
        low, high = (int(t.min()), int(t.max())) if t.numel() else (0, 0)
        if low < 0 or high > 255:
            raise ValueError(
                f"Integer images of dtype {dtype} are read as "
                f"0..255; these hold {low}..{high}. Pass 16-bit images as uint16 (scaled by "
                "65535), or floats in [0, 1]."
            )
        t = t.float() / 255.0
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    elif t.shape[1] == 4:  # composite on white, as load_rgb does for RGBA files
        peak = 255.0 if t.dtype == torch.uint8 else 1.0
        rgb, alpha = t[:, :3].float(), t[:, 3:].float() / peak
        blended = rgb * alpha + peak * (1.0 - alpha)
        t = blended.round().to(torch.uint8) if t.dtype == torch.uint8 else blended
    return t.contiguous()


def labels_to_tensor(y: Any, num_classes: int | None = None) -> torch.Tensor:
    """Integer labels ``(N,)`` or one-hot ``(N, C)`` -> integer tensor ``(N,)``, range-checked."""
    t = torch.as_tensor(np.asarray(y)) if not isinstance(y, torch.Tensor) else y.detach().cpu()
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim == 2:
        rows_one_hot = ((t == 0) | (t == 1)).all() and bool((t.sum(1) == 1).all())
        if not rows_one_hot:
            raise ValueError(
                f"2-D labels must be one-hot (exactly one 1 per row). Received: shape "
                f"{tuple(t.shape)}. For multi-label data use task='multilabel'."
            )
        if num_classes is not None and t.shape[1] != num_classes:
            raise ValueError(f"One-hot labels have {t.shape[1]} columns; expected {num_classes}.")
        t = t.argmax(1)
    if t.ndim != 1:
        raise ValueError(
            f"Labels must be (N,) integers or (N, C) one-hot. Received: {tuple(t.shape)}"
        )
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise ValueError("Labels must be whole numbers (class indices).")
    t = t.long()
    if len(t) and (t.min() < 0 or (num_classes is not None and t.max() >= num_classes)):
        raise ValueError(
            f"Labels out of range: found {int(t.min())}..{int(t.max())}, expected 0.."
            f"{(num_classes or 0) - 1}."
        )
    return t


def stratified_split(
    labels: Sequence[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices (keep, held_out) with ``fraction`` of every class held out, seeded."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_split must be in (0, 1). Received: {fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    keep, held = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_held = round(len(idx) * fraction)
        if len(idx) > 1:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.extend(idx[:n_held].tolist())
        keep.extend(idx[n_held:].tolist())
    return sorted(keep), sorted(held)
