"""The preprocessing that belongs to a set of weights: input size, interpolation, crop, mean/std."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing that belongs to a set of weights (from timm's ``pretrained_cfg``)."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop: bool = True  # eval: resize to size/crop_pct then centre-crop; False: resize only

    @property
    def image_size(self) -> int:
        return int(self.input_size[-1])

    def with_image_size(self, size: int) -> DataConfig:
        return dataclasses.replace(self, input_size=(3, int(size), int(size)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        return cls(
            input_size=tuple(d["input_size"]),
            interpolation=str(d["interpolation"]),
            crop_pct=float(d["crop_pct"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            crop=bool(d.get("crop", True)),
        )
