"""Preprocessing and augmentation layers (augmentations are active only in training)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from compat.layers.base import Layer, SeedGenerator, Shape, Variable
from compat.layers.core import _expect_rank


class Rescaling(Layer):
    """``x * scale + offset``; ``scale``/``offset`` a number or (as Keras) a list that
    broadcasts against the channels-last input, e.g. one value per channel."""

    def __init__(self, scale: Any, offset: Any = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = _rescaling_value(scale, "scale")
        self.offset = _rescaling_value(offset, "offset")
        # per-channel values as tensors, made once per (dtype, device, rank), not per batch
        self._operands: dict[tuple, tuple[Any, Any]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.dtype, x.device, x.ndim)
        operands = self._operands.get(key)
        if operands is None:
            operands = self._operands[key] = (
                _broadcast(self.scale, x),
                _broadcast(self.offset, x),
            )
        return x * operands[0] + operands[1]

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


def _rescaling_value(value: Any, what: str) -> float | list[Any]:
    """A number as a float; a (nested) list or tuple of numbers kept as a list (Keras's
    config holds it so)."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (list, tuple)):
        arr = np.asarray(value, dtype=object)
        if arr.size and all(
            isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in arr.flat
        ):
            return np.asarray(value, dtype="float64").tolist() if arr.ndim > 1 else list(value)
    raise ValueError(
        f"Rescaling({what}=...) takes a number or a list of numbers (one per channel, say). "
        f"Received: {what}={value!r}"
    )


def _broadcast(value: float | list[Any], x: torch.Tensor) -> Any:
    """``value`` broadcast as Keras broadcasts it against the channels-last input, in the
    internal layout of ``x`` (NCHW for images)."""
    if isinstance(value, float):
        return value
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if x.ndim == 4:
        t = t.reshape((1,) * (4 - t.ndim) + tuple(t.shape)).permute(0, 3, 1, 2)
    return t


class Resizing(Layer):
    """``keras.ops.image.resize`` semantics (torch backend: ``nearest`` is torch's
    ``nearest-exact``; no antialias); ``crop_to_aspect_ratio`` crops the centred window."""

    def __init__(
        self,
        height: int,
        width: int,
        interpolation: str = "bilinear",
        crop_to_aspect_ratio: bool = False,
        pad_to_aspect_ratio: bool = False,
        fill_mode: str = "constant",
        fill_value: float = 0.0,
        antialias: bool = False,
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for arg, value, default in (
            ("pad_to_aspect_ratio", pad_to_aspect_ratio, False),
            ("antialias", antialias, False),
            ("data_format", data_format, None),
        ):
            if value != default and not (arg == "data_format" and value == "channels_last"):
                raise NotImplementedError(f"Resizing({arg}={value!r})")
        if interpolation not in ("bilinear", "nearest", "bicubic"):
            raise NotImplementedError(f"Resizing(interpolation={interpolation!r})")
        self.height, self.width, self.interpolation = int(height), int(width), interpolation
        self.crop_to_aspect_ratio = crop_to_aspect_ratio
        self.fill_mode, self.fill_value = fill_mode, fill_value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop_to_aspect_ratio:
            x = _crop_to_aspect(x, self.height, self.width)
        return _resize(x, self.height, self.width, self.interpolation)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        _expect_rank(self, input_shape, 4)
        return (input_shape[0], self.height, self.width, input_shape[-1])


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
        self.fill_mode, self.interpolation, self.fill_value = fill_mode, interpolation, fill_value
        self.seed, self._rng = seed, SeedGenerator(seed)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "data_format": "channels_last",
            "fill_mode": self.fill_mode,
            "fill_value": self.fill_value,
            "interpolation": self.interpolation,
            "seed": self.seed,
        }

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


_ZOOM_FACTOR_ERROR = (
    "The `height_factor` and `width_factor` arguments should be a number (or a list of two "
    "numbers) in the range (-1.0, 1.0]. "
)


