"""Test-time augmentation: predict several views of each image and average their probabilities.

Modes (``FineTuner(tta=...)``, ``ftlight test --model.tta``, ``ftlight predict --tta``):

* ``"flip"``: the image and its horizontal mirror (2 views);
* ``"crops"``: the image and its four corner crops of :data:`CROP_FRACTION` of each side,
  resized back to the input size (5 views);
* ``"flip+crops"``: those 5 views and their mirrors (10 views).

The views are made from the preprocessed batch (normalisation is per channel, so mirroring
or resampling a normalised image equals normalising the mirrored or resampled image), and
run through the model as one batch. Their **probabilities** are averaged, not their logits:
the mean of probabilities is the prediction of the ensemble of views (a mixture), which stays
calibrated like each view; averaging logits multiplies the views' probabilities (a geometric
mean), so one over-confident view outvotes the others.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

TTA_MODES = ("flip", "crops", "flip+crops")
CROP_FRACTION = 0.875


def resolve_tta(value: Any) -> str | None:
    """The canonical mode (``None``: no TTA); a clear error naming what was received."""
    if value is None or value is False:
        return None
    if isinstance(value, str):
        key = value.strip().lower().replace(" ", "")
        if key in ("", "none", "false", "off"):
            return None
        key = {"hflip": "flip", "crops+flip": "flip+crops"}.get(key, key)
        if key in TTA_MODES:
            return key
    raise ValueError(f"tta must be None, 'flip', 'crops' or 'flip+crops'. Received: {value!r}")


def tta_views(images: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views of a batch ``(B, C, H, W)`` for ``mode``, each of the batch's shape."""
    mode = resolve_tta(mode) or ""
    if images.ndim != 4:
        raise ValueError(
            f"Test-time augmentation needs a batch of images (B, C, H, W). Received: shape "
            f"{tuple(images.shape)}"
        )
    views = [images]
    if "crops" in mode:
        h, w = images.shape[-2:]
        ch, cw = max(1, round(h * CROP_FRACTION)), max(1, round(w * CROP_FRACTION))
        for top, left in ((0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)):
            views.append(
                TF.resized_crop(
                    images,
                    top,
                    left,
                    ch,
                    cw,
                    [h, w],
                    interpolation=InterpolationMode.BILINEAR,
                    antialias=True,
                )
            )
    if "flip" in mode:
        views += [view.flip(-1) for view in views]
    return views


def tta_probabilities(model: Any, images: torch.Tensor, mode: str) -> torch.Tensor:
    """The mean over the views of ``model.probabilities(model(view))`` (one forward pass)."""
    views = tta_views(images, mode)
    probs = model.probabilities(model(torch.cat(views)))
    return probs.unflatten(0, (len(views), len(images))).mean(0)


def probabilities_to_logits(probs: torch.Tensor, task: str) -> torch.Tensor:
    """Logits whose probabilities (softmax, or sigmoid) are ``probs``, for the loss and metrics
    of averaged predictions; binary probabilities ``(B,)`` give logits ``(B, 1)``."""
    if task == "multiclass":
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
    eps = torch.finfo(probs.dtype).eps
    logits = torch.logit(probs, eps=eps)
    return logits.unsqueeze(1) if task == "binary" else logits
