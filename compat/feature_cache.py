"""Cached base features for Keras feature-extraction recipes (an ftlight extension).

A frozen base followed by a new head (``base.trainable = False``; ``fit`` for many epochs)
recomputes the same base outputs every epoch. :func:`static_prefix` finds the part of a
model that cannot change during ``fit`` -- the longest run of leading layers that hold no
trainable weights and are deterministic in training -- and ``fit`` then serves that part's
outputs, computed once, through :class:`ftlight.callbacks.FeatureCache` (mode ``"auto"``:
on when safe, silently off otherwise).

* Any model with a graph (functional ``Model``, and ``Sequential``, which holds one as in
  Keras; for a stack this is the leading layers up to the first trainable or random one):
  the longest run of static layers at the start of the execution plan
  whose only live output is one tensor (a clean cut), e.g. ``base(inputs, training=False)``
  then ``GlobalAveragePooling2D``, or the layers of a frozen base whose ``output`` feeds
  the head. Multi-input models and other shapes run uncached.

A layer is static when no parameter requires a gradient (trainability is applied by
``compile()``, as in Keras), it has no trainable weights, and in Keras training mode none
of its modules is a BatchNormalization using batch statistics, an active Dropout, a
``Random*`` preprocessing layer or a user-defined layer (which may draw random numbers).
Opt out with ``compile(..., cache_features=False)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compat.layers.base import Layer
from ftlight.callbacks.feature_cache import stochastic_modules


@dataclass
class StaticPrefix:
    """A static leading part of a model: ``features`` then ``head`` equals ``model.forward``
    (internal layout); ``extractor`` holds the prefix's layers."""

    extractor: nn.ModuleList
    features: Callable[[torch.Tensor], torch.Tensor]
    head: Callable[[torch.Tensor], Any]


def _has_weights(layer: nn.Module) -> bool:
    return any(True for _ in layer.parameters()) or any(True for _ in layer.buffers())


def _is_static(layer: Layer, inference: set[int]) -> bool:
    """No trainable weights and deterministic under Keras training-mode semantics."""
    if any(p.requires_grad for p in layer.parameters()) or layer.trainable_weights:
        return False
    training = {id(m): id(m) not in inference for m in layer.modules()}
    for m in layer.modules():
        if not training[id(m)]:
            continue
        if isinstance(m, Layer) and (
            not type(m).__module__.startswith("compat.") or type(m).__name__.startswith("Random")
        ):
            return False
    saved = {m: m.training for m in layer.modules()}
    try:
        for m in layer.modules():
            m.training = training[id(m)]
        return not stochastic_modules(layer)
    finally:
        for m, flag in saved.items():
            m.training = flag


def static_prefix(model: Any, inference: list[nn.Module]) -> StaticPrefix | None:
    """The model's static prefix holding at least one frozen weight, or ``None``."""
    inference_ids = {id(m) for m in inference}
    if getattr(model, "_plan", None) is not None and not model._multi_in:
        return _functional_prefix(model, inference_ids)
    return None


def _functional_prefix(model: Any, inference: set[int]) -> StaticPrefix | None:
    plan = model._plan
    # slot -> index of the last plan step that reads it (outputs count as read at the end)
    last_use: dict[int, int] = {}
    for i, (_, in_ids, _, _) in enumerate(plan):
        for s in in_ids:
            last_use[s] = i
    for s in model._out_ids:
        last_use[s] = len(plan)
    best: tuple[int, int] | None = None  # (steps in the prefix, the one live slot)
    live = {0}  # slots computed so far and still needed later
    for k, (layer, _, out_id, _) in enumerate(plan[:-1]):
        if not _is_static(layer, inference):
            break
        live.add(out_id)
        live = {s for s in live if last_use.get(s, -1) > k}
        if len(live) == 1 and 0 not in live:
            best = (k + 1, next(iter(live)))
    if best is None:
        return None
    cut, slot = best
    steps = plan[:cut]
    if not any(_has_weights(layer) for layer, *_ in steps):
        return None

    def features(x: torch.Tensor) -> torch.Tensor:
        slots: dict[int, Any] = {0: x}
        for layer, in_ids, out_id, multi in steps:
            slots[out_id] = layer.forward([slots[i] for i in in_ids] if multi else slots[in_ids[0]])
        return slots[slot]

    def head(f: torch.Tensor) -> Any:
        slots: dict[int, Any] = {slot: f}
        for layer, in_ids, out_id, multi in plan[cut:]:
            slots[out_id] = layer.forward([slots[i] for i in in_ids] if multi else slots[in_ids[0]])
        outs = [slots[i] for i in model._out_ids]
        return outs if model._multi_out else outs[0]

    layers = list({id(layer): layer for layer, *_ in steps}.values())
    return StaticPrefix(nn.ModuleList(layers), features, head)
