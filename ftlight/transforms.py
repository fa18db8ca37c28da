"""Train and eval transforms built from a backbone's :class:`~ftlight.backbone.DataConfig`."""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ftlight.backbone import DataConfig

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def interpolation_mode(name: str) -> InterpolationMode:
    return _INTERPOLATION.get(name, InterpolationMode.BILINEAR)


def _finish(cfg: DataConfig) -> list[T.Transform]:
    return [
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=list(cfg.mean), std=list(cfg.std)),
    ]


def eval_transform(cfg: DataConfig, *, crop: bool | None = None) -> T.Compose:
    """Resize to ``size / crop_pct`` and centre-crop to ``size`` (``crop=False``: plain resize)."""
    size = cfg.image_size
    interp = interpolation_mode(cfg.interpolation)
    if cfg.crop if crop is None else crop:
        resize = [
            T.Resize(round(size / cfg.crop_pct), interpolation=interp, antialias=True),
            T.CenterCrop(size),
        ]
    else:
        resize = [T.Resize((size, size), interpolation=interp, antialias=True)]
    return T.Compose([T.ToImage(), *resize, *_finish(cfg)[1:]])


def train_transform(
    cfg: DataConfig,
    *,
    augment: bool = True,
    hflip: bool = True,
    scale: tuple[float, float] = (0.35, 1.0),
    crop: bool | None = None,
) -> T.Compose:
    """Random-resized crop and horizontal flip; ``augment=False`` gives the eval transform."""
    if not augment:
        return eval_transform(cfg, crop=crop)
    size = cfg.image_size
    steps: list[T.Transform] = [
        T.ToImage(),
        T.RandomResizedCrop(
            size, scale=scale, interpolation=interpolation_mode(cfg.interpolation), antialias=True
        ),
    ]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + _finish(cfg)[1:])
