"""Symbolic tensors and graph nodes for the functional API (Keras's ``map_graph`` order)."""

from __future__ import annotations

import collections
from typing import Any


class KerasTensor:
    """A symbolic tensor: a Keras-layout shape (batch ``None``) and the layer call that made it."""

    def __init__(self, shape: tuple, dtype: str = "float32", name: str | None = None) -> None:
        self.shape = tuple(shape)
        self.dtype = dtype
        self.name = name
        self._keras_history: tuple[Any, int, int] | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"<KerasTensor shape={self.shape}, dtype={self.dtype}, name={self.name}>"

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "A symbolic KerasTensor has no value; it only describes a layer's output. Build a "
            "Model(inputs, outputs) and call predict() on real data."
        )


class Node:
    """One call of a layer on symbolic inputs."""

    def __init__(
        self,
        layer: Any,
        input_tensors: list[KerasTensor],
        outputs: list[KerasTensor],
        *,
        multi_input: bool = False,
        training: bool | None = None,
    ) -> None:
        self.layer = layer
        self.input_tensors = list(input_tensors)
        self.outputs = list(outputs)
        self.multi_input = multi_input
        self.training = training
        index = len(layer._inbound_nodes)
        layer._inbound_nodes.append(self)
        for i, out in enumerate(self.outputs):
            out._keras_history = (layer, index, i)

    @property
    def is_input(self) -> bool:
        return not self.input_tensors

    @property
    def parent_nodes(self) -> list[Node]:
        parents = []
        for kt in self.input_tensors:
            op, index, _ = kt._keras_history
            parents.append(op._inbound_nodes[index])
        return parents


def _build_map(inputs: list[KerasTensor], outputs: list[KerasTensor]):
    finished: set = set()
    in_progress: set = set()
    ordered: list[Node] = []
    op_indices: dict = {}

    def visit(tensor: KerasTensor) -> None:
        if tensor._keras_history is None:
            raise ValueError(f"{tensor} was not produced by a layer; use compat.Input().")
        op, node_index, _ = tensor._keras_history
        node = op._inbound_nodes[node_index]
        if node in finished:
            return
        if not node.is_input and any(tensor is t for t in inputs):
            finished.add(node)
            return
        if node in in_progress:
            raise ValueError(f"Tensor {tensor} from layer '{op.name}' is part of a cycle.")
        if op not in op_indices:
            op_indices[op] = len(op_indices)
        in_progress.add(node)
        if not node.is_input:
            for t in node.input_tensors:
                visit(t)
        finished.add(node)
        in_progress.remove(node)
        ordered.append(node)

    for out in outputs:
        visit(out)
    return ordered, op_indices


def map_graph(inputs: list[KerasTensor], outputs: list[KerasTensor]):
    """Port of Keras's ``map_graph``: ``(nodes in execution order, layers in Keras order)``."""
    ordered, op_indices = _build_map(inputs, outputs)
    in_graph = set(ordered)
    node_depth: dict = {}
    op_depth: dict = {}
    for node in reversed(ordered):
        depth = node_depth.setdefault(node, 0)
        depth = max(depth, op_depth.get(node.layer, 0))
        op_depth[node.layer] = depth
        node_depth[node] = depth
        for parent in node.parent_nodes:
            if parent not in in_graph:
                continue
            node_depth[parent] = max(depth + 1, node_depth.get(parent, 0))
    for t in inputs:
        op, node_index, _ = t._keras_history
        if op not in op_depth:
            node = op._inbound_nodes[node_index]
            if node.is_input:
                op_depth[op] = 0
                op_indices[op] = -1
                node_depth[node] = 0
    nodes_by_depth = collections.defaultdict(list)
    for node, depth in node_depth.items():
        nodes_by_depth[depth].append(node)
    ops_by_depth = collections.defaultdict(list)
    for op, depth in op_depth.items():
        ops_by_depth[depth].append(op)
    layers = []
    for depth in sorted(ops_by_depth, reverse=True):
        layers.extend(sorted(ops_by_depth[depth], key=lambda op: op_indices[op]))
    computable = {id(t) for t in inputs}
    nodes = []
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            for t in node.input_tensors:
                if id(t) not in computable:
                    raise ValueError(
                        f"Graph disconnected: cannot obtain the value of {t} at layer "
                        f"'{node.layer.name}'. Check that the model's inputs are the Input() "
                        "tensors the outputs were built from."
                    )
            computable.update(id(t) for t in node.outputs)
            nodes.append(node)
    names = [op.name for op in layers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"Layer names must be unique in a model. Repeated: {dupes}")
    return nodes, layers
