"""Recipes from timm and torchvision, on torchvision's ``transforms.v2`` implementations.

* Automatic augmentation policies for training images (``ImageDataModule(auto_augment=...)``):
  ``"randaugment"`` (:class:`torchvision.transforms.v2.RandAugment`, 2 ops at magnitude 9) or
  ``"trivialaugment"`` (:class:`torchvision.transforms.v2.TrivialAugmentWide`). They run on the
  uint8 image after the random-resized crop and flip, before the conversion to float, as in
  timm's and torchvision's reference training transforms.
* Batch mixing for multiclass training (``FineTuner(mixup_alpha=..., cutmix_alpha=...)``):
  :class:`BatchMixer` draws mixup (:class:`~torchvision.transforms.v2.MixUp`) or cutmix
  (:class:`~torchvision.transforms.v2.CutMix`) per batch as timm's ``Mixup`` does
  (``prob``, ``switch_prob``), and returns soft targets.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision.transforms import v2 as T

AUTO_AUGMENT = ("randaugment", "trivialaugment")
_ALIASES = {
    "rand": "randaugment",
    "trivial": "trivialaugment",
    "trivialaugmentwide": "trivialaugment",
    "ta_wide": "trivialaugment",
}


def resolve_auto_augment(value: Any) -> str | None:
    """The canonical policy name (``None``: no policy); a clear error for anything else."""
    if value is None or value is False:
        return None
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "").replace(" ", "")
        if key in ("", "none", "false", "off"):
            return None
        key = _ALIASES.get(key, key)
        if key in AUTO_AUGMENT:
            return key
    raise ValueError(
        f"auto_augment must be None, 'randaugment' or 'trivialaugment'. Received: {value!r}"
    )


def auto_augment_steps(value: str | None) -> list[T.Transform]:
    """The policy's transform (empty list for ``None``), to run on uint8 images."""
    name = resolve_auto_augment(value)
    if name == "randaugment":
        return [T.RandAugment(num_ops=2, magnitude=9)]
    if name == "trivialaugment":
        return [T.TrivialAugmentWide()]
    return []


def _alpha(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0 (0: off). Received: {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite. Received: {value!r}")
    return float(value)


def _probability(name: str, value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
    if not ok:
        raise ValueError(f"{name} must be a probability in [0, 1]. Received: {value!r}")
    return float(value)


class BatchMixer:
    """Mix a batch of images and integer labels: mixup or cutmix, soft targets out.

    With probability ``prob`` a batch is mixed; when both alphas are positive, cutmix is
    chosen with probability ``switch_prob`` and mixup otherwise (timm's ``Mixup`` semantics).
    Image ``i`` is mixed with image ``i - 1`` (torchvision's pairing: the batch must be
    shuffled, as training loaders are). Label smoothing is left to the loss
    (``F.cross_entropy(label_smoothing=...)`` on the soft targets gives timm's smoothed targets).

    Raises :class:`ValueError` naming the setting for negative alphas or probabilities outside
    ``[0, 1]``.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
    ) -> None:
        self.num_classes = int(num_classes)
        self.mixup_alpha = _alpha("mixup_alpha", mixup_alpha)
        self.cutmix_alpha = _alpha("cutmix_alpha", cutmix_alpha)
        self.prob = _probability("mixup_prob", prob)
        self.switch_prob = _probability("mixup_switch_prob", switch_prob)
        self._transforms: dict[str, T.Transform] = {}  # made at first use (not on "meta")

    @property
    def active(self) -> bool:
        """Whether any batch can be mixed."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def _transform(self, kind: str) -> T.Transform:
        if kind not in self._transforms:
            with torch.device("cpu"):  # Beta's parameters: CPU tensors, drawn from the CPU RNG
                if kind == "mixup":
                    made = T.MixUp(alpha=self.mixup_alpha, num_classes=self.num_classes)
                else:
                    made = T.CutMix(alpha=self.cutmix_alpha, num_classes=self.num_classes)
            self._transforms[kind] = made
        return self._transforms[kind]

    def choose(self) -> T.Transform | None:
        """This batch's mixing transform (``None``: leave the batch as it is)."""
        if not self.active or (self.prob < 1 and float(torch.rand(())) >= self.prob):
            return None
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cut = float(torch.rand(())) < self.switch_prob
            return self._transform("cutmix" if cut else "mixup")
        return self._transform("mixup" if self.mixup_alpha > 0 else "cutmix")

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(mixed images, soft targets (B, num_classes))``, or ``None`` for an unmixed batch."""
        if labels.ndim != 1 or labels.is_floating_point():
            raise ValueError(
                "mixup/cutmix need integer class labels of shape (batch,). Received labels of "
                f"shape {tuple(labels.shape)} and dtype {labels.dtype}."
            )
        transform = self.choose()
        if transform is None or len(labels) < 2:
            return None
        try:
            mixed, targets = transform(images, labels)
        except RuntimeError as err:  # one_hot's "Class values must be smaller than num_classes"
            bad = labels[(labels < 0) | (labels >= self.num_classes)]
            if not bad.numel():
                raise
            raise ValueError(
                f"Label {int(bad[0])} out of range for num_classes={self.num_classes} "
                f"(expected labels 0..{self.num_classes - 1})."
            ) from err
        return mixed, targets
