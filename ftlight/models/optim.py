"""Optimizer parameter groups (per layer group, no decay on norms/biases) and LR schedules."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from typing import Any

import torch
from torch import nn

OPTIMIZERS = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


def split_decay(
    named: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    no_decay_names: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Two groups: weights with decay, and those without: norms and biases (1-D parameters)
    and the names in ``no_decay_names`` (a timm model's ``no_weight_decay()``: position
    embeddings, class tokens; an entry also covers the parameters below it)."""
    skip = tuple(no_decay_names)

    def exempt(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") for s in skip)

    decay, no_decay = [], []
    for name, param in named:
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or exempt(name) else decay).append(param)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(name: str, groups: list[dict[str, Any]], lr: float, **kwargs: Any):
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}. Expected one of {sorted(OPTIMIZERS)}.")
    if key == "sgd":
        kwargs.setdefault("momentum", 0.9)
    else:
        kwargs.pop("momentum", None)
    return OPTIMIZERS[key](groups, lr=lr, **kwargs)


def warmup_cosine(total_steps: int, warmup_steps: int, min_factor: float = 0.0):
    """LambdaLR factor: linear warm-up to 1, then cosine down to ``min_factor``."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_scheduler(
    name: str | None, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> dict[str, Any] | None:
    """``None``, ``"cosine"`` (with warm-up) or ``"onecycle"``, stepped every batch."""
    if name is None or name == "none":
        return None
    if name == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(total_steps, warmup_steps)
        )
    elif name == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(total_steps, 2),
            # OneCycleLR needs at least two steps in each phase.
            pct_start=min(max(warmup_steps, 2, 0.05 * total_steps) / max(total_steps, 4), 0.5),
        )
    else:
        raise ValueError(f"Unknown scheduler {name!r}. Expected None, 'cosine' or 'onecycle'.")
    return {"scheduler": sched, "interval": "step"}
