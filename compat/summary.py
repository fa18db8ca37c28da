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


def _output_shape(model: Any, layer: Any) -> str:
    if getattr(layer, "_inbound_nodes", None):
        for node in layer._inbound_nodes:
            return str(node.outputs[0].shape)
    shape = getattr(model, "_shapes_for_summary", {}).get(id(layer))
    return str(shape) if shape is not None else "?"


def _sequential_shapes(model: Any) -> dict[int, Any]:
    out: dict[int, Any] = {}
    inp = getattr(model, "_input_layer", None)
    if inp is None:
        return out
    shape = (None, *inp.batch_shape[1:])
    for layer in model.layers:
        shape = layer.compute_output_shape(shape)
        out[id(layer)] = shape
    return out


def render_summary(model: Any, line_length: int = 80, show_trainable: bool = False) -> str:
    from compat.models import Sequential

    is_seq = isinstance(model, Sequential)
    shapes = _sequential_shapes(model) if is_seq else {}
    rows = []
    for layer in model.layers:
        if is_seq:
            shape = str(shapes.get(id(layer), "?"))
        elif model._graph_layers is not None and layer._inbound_nodes:
            shape = _graph_output_shape(model, layer)
        else:
            shape = "?"
        params = _count(layer.weights) if layer.built else 0
        rows.append(
            (
                f"{layer.name} ({type(layer).__name__})",
                shape,
                f"{params:,}",
                "Y" if layer.trainable else "N",
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


def _graph_output_shape(model: Any, layer: Any) -> str:
    graph_ids = {id(n) for n in layer._inbound_nodes}
    for node in layer._inbound_nodes:
        if id(node) in graph_ids and all(t._keras_history is not None for t in node.outputs):
            return str(node.outputs[0].shape)
    return "?"
