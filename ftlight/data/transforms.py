"""Train and eval transforms built from a :class:`~ftlight.data.config.DataConfig`.

One factory, :func:`split_transform`, knows every step; it returns them split into the part
that may be done once per image (decoded-once cache) and the part done every epoch.
:func:`eval_transform` and :func:`train_transform` are the per-epoch path built from the same
steps, so the two paths cannot drift apart.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ftlight.data.augment import auto_augment_steps
from ftlight.data.config import DataConfig

DEFAULT_CROP_SCALE = (0.35, 1.0)
# The eval resize scales the short side to ``size / crop_pct``: a 30000x1 image would become
# 7.68M x 256 pixels (gigabytes) for a centre crop of 224. Longer than this ratio, the long
# side is first cut (centred) to ``MAX_EVAL_ASPECT`` x the short side; the centre crop sees
# the same part of the image, and images up to this ratio keep exactly their pixels.
MAX_EVAL_ASPECT = 16

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def interpolation_mode(name: str) -> InterpolationMode:
    return _INTERPOLATION.get(name, InterpolationMode.BILINEAR)


def _normalize(cfg: DataConfig) -> list[T.Transform]:
    return [T.ToDtype(torch.float32, scale=True), T.Normalize(list(cfg.mean), list(cfg.std))]


def _eval_geometry(cfg: DataConfig, crop: bool) -> list[T.Transform]:
    size = cfg.image_size
    interp = interpolation_mode(cfg.interpolation)
    if crop:
        return [
            _CapAspect(MAX_EVAL_ASPECT),
            T.Resize(round(size / cfg.crop_pct), interpolation=interp, antialias=True),
            T.CenterCrop(size),
        ]
    return [T.Resize((size, size), interpolation=interp, antialias=True)]


def _random_geometry(cfg: DataConfig, hflip: bool, scale: tuple[float, float]) -> list[T.Transform]:
    interp = interpolation_mode(cfg.interpolation)
    steps: list[T.Transform] = [
        T.RandomResizedCrop(cfg.image_size, scale=scale, interpolation=interp, antialias=True)
    ]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return steps


def split_transform(
    cfg: DataConfig,
    *,
    augment: bool,
    hflip: bool = True,
    crop: bool = True,
    scale: tuple[float, float] = DEFAULT_CROP_SCALE,
    auto_augment: str | None = None,
) -> tuple[T.Compose, T.Compose, dict[str, Any]]:
    """(once, every_epoch, geometry) such that ``every_epoch(once(img))`` is the data
    module's transform: exactly for eval transforms, up to the resolution of the source for
    random-resized crops (large images are shrunk once so the smallest crop still has
    ``image_size`` pixels on a side). ``auto_augment`` (see :mod:`ftlight.data.augment`)
    runs every epoch, after the geometry."""
    size = cfg.image_size
    auto = auto_augment_steps(auto_augment)
    if not augment:
        desc = {"mode": "eval", "size": size, "crop": crop, "crop_pct": cfg.crop_pct}
        desc["max_aspect"] = MAX_EVAL_ASPECT
        once = T.Compose([T.ToImage(), *_eval_geometry(cfg, crop)])
        return once, T.Compose([*auto, *_normalize(cfg)]), desc
    short = math.ceil(size / math.sqrt(scale[0]))
    desc = {"mode": "train", "short_side": short}
    shrink = _ShrinkShortSide(short, interpolation_mode(cfg.interpolation))
    every = T.Compose(_random_geometry(cfg, hflip, scale) + auto + _normalize(cfg))
    return T.Compose([T.ToImage(), shrink]), every, desc


def eval_transform(cfg: DataConfig, *, crop: bool | None = None) -> T.Compose:
    """Resize to ``size / crop_pct`` and centre-crop to ``size`` (``crop=False``: plain resize)."""
    geometry = _eval_geometry(cfg, cfg.crop if crop is None else crop)
    return T.Compose([T.ToImage(), *geometry, *_normalize(cfg)])


def train_transform(
    cfg: DataConfig,
    *,
    augment: bool = True,
    hflip: bool = True,
    scale: tuple[float, float] = DEFAULT_CROP_SCALE,
    crop: bool | None = None,
    auto_augment: str | None = None,
) -> T.Compose:
    """Random-resized crop and horizontal flip, then the ``auto_augment`` policy
    (``"randaugment"``, ``"trivialaugment"``); ``augment=False``: the eval geometry."""
    auto = auto_augment_steps(auto_augment)
    if not augment:
        if not auto:
            return eval_transform(cfg, crop=crop)
        geometry = _eval_geometry(cfg, cfg.crop if crop is None else crop)
        return T.Compose([T.ToImage(), *geometry, *auto, *_normalize(cfg)])
    steps = [T.ToImage(), *_random_geometry(cfg, hflip, scale), *auto, *_normalize(cfg)]
    return T.Compose(steps)


class _ShrinkShortSide(T.Transform):
    """Resize so that the short side is ``size`` when it is longer (never enlarges)."""

    def __init__(self, size: int, interpolation: Any) -> None:
        super().__init__()
        self.size, self.interpolation = size, interpolation

    def forward(self, img: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h, w = img.shape[-2:]
        if min(h, w) <= self.size:
            return img
        return T.functional.resize(img, self.size, interpolation=self.interpolation, antialias=True)


class _CapAspect(T.Transform):
    """Cut the long side (centred) to ``ratio`` x the short side when it is longer."""

    def __init__(self, ratio: int) -> None:
        super().__init__()
        self.ratio = ratio

    def forward(self, img: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h, w = img.shape[-2:]
        if max(h, w) <= self.ratio * min(h, w):
            return img
        return T.functional.center_crop(img, [min(h, self.ratio * w), min(w, self.ratio * h)])
