"""``LayerNormalization`` (Keras's): normalises each sample over its last axis."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compat.layers.base import Layer, Shape, Variable
from compat.layers.core import _is_list


class LayerNormalization(Layer):
    """Keras's ``LayerNormalization`` over the last (channels) axis: ``gamma * (x - mean) /
    sqrt(var + epsilon) + beta`` per sample and position; weights ``gamma``, ``beta``."""

    def __init__(
        self,
        axis: int | list[int] = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("rms_scaling", False):
            raise NotImplementedError(
                "LayerNormalization(rms_scaling=True) (deprecated in Keras: use RMSNormalization)"
            )
        super().__init__(**kwargs)
        if not isinstance(axis, (int, list, tuple)):
            raise TypeError(
                "Expected an int or a list/tuple of ints for the argument 'axis', but "
                f"received: {axis!r}"
            )
        if ([axis] if isinstance(axis, int) else list(axis)) != [-1]:
            raise NotImplementedError(
                f"LayerNormalization(axis={axis!r}): only the last axis (-1) is supported"
            )
        if (beta_initializer, gamma_initializer) != ("zeros", "ones"):
            raise NotImplementedError("LayerNormalization with non-default initializers")
        for arg, value in (
            ("beta_regularizer", beta_regularizer),
            ("gamma_regularizer", gamma_regularizer),
            ("beta_constraint", beta_constraint),
            ("gamma_constraint", gamma_constraint),
        ):
            if value is not None:
                raise NotImplementedError(f"LayerNormalization({arg}=...)")
        self.axis: int | list[int] = axis if isinstance(axis, int) else list(axis)
        self.epsilon = float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.norm: nn.LayerNorm | None = None

    def build(self, input_shape: Shape) -> None:
        if input_shape[-1] is None:
            raise ValueError(
                f"LayerNormalization '{self.name}' needs a known last dimension. Received: "
                f"input_shape={input_shape}"
            )
        self.norm = nn.LayerNorm(int(input_shape[-1]), eps=self.epsilon, bias=self.center)
        if not self.scale:
            self.norm.weight = None
        self.axis = [-1]  # Keras's built form

    @classmethod
    def from_torch(cls, norm: nn.LayerNorm, *, name: str) -> LayerNormalization:
        """Wrap a torch ``LayerNorm`` over channels (timm's ``LayerNorm2d`` too: the channels
        of an NCHW map), sharing its parameters."""
        if len(norm.normalized_shape) != 1:
            raise ValueError(
                f"{name}: expected a LayerNorm over one (channel) axis, received "
                f"normalized_shape={tuple(norm.normalized_shape)}"
            )
        layer = cls(
            epsilon=norm.eps,
            center=norm.bias is not None,
            scale=norm.weight is not None,
            name=name,
        )
        layer.norm = norm
        layer.axis = [-1]
        layer.built = True
        return layer

    def _check_input_shape(self, input_shape: Shape) -> None:
        channels = self.norm.normalized_shape[0]
        if _is_list(input_shape) or input_shape[-1] != channels:
            raise ValueError(
                f"Input of layer '{self.name}' is incompatible: expected axis -1 of size "
                f"{channels}, received input with shape {input_shape}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm
        if x.ndim == 4:  # NCHW inside: normalise over channels
            x = x.permute(0, 2, 3, 1)
            out = F.layer_norm(x, n.normalized_shape, n.weight, n.bias, n.eps)
            return out.permute(0, 3, 1, 2)
        return F.layer_norm(x, n.normalized_shape, n.weight, n.bias, n.eps)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def _own_variables(self) -> list[Variable]:
        if self.norm is None:
            return []
        out = []
        if self.norm.weight is not None:
            out.append(Variable(self, "gamma", self.norm, "weight", trainable=True))
        if self.norm.bias is not None:
            out.append(Variable(self, "beta", self.norm, "bias", trainable=True))
        return out

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "axis": self.axis,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "rms_scaling": False,
        }


__all__ = ["LayerNormalization"]
