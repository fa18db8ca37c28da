"""Preprocessing and augmentation layers (augmentations are active only in training)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from compat.layers.base import Layer, Shape
from compat.layers.core import _expect_rank


class Rescaling(Layer):
    def __init__(self, scale: float, offset: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.offset = float(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape


class Resizing(Layer):
    def __init__(
        self,
        height: int,
        width: int,
        interpolation: str = "bilinear",
        crop_to_aspect_ratio: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if crop_to_aspect_ratio:
            raise NotImplementedError("Resizing(crop_to_aspect_ratio=True)")
        if interpolation not in ("bilinear", "nearest", "bicubic"):
            raise NotImplementedError(f"Resizing(interpolation={interpolation!r})")
        self.height, self.width, self.interpolation = int(height), int(width), interpolation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kw = {} if self.interpolation == "nearest" else {"align_corners": False, "antialias": False}
        return F.interpolate(x, size=(self.height, self.width), mode=self.interpolation, **kw)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        _expect_rank(self, input_shape, 4)
        return (None, self.height, self.width, input_shape[-1])


class _RandomAffine(Layer):
    """Per-sample random affine transform in training; identity at inference.

    Supports Keras's defaults only (``fill_mode="reflect"``, ``interpolation="bilinear"``);
    anything else raises ``NotImplementedError`` instead of being ignored.
    """

    _training_default = True

    def __init__(
        self,
        fill_mode: str = "reflect",
        interpolation: str = "bilinear",
        seed: int | None = None,
        fill_value: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        if fill_mode != "reflect":
            raise NotImplementedError(f"{name}(fill_mode={fill_mode!r})")
        if interpolation != "bilinear":
            raise NotImplementedError(f"{name}(interpolation={interpolation!r})")

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        _expect_rank(self, input_shape, 4)
        return input_shape

    def _matrices(self, n: int, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        theta = self._matrices(x.shape[0], x.device).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(
            x, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )


def _factor_range(factor: Any, what: str) -> tuple[float, float]:
    if isinstance(factor, (int, float)):
        return (-abs(float(factor)), abs(float(factor)))
    if isinstance(factor, (tuple, list)) and len(factor) == 2:
        return (float(factor[0]), float(factor[1]))
    raise ValueError(f"{what} must be a float or a tuple of 2 floats. Received: {factor!r}")


class RandomFlip(Layer):
    _training_default = True

    def __init__(
        self, mode: str = "horizontal_and_vertical", seed: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("horizontal", "vertical", "horizontal_and_vertical"):
            raise ValueError(
                f"RandomFlip layer {self.name} received an unknown mode argument {mode!r}"
            )
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        n = x.shape[0]
        if "horizontal" in self.mode:
            m = (torch.rand(n, device=x.device) < 0.5).view(n, 1, 1, 1)
            x = torch.where(m, x.flip(3), x)
        if "vertical" in self.mode:
            m = (torch.rand(n, device=x.device) < 0.5).view(n, 1, 1, 1)
            x = torch.where(m, x.flip(2), x)
        return x

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape


class RandomRotation(_RandomAffine):
    """``factor`` is a fraction of a full turn (0.1 -> up to 36 degrees), as in Keras."""

    def __init__(
        self,
        factor: Any,
        fill_mode: str = "reflect",
        interpolation: str = "bilinear",
        seed: int | None = None,
        fill_value: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(fill_mode, interpolation, seed, fill_value, **kwargs)
        self.factor = _factor_range(factor, "factor")

    def _matrices(self, n: int, device: torch.device) -> torch.Tensor:
        lo, hi = self.factor
        angle = (torch.rand(n, device=device) * (hi - lo) + lo) * 2 * math.pi
        cos, sin = angle.cos(), angle.sin()
        zero = torch.zeros_like(cos)
        return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)


class RandomZoom(_RandomAffine):
    """Negative factors zoom in, positive zoom out (Keras's convention)."""

    def __init__(
        self,
        height_factor: Any,
        width_factor: Any = None,
        fill_mode: str = "reflect",
        interpolation: str = "bilinear",
        seed: int | None = None,
        fill_value: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(fill_mode, interpolation, seed, fill_value, **kwargs)
        self.height_factor = _factor_range(height_factor, "height_factor")
        self.width_factor = (
            _factor_range(width_factor, "width_factor") if width_factor is not None else None
        )

    def _matrices(self, n: int, device: torch.device) -> torch.Tensor:
        lo, hi = self.height_factor
        zh = 1 + torch.rand(n, device=device) * (hi - lo) + lo
        if self.width_factor is None:
            zw = zh
        else:
            lo, hi = self.width_factor
            zw = 1 + torch.rand(n, device=device) * (hi - lo) + lo
        zero = torch.zeros_like(zh)
        return torch.stack([torch.stack([zw, zero, zero], 1), torch.stack([zero, zh, zero], 1)], 1)