def _zoom_factor(factor: Any, what: str) -> tuple[float, float]:
    """Keras's ``RandomZoom._set_factor``: numbers and pairs in ``(-1, 1]``, pairs sorted."""
    if isinstance(factor, (tuple, list)):
        if len(factor) != 2:
            raise ValueError(_ZOOM_FACTOR_ERROR + f"Received: {what}={factor}")
        values = list(factor)
    elif isinstance(factor, (int, float)):
        values = [factor]  # Keras checks the number as given
    else:
        raise ValueError(_ZOOM_FACTOR_ERROR + f"Received: {what}={factor}")
    for v in values:
        if v > 1.0 or v <= -1.0:
            raise ValueError(_ZOOM_FACTOR_ERROR + f"Received: input_number={v}")
    if isinstance(factor, (tuple, list)):
        lower, upper = sorted(factor)
        return float(lower), float(upper)
    return -abs(float(factor)), abs(float(factor))


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
        self.seed, self._rng = seed, SeedGenerator(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        n = x.shape[0]
        if "horizontal" in self.mode:
            m = (self._rng.rand(n, device=x.device) < 0.5).view(n, 1, 1, 1)
            x = torch.where(m, x.flip(3), x)
        if "vertical" in self.mode:
            m = (self._rng.rand(n, device=x.device) < 0.5).view(n, 1, 1, 1)
            x = torch.where(m, x.flip(2), x)
        return x

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "data_format": "channels_last",
            "seed": self.seed,
            "mode": self.mode,
        }


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
        self.factor = keras_factor(factor, (-1, 1))  # sorted and range-checked, as Keras

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "factor": self.factor}

    def _matrices(self, n: int, device: torch.device) -> torch.Tensor:
        lo, hi = self.factor
        angle = (self._rng.rand(n, device=device) * (hi - lo) + lo) * 2 * math.pi
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
        self._given = {"height_factor": height_factor, "width_factor": width_factor}
        self.height_factor = _zoom_factor(height_factor, "height_factor")
        self.width_factor = (
            _zoom_factor(width_factor, "width_factor") if width_factor is not None else None
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._given}  # the factors as given, as Keras

    def _matrices(self, n: int, device: torch.device) -> torch.Tensor:
        lo, hi = self.height_factor
        zh = 1 + self._rng.rand(n, device=device) * (hi - lo) + lo
        if self.width_factor is None:
            zw = zh
        else:
            lo, hi = self.width_factor
            zw = 1 + self._rng.rand(n, device=device) * (hi - lo) + lo
        zero = torch.zeros_like(zh)
        return torch.stack([torch.stack([zw, zero, zero], 1), torch.stack([zero, zh, zero], 1)], 1)


def keras_factor(factor: Any, bounds: tuple[float, float], what: str = "factor"):
    """Keras's ``_set_factor``: a number or a pair -> ``(lower, upper)`` within ``bounds``."""
    msg = (
        f"The `{what}` argument should be a number (or a list of two numbers) in the range "
        f"[{bounds[0]}, {bounds[1]}]. Received: {what}={factor}"
    )
    if isinstance(factor, (tuple, list)):
        if len(factor) != 2 or factor[0] > bounds[1] or factor[1] < bounds[0]:
            raise ValueError(msg)
        lower, upper = sorted(factor)
    elif isinstance(factor, (int, float)):
        if factor < bounds[0] or factor > bounds[1]:
            raise ValueError(msg)
        factor = abs(factor)
        lower, upper = max(-factor, bounds[0]), factor
    else:
        raise ValueError(msg)
    return lower, upper


def _uniform(
    rng: SeedGenerator, n: int, lower: float, upper: float, device: torch.device
) -> torch.Tensor:
    return rng.rand(n, device=device) * (upper - lower) + lower


