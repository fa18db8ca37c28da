"""``keras.layers.ReLU`` (MobileNet's ``ReLU(6.0)``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from compat.layers.base import Layer, Shape


class ReLU(Layer):
    """``max(x, 0)`` capped at ``max_value``; ``negative_slope`` below ``threshold``."""

    def __init__(
        self,
        max_value: float | None = None,
        negative_slope: float = 0.0,
        threshold: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_value is not None and max_value < 0:
            raise ValueError(
                f"max_value of a ReLU layer cannot be a negative value. Received: {max_value}"
            )
        if negative_slope < 0:
            raise ValueError(
                "negative_slope of a ReLU layer cannot be a negative value. Received: "
                f"{negative_slope}"
            )
        self.max_value = None if max_value is None else float(max_value)
        self.negative_slope = float(negative_slope)
        self.threshold = float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.negative_slope == 0.0 and self.threshold == 0.0:
            y = F.relu(x)
        else:
            y = torch.where(x >= self.threshold, x, self.negative_slope * (x - self.threshold))
        return y if self.max_value is None else torch.clamp(y, max=self.max_value)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape
