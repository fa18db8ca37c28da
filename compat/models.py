"""``keras.models``: functional ``Model`` and ``Sequential`` as torch modules.

``compile``/``fit``/``evaluate``/``predict`` keep Keras's signatures; ``Model`` inherits them
from :class:`compat.engine.TorchTrainer` (a LightningModule driven by ``lightning.Trainer``).
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch
from torch import nn

from compat import backend
from compat.engine import TorchTrainer
from compat.graph import KerasTensor, map_graph
from compat.layers.base import Layer, Shape, _as_tensor, _is_shape_list, set_modes
from compat.layers.core import InputLayer


class Model(TorchTrainer, Layer):
    """Functional model ``Model(inputs, outputs)`` (``keras.Model``); ``compile`` / ``fit`` /
    ``evaluate`` / ``predict`` come from the trainer mixins (:mod:`compat.trainer`,
    :mod:`compat.engine`), as Keras's ``Model`` inherits its trainers."""

    def __init__(
        self,
        inputs: Any = None,
        outputs: Any = None,
        name: str | None = None,
        trainable: bool = True,
        **kwargs: Any,
    ) -> None:
        if (inputs is None or outputs is None) and type(self) is Model:
            raise NotImplementedError(
                "Subclassed keras.Model (overriding call()); build models with "
                "Model(inputs, outputs) or Sequential."
            )
        if name is None:
            name = backend.unique_name(
                "functional" if type(self) is Model else backend.to_snake_case(type(self).__name__)
            )
        super().__init__(name=name, trainable=trainable, **kwargs)
        if inputs is not None and outputs is not None:
            self._init_graph(inputs, outputs)

    # ----- graph ---------------------------------------------------------------------
    def _init_graph(self, inputs: Any, outputs: Any, *, register: bool = True) -> None:
        """Map the graph from ``inputs`` to ``outputs`` into an execution plan; ``register``
        makes its layers submodules (Sequential registers them in its own stack)."""
        self._struct_in = isinstance(inputs, (list, tuple))
        self._struct_out = isinstance(outputs, (list, tuple))
        flat_in = list(inputs) if self._struct_in else [inputs]
        flat_out = list(outputs) if self._struct_out else [outputs]
        # Keras runs a one-element list as the tensor itself (``model.input`` stays a list)
        self._multi_in, self._multi_out = len(flat_in) > 1, len(flat_out) > 1
        for t in flat_in + flat_out:
            if not isinstance(t, KerasTensor):
                raise TypeError(
                    "Model(inputs, outputs) expects symbolic tensors made with compat.Input() "
                    f"and compat layers. Received: {t!r}"
                )
        self._inputs, self._outputs = flat_in, flat_out
        nodes, layers = map_graph(flat_in, flat_out)
        self._layer_list = layers
        if register:
            # torch's module names cannot hold "." (Keras's "mobilenetv2_1.00_224" can)
            self._graph_layers = nn.ModuleDict(
                {layer.name.replace(".", "_dot_"): layer for layer in layers}
            )
        ids: dict[int, int] = {id(t): i for i, t in enumerate(flat_in)}
        plan = []
        for node in nodes:
            if node.is_input:
                continue
            for t in node.outputs:
                ids.setdefault(id(t), len(ids))
            plan.append(
                (
                    node.layer,
                    [ids[id(t)] for t in node.input_tensors],
                    ids[id(node.outputs[0])],
                    node.multi_input,
                )
            )
        self._plan = plan
        self._out_ids = [ids[id(t)] for t in flat_out]
        self._n_slots = len(ids)
        self.built = True

    @property
    def layers(self) -> list[Layer]:
        # Keras's ``model.layers`` leaves out operation nodes (``x + 3.0`` in a graph)
        return [x for x in self._layer_list if not getattr(x, "_keras_operation", False)]

    def _sublayers(self) -> list[Layer]:
        return self.layers

    @property
    def inputs(self) -> list[KerasTensor]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[KerasTensor]:
        return list(self._outputs)

    @property
    def input(self) -> Any:
        return list(self._inputs) if self._struct_in else self._inputs[0]

    @property
    def output(self) -> Any:
        return list(self._outputs) if self._struct_out else self._outputs[0]

    @property
    def input_shape(self) -> Any:
        shapes = [t.shape for t in self._inputs]
        return shapes if self._multi_in else shapes[0]

    @property
    def output_shape(self) -> Any:
        shapes = [t.shape for t in self._outputs]
        return shapes if self._multi_out else shapes[0]

    def forward(self, x: Any) -> Any:
        if not self._multi_in and isinstance(x, (list, tuple)) and len(x) == 1:
            x = x[0]
        slots: list[Any] = [None] * self._n_slots
        xs = x if self._multi_in else [x]
        for i, value in enumerate(xs):
            slots[i] = value
        for layer, in_ids, out_id, multi in self._plan:
            arg = [slots[i] for i in in_ids] if multi else slots[in_ids[0]]
            slots[out_id] = layer.forward(arg)
        outs = [slots[i] for i in self._out_ids]
        return outs if self._multi_out else outs[0]

    def compute_output_shape(self, input_shape: Any) -> Any:
        if not self._multi_in and _is_shape_list(input_shape) and len(input_shape) == 1:
            input_shape = input_shape[0]
        shapes: list[Any] = [None] * self._n_slots
        given = input_shape if self._multi_in else [input_shape]
        for i, (s, t) in enumerate(zip(given, self._inputs, strict=True)):
            if len(s) != len(t.shape) or any(
                a is not None and b is not None and a != b
                for a, b in zip(s[1:], t.shape[1:], strict=True)
            ):
                raise ValueError(
                    f"Input {i} of model '{self.name}' is incompatible with the model: expected "
                    f"shape={t.shape}, found shape={tuple(s)}"
                )
            shapes[i] = tuple(s)
        for layer, in_ids, out_id, multi in self._plan:
            arg = [shapes[i] for i in in_ids] if multi else shapes[in_ids[0]]
            shapes[out_id] = layer.compute_output_shape(arg)
        outs = [shapes[i] for i in self._out_ids]
        return outs if self._multi_out else outs[0]

    def _check_input_shape(self, input_shape: Any) -> None:
        self.compute_output_shape(input_shape)

    def _layer_output_shapes(self) -> dict[int, str]:
        """``id(layer) -> output shape`` text for the summary (the layer's node here)."""
        out = {}
        for layer in self.layers:
            for node in layer._inbound_nodes:
                if all(t._keras_history is not None for t in node.outputs):
                    out[id(layer)] = str(node.outputs[0].shape)
                    break
        return out

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        """A layer by name or by index (``keras.Model.get_layer``)."""
        if index is not None and name is not None:
            raise ValueError(
                f"Provide only a layer name or a layer index. Received: index={index}, name={name}."
            )
        if index is not None:
            if len(self.layers) <= index:
                raise ValueError(
                    f"Was asked to retrieve layer at index {index} but model only "
                    f"has {len(self.layers)} layers."
                )
            return self.layers[index]
        if name is not None:
            for layer in self.layers:
                if layer.name == name:
                    return layer
            raise ValueError(
                f"No such layer: {name}. Existing layers are: "
                f"{[layer.name for layer in self.layers]}."
            )
        raise ValueError("Provide either a layer name or layer index at `get_layer`.")

    def regularization_losses(self) -> list[torch.Tensor]:
        out = []
        for layer in self._sublayers():
            out.extend(layer.regularization_losses())
        return out

    def count_params(self) -> int:
        self._require_built("count_params")
        return super().count_params()

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise ValueError(
                f"This model has not yet been built. Build the model first by calling `build()`"
                f" or by calling the model on a batch of data before `{what}`."
            )

    # ----- summary -------------------------------------------------------------------
    def summary(
        self,
        line_length: int | None = None,
        positions: Any = None,
        print_fn: Any = None,
        expand_nested: bool = False,
        show_trainable: bool = False,
        layer_range: Any = None,
    ) -> None:
        """Print a table of layers, output shapes and parameter counts, then the totals."""
        from compat.summary import render_summary

        if expand_nested:
            raise NotImplementedError("summary(expand_nested=True)")
        if layer_range is not None:
            raise NotImplementedError("summary(layer_range=...)")
        if positions is not None:
            raise NotImplementedError("summary(positions=...)")

        text = render_summary(self, line_length or 80, show_trainable)
        (print_fn or print)(text)

    # ----- saving --------------------------------------------------------------------
    def save(
        self, filepath: Any, overwrite: bool = True, zipped: bool | None = None, **kwargs: Any
    ) -> None:
        """Save architecture, weights and compile configuration in ONE file.

        ``.keras``: Keras 3's archive (real Keras loads it; compiled with names, the compile
        configuration comes along, not the optimizer's state). ``.h5``/``.hdf5``: Keras's
        legacy HDF5 model file. Any other suffix (``.pt``, ``.model``, ...): compat's own
        PyTorch file, which keeps the optimizer state and any compat model. Loading never runs
        code from the file (see :mod:`compat.saving` and :mod:`compat.keras_files`).
        """
        from compat import saving

        if zipped is False:
            raise NotImplementedError("save(zipped=False): compat writes one file")
        if kwargs:
            raise NotImplementedError(f"save({', '.join(kwargs)}=...)")
        saving.save_model(self, filepath, overwrite=overwrite)

    def save_weights(
        self, filepath: Any, overwrite: bool = True, max_shard_size: Any = None
    ) -> None:
        """Save the weights: ``.h5`` (``.weights.h5``) as Keras 3's HDF5 weights file, any
        other suffix as compat's torch file (Keras order and shapes)."""
        from compat import saving

        if max_shard_size is not None:
            raise NotImplementedError("save_weights(max_shard_size=...): one file only")

        saving.save_weights(self, filepath, overwrite=overwrite)

    def load_weights(self, filepath: Any, skip_mismatch: bool = False) -> None:
        """Load weights written by compat or by Keras (``.weights.h5``, ``.h5``, ``.keras``);
        the file's bytes decide how it is read."""
        from compat import saving

        saving.load_weights(self, filepath, skip_mismatch=skip_mismatch)

    def get_config(self) -> dict[str, Any]:
        """Keras's ``Functional.get_config()``: layers with their inbound nodes."""
        from compat import keras_format

        return keras_format.hook("functional_config")(self)

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> Model:
        """A model from Keras's config (compat's own layers only; see compat.keras_files)."""
        from compat import keras_format

        if custom_objects:
            raise NotImplementedError("from_config(custom_objects=...): compat's layers only")
        name = "Sequential" if issubclass(cls, Sequential) else "Functional"
        config = json.loads(json.dumps(config))  # Keras's configs hold tuples too
        build = keras_format.hook("build")
        return build({"class_name": name, "config": config}, f"{name}.from_config")

    def to_json(self, **kwargs: Any) -> str:
        raise NotImplementedError("Model.to_json(): use model.save() / load_model()")

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.pop("_compiled", None)  # files saved before CompileConfig held an unused dict
        state.setdefault("_compile_config", None)
        if "_multi_in" in state:  # files saved before one-element lists were unwrapped
            state.setdefault("_struct_in", state["_multi_in"])
            state.setdefault("_struct_out", state["_multi_out"])
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"