def _crop_to_aspect(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The largest centred window of ``x`` (NCHW) with the aspect ratio ``height:width``."""
    h, w = x.shape[2], x.shape[3]
    crop_h = max(min(h, int(float(w * height) / width)), 1)
    crop_w = max(min(w, int(float(h * width) / height)), 1)
    top, left = int(float(h - crop_h) / 2), int(float(w - crop_w) / 2)
    return x[:, :, top : top + crop_h, left : left + crop_w]


def _resize(x: torch.Tensor, height: int, width: int, interpolation: str) -> torch.Tensor:
    """``keras.ops.image.resize`` on the torch backend (no antialias)."""
    if tuple(x.shape[2:]) == (height, width):
        return x
    mode = {"bilinear": "bilinear", "nearest": "nearest-exact", "bicubic": "bicubic"}[interpolation]
    align = False if mode in ("bilinear", "bicubic") else None
    return F.interpolate(x, size=(height, width), mode=mode, align_corners=align)


class CenterCrop(Layer):
    """Crops the centre ``height x width`` window (Keras: larger inputs are cropped, smaller
    ones cropped to the aspect ratio and resized)."""

    def __init__(
        self, height: int, width: int, data_format: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise NotImplementedError(f"CenterCrop(data_format={data_format!r})")
        self.height, self.width = int(height), int(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        if h < self.height or w < self.width:
            return _resize(
                _crop_to_aspect(x, self.height, self.width), self.height, self.width, "bilinear"
            )
        top, left = (h - self.height) // 2, (w - self.width) // 2
        return x[:, :, top : top + self.height, left : left + self.width]

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        _expect_rank(self, input_shape, 4)
        return (input_shape[0], self.height, self.width, input_shape[-1])


class RandomCrop(Layer):
    """A random ``height x width`` window (one offset per batch) in training; inputs not
    larger than the window are cropped to its aspect ratio and resized. At inference the
    input passes unchanged, as Keras 3.15's RandomCrop does."""

    _training_default = True

    def __init__(
        self,
        height: int,
        width: int,
        seed: int | None = None,
        data_format: str | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if data_format not in (None, "channels_last"):
            raise NotImplementedError(f"RandomCrop(data_format={data_format!r})")
        self.height, self.width, self.seed = int(height), int(width), seed
        self._rng = SeedGenerator(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        if not self.training:
            return x
        if h > self.height and w > self.width:
            top = self._rng.randint(0, h - self.height + 1)
            left = self._rng.randint(0, w - self.width + 1)
            return x[:, :, top : top + self.height, left : left + self.width]
        return _resize(
            _crop_to_aspect(x, self.height, self.width), self.height, self.width, "bilinear"
        )

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        _expect_rank(self, input_shape, 4)
        return (input_shape[0], self.height, self.width, input_shape[-1])


class RandomTranslation(_RandomAffine):
    """Shifts each image by a random fraction of its height / width (positive: down/right)."""

    def __init__(
        self,
        height_factor: Any,
        width_factor: Any,
        fill_mode: str = "reflect",
        interpolation: str = "bilinear",
        seed: int | None = None,
        fill_value: float = 0.0,
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        if data_format not in (None, "channels_last"):
            raise NotImplementedError(f"RandomTranslation(data_format={data_format!r})")
        super().__init__(fill_mode, interpolation, seed, fill_value, **kwargs)
        for what, value in (("height_factor", height_factor), ("width_factor", width_factor)):
            if not isinstance(value, (int, float, tuple, list)) or (
                isinstance(value, (tuple, list)) and len(value) != 2
            ):
                raise ValueError(
                    "The `factor` argument should be a number (or a list of two numbers) "
                    f"in the range [-1.0, 1.0]. Received: {what}={value}"
                )
            for v in value if isinstance(value, (tuple, list)) else [value]:
                if not -1.0 <= v <= 1.0:
                    raise ValueError(
                        "The `factor` argument should be a number (or a list of two numbers) "
                        f"in the range [-1.0, 1.0]. Received: input_number={v}"
                    )
        self.height_lower, self.height_upper = _translation_factor(height_factor)
        self.width_lower, self.width_upper = _translation_factor(width_factor)
        self._given = {"height_factor": height_factor, "width_factor": width_factor}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._given}  # the factors as given, as Keras

    def _matrices(self, n: int, device: torch.device) -> torch.Tensor:
        dy = _uniform(self._rng, n, self.height_lower, self.height_upper, device)
        dx = _uniform(self._rng, n, self.width_lower, self.width_upper, device)
        one, zero = torch.ones_like(dx), torch.zeros_like(dx)
        # normalised coordinates span 2 per image side: a shift of f * size is -2 f
        return torch.stack(
            [torch.stack([one, zero, -2 * dx], 1), torch.stack([zero, one, -2 * dy], 1)], 1
        )


def _translation_factor(factor: Any) -> tuple[float, float]:
    if isinstance(factor, (tuple, list)):
        if len(factor) != 2:
            raise ValueError(f"Expected a float or a pair of floats. Received: {factor}")
        lower, upper = sorted(factor)
        return float(lower), float(upper)
    return -abs(float(factor)), abs(float(factor))


class RandomContrast(Layer):
    """Per image: ``(x - mean) * f + mean`` clipped to ``value_range``, ``f`` uniform in
    ``[1 - lower, 1 + upper]`` with Keras's factor parsing."""

    _training_default = True

    def __init__(
        self, factor: Any, value_range: Any = (0, 255), seed: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.factor = keras_factor(factor, (0, 1))
        self.value_range, self.seed = value_range, seed  # as given, as Keras (checked in use)
        self._rng = SeedGenerator(seed)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "data_format": "channels_last",
            "factor": self.factor,
            "value_range": self.value_range,
            "seed": self.seed,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        f = _uniform(self._rng, x.shape[0], 1.0 - self.factor[0], 1.0 + self.factor[1], x.device)
        mean = x.mean(dim=(2, 3), keepdim=True)
        out = (x - mean) * f.view(-1, 1, 1, 1).to(x.dtype) + mean
        return out.clamp(self.value_range[0], self.value_range[1])

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape


class RandomBrightness(Layer):
    """Per image: adds ``delta * (value_range[1] - value_range[0])``, ``delta`` uniform in
    Keras's factor range, then clips to ``value_range``."""

    _training_default = True

    def __init__(
        self, factor: Any, value_range: Any = (0, 255), seed: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
            raise ValueError(
                "The `value_range` argument should be a list of two numbers. "
                f"Received: value_range={value_range}"
            )
        self.factor = keras_factor(factor, (-1, 1))
        self.value_range, self.seed = tuple(sorted(value_range)), seed
        self._rng = SeedGenerator(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        delta = _uniform(self._rng, x.shape[0], self.factor[0], self.factor[1], x.device)
        delta = delta * (self.value_range[1] - self.value_range[0])
        out = x + delta.view(-1, 1, 1, 1).to(x.dtype)
        return out.clamp(self.value_range[0], self.value_range[1])

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape


class Normalization(Layer):
    """``(x - mean) / max(sqrt(variance), 1e-7)`` per feature of the last axis (Keras);
    ``adapt(data)`` computes the mean and variance; ``invert=True`` undoes it.

    ``axis`` is Keras's (an int, a list/tuple of ints, or ``None`` for one mean and variance
    over everything); compat keeps the channels axis (the last) or none. Without ``mean`` and
    ``variance`` the layer holds Keras's non-trainable variables ``mean``, ``variance`` and
    ``count`` (what ``adapt`` sets and Keras's files store)."""

    def __init__(
        self,
        axis: int | list[int] | tuple[int, ...] | None = -1,
        mean: Any = None,
        variance: Any = None,
        invert: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if axis is None:
            axis = ()
        elif isinstance(axis, int) and not isinstance(axis, bool):
            axis = (axis,)
        elif isinstance(axis, (list, tuple)) and all(
            isinstance(a, int) and not isinstance(a, bool) for a in axis
        ):
            axis = tuple(axis)
        else:
            raise ValueError(f"Normalization(axis=...): an int, ints or None; received {axis!r}")
        if len(axis) > 1:
            raise NotImplementedError(
                f"Normalization(axis={axis}): compat keeps only the last (channels) axis or none"
            )
        if (mean is None) != (variance is None):
            raise ValueError(
                "When setting values directly, both `mean` and `variance` must be set. "
                f"Received: mean={mean} and variance={variance}"
            )
        if mean is not None:
            if np.shape(mean) != np.shape(variance):
                raise ValueError(
                    "When setting values directly, `mean` and `variance` must have the same "
                    f"shape. Received: mean shape {np.shape(mean)} and variance shape "
                    f"{np.shape(variance)}"
                )
            if len(np.shape(mean)) > len(axis):
                raise ValueError(
                    f"The rank of `mean` must be less than or equal to the number of axes "
                    f"({len(axis)}). Received: mean shape {np.shape(mean)} for axis {axis}"
                )
        self.axis, self.invert = axis, invert
        self.input_mean, self.input_variance = mean, variance
        self.stats: torch.nn.Module | None = None

    def build(self, input_shape: Shape) -> None:
        ndim = len(input_shape)
        if any(a < -ndim or a >= ndim for a in self.axis):
            raise ValueError(
                "All `axis` values must be in the range [-ndim, ndim). "
                f"Received inputs with ndim={ndim}, while axis={self.axis}"
            )
        if any(a % ndim != ndim - 1 for a in self.axis):
            raise NotImplementedError(
                f"Normalization(axis={self.axis}) on {ndim}-d inputs: compat keeps only the "
                f"last (channels) axis ({ndim - 1} or -1) or none (axis=None)"
            )
        shape = (int(input_shape[-1]),) if self.axis else ()
        stats = torch.nn.Module()
        if self.input_mean is not None:
            mean = torch.as_tensor(np.broadcast_to(self.input_mean, shape).copy()).float()
            var = torch.as_tensor(np.broadcast_to(self.input_variance, shape).copy()).float()
        else:
            mean, var = torch.zeros(shape), torch.ones(shape)
        stats.register_buffer("mean", mean)
        stats.register_buffer("variance", var)
        stats.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.stats = stats

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "axis": self.axis,
            "invert": self.invert,
            "mean": np.array(self.input_mean).tolist(),
            "variance": np.array(self.input_variance).tolist(),
        }

    def adapt(self, data: Any, steps: int | None = None) -> None:
        """Mean and (biased) variance of ``data`` (an array, or batches of arrays) per
        feature of the last axis."""
        if steps is not None:
            raise NotImplementedError("Normalization.adapt(steps=...)")
        if isinstance(data, (np.ndarray, torch.Tensor, list)):
            batches = [np.asarray(data, dtype="float64")]
        else:
            batches = [np.asarray(b[0] if isinstance(b, tuple) else b, "float64") for b in data]
        features = batches[0].shape[-1] if self.axis else 1  # axis=None: one mean
        flat = np.concatenate([b.reshape(-1, features) for b in batches])
        self._maybe_build((None, *batches[0].shape[1:]))
        shape = self.stats.mean.shape
        with torch.no_grad():
            self.stats.mean.copy_(torch.from_numpy(flat.mean(0)).float().reshape(shape))
            self.stats.variance.copy_(torch.from_numpy(flat.var(0)).float().reshape(shape))
            # Keras's adapt() leaves `count` as it is (0 unless a file set it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1) if x.ndim == 4 else (1,) * (x.ndim - 1) + (-1,)
        mean = self.stats.mean.view(shape).to(x.dtype)
        std = torch.clamp(self.stats.variance.sqrt(), min=1e-7).view(shape).to(x.dtype)
        return mean + x * std if self.invert else (x - mean) / std

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def _own_variables(self) -> list[Variable]:
        if self.stats is None or self.input_mean is not None:
            return []
        return [
            Variable(self, name, self.stats, name, trainable=False)
            for name in ("mean", "variance", "count")
        ]
