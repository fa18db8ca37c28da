"""Shared by the benchmark scripts: machine facts, library versions, JSON results."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """Cores, threads, load average (1/5/15 min) and the accelerator, now."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def versions() -> dict[str, str]:
    import lightning
    import timm
    import torchvision

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "timm": timm.__version__,
    }
    try:
        import keras

        out["keras"] = keras.__version__
    except ImportError:
        pass
    return out


def write(name: str, record: dict[str, Any], start: dict[str, Any], out: str | None) -> Path:
    """Write ``results/<name>.json`` with the machine at start and end of the run."""
    record = {
        **record,
        "machine": {**start, "load_average_end": machine()["load_average"]},
        "versions": versions(),
    }
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path


class EpochTimer:
    """Lightning callback: wall time of each training epoch and of timed batches."""

    def __new__(cls, warmup: int = 0):
        import lightning as L

        class _Timer(L.Callback):
            def __init__(self) -> None:
                self.epochs: list[float] = []
                self.warmup, self.count, self.t0, self.t_end = warmup, 0, None, None

            def on_train_epoch_start(self, trainer, pl_module) -> None:
                self._e0 = time.perf_counter()

            def on_train_epoch_end(self, trainer, pl_module) -> None:
                self.epochs.append(time.perf_counter() - self._e0)

            def on_train_batch_end(self, trainer, pl_module, *args) -> None:
                self.count += 1
                if self.count == self.warmup:
                    self.t0 = time.perf_counter()
                self.t_end = time.perf_counter()

        return _Timer()


def quiet_trainer(**kw: Any):
    import lightning as L

    defaults = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**defaults, **kw})