class Functional(Model):
    """Alias kept for ``isinstance`` checks written against Keras's class name."""


class Sequential(Model):
    """A linear stack of layers (``keras.Sequential``). Once its input shape is known it
    holds a functional graph of its layers, as Keras's Sequential does: calls, ``output``,
    the layers' ``output`` and feature caching then work as for any functional model."""

    def __init__(
        self, layers: list[Any] | None = None, trainable: bool = True, name: str | None = None
    ) -> None:
        super().__init__(name=name, trainable=trainable)
        self._stack = nn.ModuleList()  # owns the layers (the graph does not register them)
        self._input_layer: InputLayer | None = None
        self._out_shape: Shape | None = None
        self._multi_in = self._multi_out = False
        self._plan: list[Any] | None = None
        self.built = False
        for layer in layers or []:
            self.add(layer)

    def add(self, layer: Any, rebuild: bool = True) -> None:
        """Append a layer, a model, an ``InputLayer`` or an ``Input()`` tensor."""
        if isinstance(layer, KerasTensor):
            layer = layer._keras_history[0]
        if isinstance(layer, InputLayer):
            if self._input_layer is not None or len(self._stack):
                raise ValueError(
                    f"Sequential model '{self.name}' has already been configured to use input "
                    f"shape {self.input_shape}. You cannot add a different Input layer to it."
                )
            self._input_layer = layer
            self._out_shape = layer.batch_shape
            return
        if not isinstance(layer, Layer):
            raise ValueError(
                "Only instances of `keras.Layer` can be added to a Sequential model. "
                f"Received: {layer!r} (of type {type(layer)})"
            )
        if any(existing.name == layer.name for existing in self._stack):
            raise ValueError(
                f"All layers added to a Sequential model should have unique "
                f"names. Name '{layer.name}' is already the name of a layer in "
                "this model. Update the `name` argument to pass a unique name."
            )
        if self._input_layer is None and not len(self._stack) and layer._batch_input_shape:
            self._input_layer = InputLayer(batch_shape=layer._batch_input_shape)
            self._out_shape = tuple(layer._batch_input_shape)
        if self._input_layer is not None:
            # extend the graph by one call (each layer keeps a single node, as in Keras)
            last = self._outputs[0] if self._plan is not None else self._input_layer._output_tensor
            out = layer(last)
            self._stack.append(layer)
            self._set_graph(out)
        else:
            self._stack.append(layer)

    def pop(self, rebuild: bool = True) -> Layer:
        """Remove and return the last layer."""
        if not len(self._stack):
            raise TypeError("There are no layers in the model.")
        layer = self._stack[-1]
        del self._stack[-1]
        self._rebuild_graph()
        return layer

    def _set_graph(self, output: KerasTensor) -> None:
        self._init_graph(self._input_layer._output_tensor, output, register=False)
        self._out_shape = output.shape

    def _rebuild_graph(self) -> None:
        """Call every layer on the input again (after ``pop`` or a late ``build``)."""
        if self._input_layer is None:
            return
        x = self._input_layer._output_tensor
        self._plan = None
        self._out_shape = self._input_layer.batch_shape
        for layer in self._stack:
            x = layer(x)
        if len(self._stack):
            self._set_graph(x)
        self.built = bool(len(self._stack))

    def build(self, input_shape: Shape | None = None) -> None:
        if input_shape is not None and self._input_layer is None:
            self._input_layer = InputLayer(batch_shape=tuple(input_shape))
        if self._input_layer is None:
            raise ValueError("You must provide an `input_shape` argument.")
        if self._plan is None:
            self._rebuild_graph()
        self.built = True

    def _maybe_build(self, input_shape: Shape) -> None:
        if not self.built or self._input_layer is None:
            self.build(input_shape)
        else:
            self._check_input_shape(input_shape)

    def _check_input_shape(self, input_shape: Shape) -> None:
        expected = (None, *self._input_layer.batch_shape[1:])
        if len(input_shape) != len(expected) or any(
            a is not None and b is not None and a != b
            for a, b in zip(input_shape[1:], expected[1:], strict=True)
        ):
            raise ValueError(
                f"Input 0 of layer '{self.name}' is incompatible with the layer: expected "
                f"shape={expected}, found shape={tuple(input_shape)}"
            )

    @property
    def layers(self) -> list[Layer]:
        return list(self._stack)

    def _layer_output_shapes(self) -> dict[int, str]:
        out: dict[int, str] = {}
        if self._input_layer is None:
            return out
        shape: Any = self._input_layer.batch_shape
        for layer in self._stack:
            shape = layer.compute_output_shape(shape)
            out[id(layer)] = str(shape)
        return out

    @property
    def input_shape(self) -> Shape:
        if self._input_layer is None:
            raise AttributeError(f"Sequential model '{self.name}' has no defined input shape.")
        return self._input_layer.batch_shape

    @property
    def output_shape(self) -> Shape:
        return self._out_shape

    @property
    def inputs(self) -> list[KerasTensor]:
        return [self.input]

    @property
    def input(self) -> KerasTensor:
        if self._input_layer is None:
            raise AttributeError(f"Sequential model '{self.name}' has no defined input.")
        return self._input_layer._output_tensor

    @property
    def output(self) -> KerasTensor:
        if self._plan is None:
            raise AttributeError(
                f"Sequential model '{self.name}' has no defined output yet: give it an input "
                "shape (an Input() first, or build()) and at least one layer."
            )
        return self._outputs[0]

    @property
    def outputs(self) -> list[KerasTensor]:
        return [self.output]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._plan is None:
            if not len(self._stack):  # an input layer and no other layer yet
                return x
            self._rebuild_graph()  # never run layers as an identity: build the graph first
        return super().forward(x)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_plan" not in self.__dict__:  # saved before Sequential held a graph
            self._multi_in = self._multi_out = False
            self._plan = None
            # rebuild now only when no layer would be built: unpickling must never allocate
            # what a file declares (an unbuilt layer builds on the first call instead)
            if all(getattr(layer, "built", False) for layer in self._stack):
                self._rebuild_graph()

    def get_config(self) -> dict[str, Any]:
        """Keras's ``Sequential.get_config()``: the input layer, then each layer's Keras
        config (``module``, ``class_name``, ``config`` with its ``dtype``, ``build_config``)."""
        from compat import keras_format

        return keras_format.hook("sequential_config")(self)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        self._check_input_shape(input_shape)
        shape = input_shape
        for layer in self._stack:
            shape = layer.compute_output_shape(shape)
        return shape


def load_model(
    filepath: Any,
    custom_objects: Any = None,
    compile: bool = True,
    safe_mode: bool = True,
    *,
    trust_pickle: bool = False,
) -> Model:
    """Load a model written by ``Model.save``; nothing in the file runs unless trusted.

    compat's layers load as they are; ``custom_objects`` trusts your own layers and functions,
    ``trust_pickle=True`` (or Keras's ``safe_mode=False``) the whole file.
    """
    from compat import saving

    return saving.load_model(
        filepath,
        model_class=Model,
        compile=compile,
        custom_objects=custom_objects,
        safe_mode=safe_mode,
        trust_pickle=trust_pickle,
    )


def clone_model(model: Model, **kwargs: Any) -> Model:
    """A deep copy with the same weights (Keras re-initialises; compat copies)."""
    if kwargs:
        raise NotImplementedError(f"clone_model({', '.join(sorted(kwargs))}=...)")
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


__all__ = [
    "Functional",
    "Model",
    "Sequential",
    "_as_tensor",
    "clone_model",
    "load_model",
    "set_modes",
]
