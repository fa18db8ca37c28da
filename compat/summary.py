"""``Model.summary()`` text: one row per layer (name, type, output shape, params), then
Keras's Total / Trainable / Non-trainable lines (same numbers and size format)."""

from __future__ import annotations

from typing import Any

import numpy as np


def readable_memory_size(num_bytes: float) -> str:
    units = ["B", "KB", "MB", "GB", "TB", "PB"]
    i = 0
    while num_bytes >= 1024 and i < len(units) - 1:
        num_bytes /= 1024
        i += 1
    return f"{num_bytes:.2f} {units[i]}"


def _count(weights: list) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights))


def render_summary(model: Any, line_length: int = 80, show_trainable: bool = False) -> str:
    shapes = model._layer_output_shapes()
    rows = []
    for layer in model.layers:
        shape = shapes.get(id(layer), "?")
        params = _count(layer.weights) if layer.built else 0
        rows.append(
            (
                f"{layer.name} ({type(layer).__name__})",
                shape,
                f"{params:,}",
                ("Y" if layer.trainable else "N") if layer.weights else "-",  # as Keras
            )
        )
    header = ("Layer (type)", "Output Shape", "Param #", "Trainable")
    cols = 4 if show_trainable else 3
    widths = [max(len(r[i]) for r in [header, *rows]) + 2 for i in range(cols)]
    widths[0] = max(widths[0], line_length - sum(widths[1:]) - cols - 1)

    def fmt(r: tuple) -> str:
        return (
            "|"
            + "|".join(
                (f" {r[i]:<{widths[i] - 1}}" if i < 2 else f"{r[i]:>{widths[i] - 1}} ")
                for i in range(cols)
            )
            + "|"
        )

    sep = "+" + "+".join("-" * w for w in widths[:cols]) + "+"
    opt = getattr(model, "optimizer", None)
    opt_params = opt.count_keras_variables() if opt is not None else 0
    total = _count(model.weights) + opt_params
    trainable = _count(model.trainable_weights)
    non_trainable = _count(model.non_trainable_weights)
    lines = [f'Model: "{model.name}"', sep, fmt(header), sep.replace("-", "=")]
    lines += [fmt(r) for r in rows]
    lines += [
        sep,
        f" Total params: {total:,} ({readable_memory_size(total * 4)})",
        f" Trainable params: {trainable:,} ({readable_memory_size(trainable * 4)})",
        f" Non-trainable params: {non_trainable:,} ({readable_memory_size(non_trainable * 4)})",
    ]
    if opt_params:
        lines.append(f" Optimizer params: {opt_params:,} ({readable_memory_size(opt_params * 4)})")
    return "\n".join(lines) + "\n"
