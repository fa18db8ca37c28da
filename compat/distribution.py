"""``keras.distribution``: ``DataParallel`` maps to Lightning's DDP strategy."""

from __future__ import annotations

from typing import Any

_options: dict[str, Any] = {}


class DataParallel:
    """Data parallelism over ``devices`` (a count or a list); run under ``torchrun`` or let
    Lightning launch the processes. Maps to ``Trainer(strategy="ddp", devices=...)``."""

    def __init__(self, device_mesh: Any = None, devices: Any = None, **kwargs: Any) -> None:
        if device_mesh is not None:
            raise NotImplementedError("DataParallel(device_mesh=...)")
        if kwargs:
            raise NotImplementedError(f"DataParallel({', '.join(kwargs)}=...)")
        self.devices = devices if devices is not None else "auto"

    def trainer_options(self) -> dict[str, Any]:
        n = len(self.devices) if isinstance(self.devices, (list, tuple)) else self.devices
        return {"strategy": "ddp", "devices": n}


class ModelParallel:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("distribution.ModelParallel: use ftlight with FSDP")


def set_distribution(value: DataParallel | None) -> None:
    _options.clear()
    if value is not None:
        _options.update(value.trainer_options())


def distribution() -> dict[str, Any]:
    return dict(_options)


def trainer_options() -> dict[str, Any]:
    return dict(_options)


def list_devices(device_type: str | None = None) -> list[str]:
    import torch

    if torch.cuda.is_available() and device_type in (None, "gpu", "cuda"):
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu:0"]
