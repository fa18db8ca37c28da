"""Keras 3's own files, both ways: ``.keras`` archives, ``.weights.h5`` and legacy ``.h5``.

Keras -> compat: the archive's ``config.json`` (or a legacy ``.h5``'s ``model_config``) is
read as data and only compat's own layer classes are built from it, chosen from a fixed table
by Keras's class name (no ``module``/``registered_name`` is ever imported, no ``Lambda`` or
custom object is deserialised: Keras's ``safe_mode`` and more). Weights are matched as Keras
matches them (``layers/<class>[_i]/vars/<i>`` in a ``.weights.h5``; layer names in a legacy
``.h5``), every variable is checked (missing, extra, shape, declared size) before any is
assigned, so a bad file is one error naming the layer and variable, never a partial load.

compat -> Keras: the same table writes each layer's Keras ``get_config()`` (with Keras's
``DTypePolicy``), functional graphs as Keras's ``inbound_nodes``, and the weights in Keras's
layout and shapes (compat's ``Variable`` already converts torch layout to Keras's).

Applications need nothing of their own: a Keras application is a functional model of these
layers, so Keras's exact architecture (ResNet50's strides and biases, say) is what loads.
compat's own applications (torch variants on timm weights) are written with the layers Keras
needs to compute the same thing (:func:`pre_layers`: the input map of the timm weights as a
fixed 1x1 ``Conv2D``, torch's symmetric padding as a ``ZeroPadding2D``).
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from compat import keras_format
from compat.keras_format import DTYPE_POLICY, NotWritableError
from ftlight.files import UnreadableFileError, atomic_path

KERAS_VERSION = "3.15.1"
_MAX_CONFIG_BYTES = 64 * 2**20


class KerasFileError(UnreadableFileError):
    """A Keras file that compat cannot load (unsupported content, or crafted/damaged)."""


def _h5py() -> Any:
    """h5py, which Keras's files need (``pip install ftlight[keras-files]``)."""
    try:
        import h5py
    except ImportError:
        raise ImportError(
            "Keras's .keras, .weights.h5 and .h5 files need h5py: pip install "
            "'ftlight[keras-files]' (or h5py). compat's own files (.pt) do not."
        ) from None
    return h5py


# ----- names, initializers, regularizers, activations ----------------------------------


def snake_case(name: str) -> str:
    """Keras's ``naming.to_snake_case`` (the default names of the weights file's groups)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


_INITIALIZERS = {
    "glorot_uniform": "GlorotUniform",
    "glorot_normal": "GlorotNormal",
    "he_normal": "HeNormal",
    "he_uniform": "HeUniform",
    "zeros": "Zeros",
    "ones": "Ones",
}
_VARIANCE_SCALING = {"seed": None, "input_axes": None, "output_axes": None}


def _initializer_config(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, dict) and value.get("class_name") in _FROM_CONFIG:
        return {"module": "keras.initializers", "class_name": value["class_name"],
                "config": dict(value["config"]), "registered_name": None}  # fmt: skip
    if not isinstance(value, str) or value not in _INITIALIZERS:
        raise NotWritableError(
            f"{where}: initializer {value!r} cannot be written to a Keras file; compat writes "
            f"{sorted(_INITIALIZERS)}."
        )
    cls = _INITIALIZERS[value]
    config = {} if cls in ("Zeros", "Ones") else dict(_VARIANCE_SCALING)
    return {"module": "keras.initializers", "class_name": cls, "config": config,
            "registered_name": None}  # fmt: skip


# Keras's initializers compat builds from their whole config (EfficientNet's): the keys
# Keras writes, and a check of each value.
_FROM_CONFIG: dict[str, dict[str, Callable[[Any], bool]]] = {
    "VarianceScaling": {
        "scale": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
        "mode": lambda v: v in ("fan_in", "fan_out", "fan_avg"),
        "distribution": lambda v: (
            v in ("truncated_normal", "untruncated_normal", "uniform", "normal")
        ),
        "seed": lambda v: v is None,
        "input_axes": lambda v: v is None,
        "output_axes": lambda v: v is None,
    },
    "Constant": {"value": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)},
}


def _initializer_name(value: Any, where: str) -> str | dict[str, Any]:
    """compat's initializer for a Keras config entry: a name, or (VarianceScaling, Constant)
    ``{"class_name": ..., "config": ...}`` with Keras's whole config."""
    if isinstance(value, str) and value in _INITIALIZERS:
        return value
    if isinstance(value, dict) and value.get("class_name") in _FROM_CONFIG:
        checks = _FROM_CONFIG[value["class_name"]]
        config = value.get("config")
        if (
            isinstance(config, dict)
            and set(config) <= set(checks)
            and all(checks[k](v) for k, v in config.items())
        ):
            return {"class_name": value["class_name"], "config": dict(config)}
    if isinstance(value, dict):
        by_class = {v: k for k, v in _INITIALIZERS.items()}
        cls, config = value.get("class_name"), value.get("config") or {}
        if cls in by_class and all(config.get(k) is None for k in config):
            return by_class[cls]
    raise KerasFileError(
        f"{where}: initializer {_short(value)} is not one compat builds "
        f"({sorted(_INITIALIZERS.values())} without a seed; {sorted(_FROM_CONFIG)} with "
        "Keras's config and no seed)."
    )


def _regularizer_config(value: Any, where: str) -> Any:
    from compat import regularizers

    if value is None:
        return None
    if type(value) in (regularizers.L1, regularizers.L2, regularizers.L1L2):
        cls = type(value).__name__
        config = {"l1": value.l1, "l2": value.l2}
        if cls != "L1L2":
            config = {cls.lower(): config[cls.lower()]}
        return {"module": "keras.regularizers", "class_name": cls, "config": config,
                "registered_name": None}  # fmt: skip
    raise NotWritableError(f"{where}: regularizer {value!r} cannot be written to a Keras file.")


def _regularizer(value: Any, where: str) -> Any:
    from compat import regularizers

    if value is None:
        return None
    if isinstance(value, dict) and value.get("class_name") in ("L1", "L2", "L1L2"):
        config = value.get("config") or {}
        if set(config) <= {"l1", "l2"} and all(
            isinstance(v, (int, float)) for v in config.values()
        ):
            return getattr(regularizers, value["class_name"])(**config)
    raise KerasFileError(
        f"{where}: regularizer {_short(value)} is not one compat builds (L1, L2, L1L2)."
    )


def _activation_name(value: Any, where: str) -> str:
    from compat.activations import _ACTIVATIONS, keras_name

    try:
        return keras_name(value)  # Keras's own name ("swish" is written "silu")
    except ValueError:
        pass
    raise NotWritableError(
        f"{where}: activation {value!r} cannot be written to a Keras file (a function of your "
        f"own); compat writes {sorted(_ACTIVATIONS)}."
    )


def _activation(value: Any, where: str) -> str:
    from compat.activations import _ACTIVATIONS

    if isinstance(value, str) and value in _ACTIVATIONS:
        return value
    raise KerasFileError(
        f"{where}: activation {_short(value)} is not one of compat's {sorted(_ACTIVATIONS)}; "
        "compat never deserialises functions from a file."
    )


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


# ----- the layer table -----------------------------------------------------------------
# Keras class name -> (arguments passed to compat's constructor, arguments that must hold
# Keras's default because compat has no such option, writer of Keras's config from a layer).
_BASE = ("name", "trainable", "dtype")


def _conv_common(layer: Any) -> dict[str, Any]:
    return {
        "kernel_size": tuple(layer.kernel_size),
        "strides": tuple(layer.strides),
        "padding": layer.padding,
        "data_format": "channels_last",
        "dilation_rate": tuple(layer.dilation_rate),
    }


def _initializers(where: str, **initializers: Any) -> dict[str, Any]:
    """Keras's ``<weight>_initializer`` entries, in the order given."""
    return {f"{w}_initializer": _initializer_config(v, where) for w, v in initializers.items()}


def _unset(*options: str) -> dict[str, None]:
    """Keras's options that compat does not have, at their default ``None``."""
    return dict.fromkeys(options)


def _activation_and_bias(layer: Any, where: str) -> dict[str, Any]:
    return {"activation": _activation_name(layer.activation, where), "use_bias": layer.use_bias}


def _unset_for(*weights: str, activity: bool = True) -> dict[str, None]:
    """Keras's ``<weight>_regularizer`` (then ``activity_regularizer``) and
    ``<weight>_constraint`` entries, all ``None`` (compat has none of them)."""
    regularizers = [f"{w}_regularizer" for w in weights]
    activity_regularizer = ["activity_regularizer"] if activity else []
    return _unset(*regularizers, *activity_regularizer, *(f"{w}_constraint" for w in weights))


def _dense(layer: Any, where: str) -> dict[str, Any]:
    return {
        "units": layer.units,
        **_activation_and_bias(layer, where),
        **_initializers(where, kernel=layer.kernel_initializer, bias=layer.bias_initializer),
        "kernel_regularizer": _regularizer_config(layer.kernel_regularizer, where),
        "bias_regularizer": _regularizer_config(layer.bias_regularizer, where),
        **_unset("kernel_constraint", "bias_constraint", "quantization_config"),
    }


def _conv2d(layer: Any, where: str) -> dict[str, Any]:
    return {
        "filters": layer.filters,
        **_conv_common(layer),
        "groups": layer.groups,
        **_activation_and_bias(layer, where),
        **_initializers(where, kernel=layer.kernel_initializer, bias=layer.bias_initializer),
        **_unset_for("kernel", "bias"),
    }


def _depthwise(layer: Any, where: str) -> dict[str, Any]:
    return {
        "depth_multiplier": layer.depth_multiplier,
        **_conv_common(layer),
        **_activation_and_bias(layer, where),
        **_initializers(where, depthwise=layer.depthwise_initializer, bias=layer.bias_initializer),
        **_unset_for("depthwise", "bias"),
    }


def _separable(layer: Any, where: str) -> dict[str, Any]:
    return {
        "depth_multiplier": layer.depth_multiplier,
        "filters": layer.filters,
        **_conv_common(layer),
        **_activation_and_bias(layer, where),
        **_initializers(
            where,
            depthwise=layer.depthwise_initializer,
            pointwise=layer.pointwise_initializer,
            bias=layer.bias_initializer,
        ),
        **_unset_for("depthwise", "pointwise", "bias"),
    }


def _batchnorm(layer: Any, where: str) -> dict[str, Any]:
    return {
        "axis": layer.axis,
        "momentum": layer.momentum,
        "epsilon": layer.epsilon,
        "center": layer.center,
        "scale": layer.scale,
        **_initializers(
            where, beta="zeros", gamma="ones", moving_mean="zeros", moving_variance="ones"
        ),
        **_unset_for("beta", "gamma", activity=False),
        "synchronized": False,
        "renorm": False,
        "renorm_clipping": None,
        "renorm_momentum": 0.99,
    }


def _layernorm(layer: Any, where: str) -> dict[str, Any]:
    return {
        "axis": list(layer.axis) if isinstance(layer.axis, (list, tuple)) else layer.axis,
        "epsilon": layer.epsilon,
        "center": layer.center,
        "scale": layer.scale,
        "rms_scaling": False,
        **_initializers(where, beta="zeros", gamma="ones"),
        **_unset_for("beta", "gamma", activity=False),
    }


def _pooling(layer: Any, where: str) -> dict[str, Any]:
    return {
        "pool_size": tuple(layer.pool_size),
        "padding": layer.padding,
        "strides": tuple(layer.strides),
        "data_format": "channels_last",
    }


def _own_config(layer: Any, where: str) -> dict[str, Any]:
    """A layer whose ``get_config`` is Keras's (tested against Keras), less the base keys."""
    return {k: v for k, v in layer.get_config().items() if k not in _BASE}


def _spec(
    cls: str,
    passed: tuple[str, ...],
    fixed: dict[str, Any],
    writer: Callable[[Any, str], dict[str, Any]],
) -> tuple[str, tuple[str, ...], dict[str, Any], Callable[[Any, str], dict[str, Any]]]:
    return cls, passed, fixed, writer


_CONV = ("kernel_size", "strides", "padding", "data_format", "dilation_rate")
LAYERS: dict[str, tuple[str, tuple[str, ...], dict[str, Any], Callable]] = {
    "Dense": _spec(
        "Dense",
        ("units", "activation", "use_bias", "kernel_initializer", "bias_initializer",
         "kernel_regularizer", "bias_regularizer"),
        _unset("kernel_constraint", "bias_constraint", "quantization_config",
               "activity_regularizer", "lora_rank", "lora_alpha"),
        _dense,
    ),
    "Conv2D": _spec(
        "Conv2D",
        ("filters", *_CONV, "groups", "activation", "use_bias", "kernel_initializer",
         "bias_initializer", "kernel_regularizer"),
        _unset("bias_regularizer", "activity_regularizer", "kernel_constraint",
               "bias_constraint", "lora_rank", "lora_alpha"),
        _conv2d,
    ),
    "DepthwiseConv2D": _spec(
        "DepthwiseConv2D",
        ("depth_multiplier", *_CONV, "activation", "use_bias", "depthwise_initializer",
         "bias_initializer"),
        _unset_for("depthwise", "bias"),
        _depthwise,
    ),
    "SeparableConv2D": _spec(
        "SeparableConv2D",
        ("depth_multiplier", "filters", *_CONV, "activation", "use_bias",
         "depthwise_initializer", "pointwise_initializer", "bias_initializer"),
        _unset_for("depthwise", "pointwise", "bias"),
        _separable,
    ),
    "BatchNormalization": _spec(
        "BatchNormalization",
        ("axis", "momentum", "epsilon", "center", "scale", "beta_initializer",
         "gamma_initializer", "moving_mean_initializer", "moving_variance_initializer",
         "synchronized"),
        {**_unset_for("beta", "gamma", activity=False), "renorm": False,
         "renorm_clipping": None, "renorm_momentum": 0.99},
        _batchnorm,
    ),
    "LayerNormalization": _spec(
        "LayerNormalization",
        ("axis", "epsilon", "center", "scale", "beta_initializer", "gamma_initializer"),
        {"rms_scaling": False, **_unset_for("beta", "gamma", activity=False)},
        _layernorm,
    ),
    "Dropout": _spec(
        "Dropout", ("rate", "seed", "noise_shape"), {},
        lambda layer, where: {"rate": layer.rate, "seed": layer.seed,
                              "noise_shape": layer.noise_shape},
    ),
    "Flatten": _spec(
        "Flatten", ("data_format",), {}, lambda layer, where: {"data_format": "channels_last"}
    ),
    "GlobalAveragePooling2D": _spec(
        "GlobalAveragePooling2D", ("data_format", "keepdims"), {},
        lambda layer, where: {"data_format": "channels_last", "keepdims": layer.keepdims},
    ),
    "GlobalMaxPooling2D": _spec(
        "GlobalMaxPooling2D", ("data_format", "keepdims"), {},
        lambda layer, where: {"data_format": "channels_last", "keepdims": layer.keepdims},
    ),
    "MaxPooling2D": _spec(
        "MaxPooling2D", ("pool_size", "padding", "strides", "data_format"), {}, _pooling
    ),
    "AveragePooling2D": _spec(
        "AveragePooling2D", ("pool_size", "padding", "strides", "data_format"), {}, _pooling
    ),
    "ZeroPadding2D": _spec(
        "ZeroPadding2D", ("padding", "data_format"), {},
        lambda layer, where: {
            "padding": tuple(tuple(p) for p in layer.padding), "data_format": "channels_last"
        },
    ),
    "ReLU": _spec(
        "ReLU", ("max_value", "negative_slope", "threshold"), {},
        lambda layer, where: {"max_value": layer.max_value,
                              "negative_slope": layer.negative_slope,
                              "threshold": layer.threshold},
    ),
    "Activation": _spec(
        "Activation", ("activation",), {},
        lambda layer, where: {"activation": _activation_name(layer.activation, where)},
    ),
    "Add": _spec("Add", (), {}, lambda layer, where: {}),
    "Multiply": _spec("Multiply", (), {}, lambda layer, where: {}),
    "Concatenate": _spec(
        "Concatenate", ("axis",), {}, lambda layer, where: {"axis": layer.axis}
    ),
    "Reshape": _spec(
        "Reshape", ("target_shape",), {},
        lambda layer, where: {"target_shape": tuple(layer.target_shape)},
    ),
    "Rescaling": _spec(
        "Rescaling", ("scale", "offset"), {},
        lambda layer, where: {"scale": layer.scale, "offset": layer.offset},
    ),
    # EfficientNet's stem; unadapted, its mean/variance/count are variables in the file
    "Normalization": _spec(
        "Normalization", ("axis", "mean", "variance", "invert"), {},
        lambda layer, where: {
            "axis": tuple(layer.axis), "invert": layer.invert,
            "mean": np.array(layer.input_mean).tolist(),
            "variance": np.array(layer.input_variance).tolist(),
        },
    ),
    # the augmentation layers of Keras's transfer-learning tutorials (identity at inference;
    # their config is Keras's, so get_config is what the file holds)
    "RandomFlip": _spec(
        "RandomFlip", ("mode", "seed"), {"data_format": "channels_last"}, _own_config
    ),
    "RandomRotation": _spec(
        "RandomRotation", ("factor", "fill_mode", "interpolation", "seed", "fill_value"),
        {"data_format": "channels_last"}, _own_config,
    ),
    "RandomZoom": _spec(
        "RandomZoom", ("height_factor", "width_factor", "fill_mode", "interpolation", "seed",
                       "fill_value"),
        {"data_format": "channels_last"}, _own_config,
    ),
    "RandomTranslation": _spec(
        "RandomTranslation", ("height_factor", "width_factor", "fill_mode", "interpolation",
                              "seed", "fill_value"),
        {"data_format": "channels_last"}, _own_config,
    ),
    "RandomContrast": _spec(
        "RandomContrast", ("factor", "value_range", "seed"), {"data_format": "channels_last"},
        _own_config,
    ),
    # Keras's applications' own layers (InceptionResNetV2's residual sum, ConvNeXt's scale)
    "CustomScaleLayer": _spec(
        "CustomScaleLayer", ("scale",), {}, lambda layer, where: {"scale": layer.scale}
    ),
    "LayerScale": _spec(
        "LayerScale", ("init_values", "projection_dim"), {},
        lambda layer, where: {"init_values": layer.init_values,
                              "projection_dim": layer.projection_dim},
    ),
}  # fmt: skip
# Layers of Keras's applications: class -> (Keras's module, compat's module)
_APPLICATION_LAYERS = {
    "CustomScaleLayer": (
        "keras.src.applications.inception_resnet_v2",
        "compat.applications.inception_resnet_v2",
    ),
    "LayerScale": ("keras.src.applications.convnext", "compat.applications.convnext"),
}
_MODELS = ("Sequential", "Functional", "Model")
# Layers whose Keras build() is the default one: Keras records no build_config for them.
_NO_BUILD_CONFIG = (
    "Dropout",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "MaxPooling2D",
    "AveragePooling2D",
    "ReLU",
    "Activation",
    "Reshape",
)


def _keras_class(layer: Any) -> str:
    from compat.layers import InputLayer
    from compat.models import Model, Sequential

    if isinstance(layer, Sequential):
        return "Sequential"
    if isinstance(layer, Model):
        return "Functional"
    if isinstance(layer, InputLayer):
        return "InputLayer"
    if isinstance(layer, _Pseudo):
        return layer.keras_cls
    # an application's subclass that says which Keras layer computes what it does (a name,
    # or a method naming it, which raises NotWritableError when none does)
    declared = type(layer).__dict__.get("keras_written_as")
    if declared is not None:
        return declared(layer) if callable(declared) else declared
    for cls in type(layer).__mro__:
        if (
            cls.__module__.startswith("compat.layers") and cls.__name__ in LAYERS
        ) or cls.__module__ == _APPLICATION_LAYERS.get(cls.__name__, ("", ""))[1]:
            if cls is not type(layer) and _input_map(layer) is None:
                break  # a subclass of the user's own: its code is not in Keras's config
            return cls.__name__
    raise NotWritableError(
        f"Layer '{layer.name}' ({type(layer).__name__}) cannot be written to a Keras file; "
        f"compat writes {sorted([*LAYERS, *_MODELS[:2]])}."
    )


class _Array:
    """A fixed value in the place of a compat ``Variable`` (written, never read back)."""

    def __init__(self, name: str, value: np.ndarray) -> None:
        self.name, self._value = name, value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._value.shape)

    def numpy(self) -> np.ndarray:
        return self._value


class _Pseudo:
    """A layer written for Keras that compat does as part of another layer (an
    application's input map, torch's symmetric padding of a convolution)."""

    def __init__(self, name: str, keras_cls: str, variables: list[_Array], **attrs: Any) -> None:
        self.name, self.keras_cls, self.trainable = name, keras_cls, attrs.pop("trainable", True)
        self._build_shape = None
        self._variables = variables
        self.__dict__.update(attrs)

    def _own_variables(self) -> list[_Array]:
        return list(self._variables)

    def compute_output_shape(self, shape: Any) -> Any:
        if self.keras_cls != "ZeroPadding2D":
            return shape
        (t, b), (left, r) = self.padding
        return (
            shape[0],
            None if shape[1] is None else shape[1] + t + b,
            None if shape[2] is None else shape[2] + left + r,
            shape[3],
        )


def _map_layer(layer: Any, mapping: Any) -> _Pseudo:
    """The exact per-channel map (channel order, scale, offset) that compat's applications
    apply to their input before the first layer, as a 1x1 ``Conv2D`` (one non-zero weight
    per output channel: the same product and sum), not trainable."""
    order = mapping.order.detach().cpu().numpy()
    scale = mapping.scale.detach().cpu().numpy().reshape(-1).astype("float32")
    offset = mapping.offset.detach().cpu().numpy().reshape(-1).astype("float32")
    kernel = np.zeros((1, 1, len(order), len(order)), "float32")
    for out, source in enumerate(order):
        kernel[0, 0, int(source), out] = scale[out]
    return _Pseudo(
        f"{layer.name}_input_map",
        "Conv2D",
        [_Array("kernel", kernel), _Array("bias", offset)],
        trainable=False,
        filters=len(order),
        kernel_size=(1, 1),
        strides=(1, 1),
        dilation_rate=(1, 1),
        padding="valid",
        groups=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
    )


def _input_map(layer: Any) -> Any:
    """The :class:`compat.applications._common.InputMap` a layer applies first, if any."""
    mapping = getattr(layer, "input_map", None)
    if mapping is None or not all(hasattr(mapping, k) for k in ("order", "scale", "offset")):
        return None
    return mapping


def _explicit_pad(layer: Any) -> tuple[int, int] | None:
    """torch's own padding of a convolution compat wrapped (``from_torch``) when Keras's
    ``padding`` cannot say it: symmetric padding where Keras's ``'same'`` pads the
    bottom/right (strided), or any padding of a ``'valid'`` layer."""
    if getattr(layer, "count_include_pad", False) and layer.padding == "same":
        # torch's average over the padded zeros (InceptionV3's timm pools): Keras's 'same'
        # leaves them out, so the zeros are a ZeroPadding2D before a 'valid' pooling
        if tuple(layer.strides) != (1, 1) or any(k % 2 == 0 for k in layer.pool_size):
            raise NotWritableError(
                f"Layer '{layer.name}' averages over its 'same' padding (torch's "
                f"count_include_pad) with strides {tuple(layer.strides)} and pool size "
                f"{tuple(layer.pool_size)}: Keras has no layer for it."
            )
        return ((layer.pool_size[0] - 1) // 2, (layer.pool_size[1] - 1) // 2)
    pad = tuple(getattr(layer, "_torch_pad", (0, 0)) or (0, 0))
    if pad == (0, 0) or isinstance(layer, _Pseudo):
        return None
    if layer.padding == "same" and all(
        s == 1 and 2 * p == d * (k - 1)
        for s, p, d, k in zip(
            layer.strides, pad, layer.dilation_rate, layer.kernel_size, strict=True
        )
    ):
        return None
    return pad


def pre_layers(layer: Any) -> list[_Pseudo]:
    """The layers Keras needs before ``layer`` to compute what compat's ``layer`` does."""
    out = []
    mapping = _input_map(layer)
    if mapping is not None:
        out.append(_map_layer(layer, mapping))
    for cls, attrs in getattr(layer, "keras_pre_layers", ()):  # declared by the layer
        out.append(_Pseudo(f"{layer.name}_{snake_case(cls)}", cls, [], **attrs))
    pad = _explicit_pad(layer)
    if pad is not None:
        out.append(
            _Pseudo(
                f"{layer.name}_torch_pad",
                "ZeroPadding2D",
                [],
                padding=((pad[0], pad[0]), (pad[1], pad[1])),
            )
        )
    return out


# ----- compat -> Keras config ------------------------------------------------------------


def _json_shape(shape: Any) -> Any:
    if isinstance(shape, list):
        return [_json_shape(s) for s in shape]
    return [None if d is None else int(d) for d in shape]


def layer_config(layer: Any) -> dict[str, Any]:
    """Keras's ``layer.get_config()`` for a compat layer (tuples as Keras gives them)."""
    cls = _keras_class(layer)
    if cls == "InputLayer":
        return {
            "batch_shape": tuple(layer.batch_shape),
            "dtype": "float32",
            "sparse": False,
            "ragged": False,
            "name": layer.name,
            "optional": False,
        }
    if cls == "Sequential":
        return sequential_config(layer)
    if cls == "Functional":
        return functional_config(layer)
    where = f"layer '{layer.name}' ({cls})"
    base = {"name": layer.name, "trainable": layer.trainable, "dtype": dict(DTYPE_POLICY)}
    config = {**base, **LAYERS[cls][3](layer, where), **getattr(layer, "keras_config", {})}
    if _explicit_pad(layer) is not None:
        config["padding"] = "valid"  # the padding is the ZeroPadding2D written before it
    return config


def serialize_layer(layer: Any, input_shape: Any = None) -> dict[str, Any]:
    """Keras's ``serialize_keras_object(layer)``: module, class name, config, build config."""
    cls = _keras_class(layer)
    module = {"Sequential": "keras", "Functional": "keras.src.models.functional"}.get(
        cls, _APPLICATION_LAYERS.get(cls, ("keras.layers",))[0]
    )
    out: dict[str, Any] = {
        "module": module,
        "class_name": cls,
        "config": layer_config(layer),
        "registered_name": cls if cls in _APPLICATION_LAYERS else None,
    }
    shape = getattr(layer, "_build_shape", None) or input_shape
    several = isinstance(input_shape, list) and input_shape and isinstance(input_shape[0], tuple)
    if _fixed_batch(input_shape) or (several and any(_fixed_batch(s) for s in input_shape)):
        # Input(batch_size=4): Keras built it on (4, ...)
        shape = input_shape
    if cls not in ("InputLayer", "Functional", *_NO_BUILD_CONFIG) and shape is not None:
        out["build_config"] = {"input_shape": _json_shape(shape)}
    if cls in ("Sequential", "Functional"):
        out["compile_config"] = _compile_config(layer) or {}
    return out


def _fixed_batch(shape: Any) -> bool:
    return (
        isinstance(shape, (tuple, list))
        and bool(shape)
        and isinstance(shape[0], int)
        and not isinstance(shape[0], bool)
    )


def sequential_config(model: Any) -> dict[str, Any]:
    """Keras's ``Sequential.get_config()``: the layer list, the input layer first."""
    entries = []
    if model._input_layer is not None:
        entries.append(serialize_layer(model._input_layer))
    # Keras's shapes keep a fixed batch size (Input(batch_size=4): (4, ...))
    shape = None if model._input_layer is None else tuple(model._input_layer.batch_shape)
    for layer in _expanded(model):
        entries.append(serialize_layer(layer, shape))
        shape = None if shape is None else layer.compute_output_shape(shape)
    config: dict[str, Any] = {
        "name": model.name,
        "trainable": model.trainable,
        "dtype": dict(DTYPE_POLICY),
        "layers": entries,
    }
    if model._input_layer is not None:
        config["build_input_shape"] = tuple(model._input_layer.batch_shape)
    return config


# Keras's layers whose call() takes ``mask``: Keras records ``mask=None`` in their nodes'
# kwargs when they are called without ``training=``.
_MASK_CALLS = ("BatchNormalization", "Sequential", "Functional")


def _tensor_ref(
    t: Any, node_index: dict[int, int], batch: dict[int, int] | None = None
) -> dict[str, Any]:
    layer, index, tensor_index = t._keras_history
    return {
        "class_name": "__keras_tensor__",
        "config": {
            "shape": _json_shape(_batched(t, batch or {})),
            "dtype": "float32",
            "keras_history": [
                layer.name,
                node_index[id(layer._inbound_nodes[index])],
                tensor_index,
            ],
        },
    }


def _fixed_batches(nodes: list[Any]) -> dict[int, int]:
    """``id(tensor) -> batch size`` for the tensors of a graph whose input has a fixed batch
    size (``Input(batch_size=4)``): Keras's shapes keep it through every layer."""
    batch: dict[int, int] = {}
    for node in nodes:
        if node.is_input:
            shape = getattr(node.layer, "batch_shape", None)
            size = shape[0] if shape else None
        else:
            size = next((batch[id(t)] for t in node.input_tensors if id(t) in batch), None)
        if size is not None:
            batch.update((id(t), size) for t in node.outputs)
    return batch


def _batched(t: Any, batch: dict[int, int]) -> Any:
    size = batch.get(id(t))
    return t.shape if size is None else (size, *tuple(t.shape)[1:])


def functional_config(model: Any) -> dict[str, Any]:
    """Keras's ``Functional.get_config()``: layers with their inbound nodes, in Keras order."""
    from compat.graph import map_graph

    nodes, layers = map_graph(model._inputs, model._outputs)
    batch = _fixed_batches(nodes)
    in_model = {id(n) for n in nodes}
    for t in model._inputs:
        in_model.add(id(t._keras_history[0]._inbound_nodes[t._keras_history[1]]))
    node_index: dict[int, int] = {}
    entries = []
    for layer in layers:
        own = [n for n in layer._inbound_nodes if id(n) in in_model]
        for i, node in enumerate(own):
            node_index[id(node)] = i
    for layer in layers:
        own = [n for n in layer._inbound_nodes if id(n) in in_model]
        if _as_operation(layer) is not None:
            entries.append(_operation_entry(layer, own, node_index, batch))
            continue
        inbound = []
        first_shape = None
        for node in own:
            if node.is_input:
                continue
            refs = [_tensor_ref(t, node_index, batch) for t in node.input_tensors]
            shapes = [_batched(t, batch) for t in node.input_tensors]
            first_shape = first_shape or (list(shapes) if node.multi_input else shapes[0])
            kwargs = {} if node.training is None else {"training": node.training}
            if not kwargs and _keras_class(layer) in _MASK_CALLS:
                # Keras fills the call's mask argument: None for each input tensor
                kwargs = {"mask": [None] * len(refs) if node.multi_input else None}
            inbound.append({"args": [refs if node.multi_input else refs[0]], "kwargs": kwargs})
        pres = pre_layers(layer)
        if pres and (len(inbound) != 1 or own[-1].multi_input):
            raise NotWritableError(
                f"Layer '{layer.name}' is shared or takes several inputs and pads or maps its "
                "input the torch way; Keras has no such layer."
            )
        shape = first_shape
        for pre in pres:
            pre_entry = serialize_layer(pre, shape)
            pre_entry["name"] = pre.name
            pre_entry["inbound_nodes"] = [{"args": inbound[0]["args"], "kwargs": {}}]
            entries.append(pre_entry)
            shape = pre.compute_output_shape(shape)
            ref = _tensor_ref(own[-1].input_tensors[0], node_index, batch)
            ref["config"]["keras_history"] = [pre.name, 0, 0]
            ref["config"]["shape"] = _json_shape(shape)
            inbound = [{"args": [ref], "kwargs": inbound[0]["kwargs"]}]
        first_shape = shape
        entry = serialize_layer(layer, first_shape)
        entry["name"] = layer.name
        entry["inbound_nodes"] = inbound
        entries.append(entry)

    def ends(tensors: list[Any], structured: bool) -> Any:
        refs = [
            [
                t._keras_history[0].name,
                node_index[id(_node(t))] + _first_call(t._keras_history[0]),
                t._keras_history[2],
            ]
            for t in tensors
        ]
        return refs if structured or len(refs) > 1 else refs[0]

    return {
        "name": model.name,
        "trainable": model.trainable,
        "layers": entries,
        "input_layers": ends(model._inputs, model._struct_in),
        "output_layers": ends(model._outputs, model._struct_out),
    }


def _operation_entry(
    layer: Any, own: list[Any], node_index: dict[int, int], batch: dict[int, int]
) -> dict[str, Any]:
    """Keras's serialised operation node: ``Add`` called with ``(tensor, 3.0)``, ``Pad``
    called with ``(tensor,)`` and ``constant_values``..."""
    op = _as_operation(layer)
    config, kwargs = op.keras_node() if hasattr(op, "keras_node") else ({}, {})
    inbound = []
    for node in own:
        refs = iter(_tensor_ref(t, node_index, batch) for t in node.input_tensors)
        operands = getattr(op, "operands", None) or [None]
        args = [next(refs) if v is None else v for v in operands]
        inbound.append({"args": args, "kwargs": kwargs})
    return {
        "module": _OPS_MODULE,
        "class_name": op.op,
        "config": {"name": layer.name, **config},
        "registered_name": op.op,
        "name": layer.name,
        "inbound_nodes": inbound,
    }


def _first_call(layer: Any) -> int:
    """Where Keras numbers a layer's calls from in ``input_layers``/``output_layers``: 1 for
    a nested Functional (Keras counts its construction as node 0 there; its
    ``get_config`` starts such a layer's ``kept_nodes`` at 1 and ``from_config`` subtracts
    1), 0 for every other layer, Sequential included. ``inbound_nodes`` count from 0."""
    from compat.models import Model, Sequential

    return int(isinstance(layer, Model) and not isinstance(layer, Sequential))


def _node(t: Any) -> Any:
    layer, index, _ = t._keras_history
    return layer._inbound_nodes[index]


def model_config(model: Any) -> dict[str, Any]:
    """What Keras writes as a ``.keras`` archive's ``config.json``."""
    out = serialize_layer(model)
    if out["class_name"] == "Sequential" and model._input_layer is not None:
        out["build_config"] = {"input_shape": _json_shape(model._input_layer.batch_shape)}
    return out


_OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adamax", "Nadam")
# Keras's loss and metric classes that compat has, by class name: (options passed to
# compat's class of that name, options compat lacks and their Keras defaults). A file's loss
# or metric object is built only from this table (its module is never imported). Keras's
# ``Accuracy`` class (exact equality) is not compat's ``Accuracy`` (the "accuracy" string's
# chooser): left out.
_CROSSENTROPY = ("name", "reduction", "from_logits", "label_smoothing", "axis", "dtype")
_LOSSES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "CategoricalCrossentropy": (_CROSSENTROPY, {}),
    "SparseCategoricalCrossentropy": (
        ("name", "reduction", "from_logits", "ignore_class", "dtype"),
        {},
    ),
    "BinaryCrossentropy": (_CROSSENTROPY, {}),
    "MeanSquaredError": (("name", "reduction", "dtype"), {}),
}
_METRICS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "CategoricalAccuracy": (("name", "dtype"), {}),
    "SparseCategoricalAccuracy": (("name", "dtype"), {}),
    "BinaryAccuracy": (("name", "dtype", "threshold"), {}),
    "TopKCategoricalAccuracy": (("name", "dtype", "k"), {}),
    "SparseTopKCategoricalAccuracy": (("name", "dtype", "k"), {}),
    "AUC": (
        ("name", "dtype", "num_thresholds", "curve"),
        {"summation_method": "interpolation", "multi_label": False, "num_labels": None,
         "label_weights": None, "from_logits": False},
    ),
    "Precision": (("name", "dtype", "thresholds"), {"top_k": None, "class_id": None}),
    "Recall": (("name", "dtype", "thresholds"), {"top_k": None, "class_id": None}),
}  # fmt: skip


def _loss_config(loss: Any) -> dict[str, Any] | None:
    """Keras's serialised form of one of compat's own loss objects (``None``: not one)."""
    from compat import losses

    cls = type(loss).__name__
    if cls not in _LOSSES or type(loss) is not getattr(losses, cls):
        return None
    config: dict[str, Any] = {"name": loss.name, "reduction": "sum_over_batch_size"}
    if cls != "MeanSquaredError":
        config["from_logits"] = loss.from_logits
    if cls == "SparseCategoricalCrossentropy":
        config["ignore_class"] = None
    elif cls != "MeanSquaredError":
        config.update(label_smoothing=loss.label_smoothing, axis=-1)
    return {"module": "keras.losses", "class_name": cls, "config": config,
            "registered_name": None}  # fmt: skip


def _metric_config(metric: Any) -> Any:
    """Keras's serialised form of a compiled metric: a name as given, or one of compat's
    own metric objects as Keras's config (``None``: neither)."""
    from compat import metrics

    if isinstance(metric, str):
        return metric
    cls = type(metric).__name__
    if cls not in _METRICS or type(metric) is not getattr(metrics, cls):
        return None
    config: dict[str, Any] = {"name": metric.name, "dtype": "float32"}
    if cls == "BinaryAccuracy":
        config["threshold"] = metric.threshold
    elif "k" in _METRICS[cls][0]:
        config["k"] = metric.k
    elif cls == "AUC":
        config.update(num_thresholds=metric.num_thresholds, curve="ROC", **_METRICS[cls][1])
    elif cls in ("Precision", "Recall"):
        config["thresholds"] = None if metric.threshold == 0.5 else metric.threshold
        config.update(_METRICS[cls][1])
    return {"module": "keras.metrics", "class_name": cls, "config": config,
            "registered_name": None}  # fmt: skip


def _compile_object(value: Any, what: str) -> tuple[Any, str | None]:
    """A file's loss (``what="loss"``) or metric: a name as it is, Keras's serialised object
    as compat's own class of that name from :data:`_LOSSES`/:data:`_METRICS`; else the
    problem, for one error."""
    from compat import losses, metrics

    if isinstance(value, str):
        return value, None
    table, module = (_LOSSES, losses) if what == "loss" else (_METRICS, metrics)
    if not isinstance(value, dict) or not isinstance(value.get("config"), dict):
        return None, f"{what} {_short(value)}"
    cls, config = value.get("class_name"), value["config"]
    source = str(value.get("module") or "keras")
    if not (source == "keras" or source.startswith("keras.")) or value.get(
        "registered_name"
    ) not in (None, cls):
        return None, (
            f"{what} {cls!r} from module {source!r} registered as "
            f"{value.get('registered_name')!r}, a custom object (never imported)"
        )
    if cls not in table:
        return None, f"{what} {cls!r} (compat builds {sorted(table)} and names)"
    passed, fixed = table[cls]
    unknown = sorted(set(config) - set(passed) - set(fixed))
    if unknown:
        return None, f"{what} {cls} with unknown options {unknown}"
    for key, default in fixed.items():
        if key in config and config[key] != default:
            return None, f"{what} {cls}({key}={_short(config[key])}): compat has only {default!r}"
    try:
        return getattr(module, cls)(**{k: config[k] for k in passed if k in config}), None
    except (TypeError, ValueError, NotImplementedError) as err:
        return None, f"{what} {cls} ({err})"


def _compile_config(model: Any) -> dict[str, Any] | None:
    """Keras's ``compile_config``; ``None`` when compiled with something Keras's config
    cannot name here (a loss or metric object, a learning-rate schedule): not written."""
    from compat import optimizers

    config = model._compile_config
    if config is None:
        return None
    kwargs = config.compile_kwargs()
    opt = kwargs["optimizer"]
    if isinstance(opt, optimizers.Optimizer):
        cls = type(opt).__name__
        opt_config = opt.get_config()
        if cls not in _OPTIMIZERS or type(opt) is not getattr(optimizers, cls):
            return None
        if not all(
            v is None or isinstance(v, (bool, int, float, str)) for v in opt_config.values()
        ):
            return None
        opt = {"module": "keras.optimizers", "class_name": cls, "config": opt_config,
               "registered_name": None}  # fmt: skip
    elif not isinstance(opt, str):
        return None
    loss, metrics = kwargs["loss"], [_metric_config(m) for m in kwargs["metrics"]]
    if not (loss is None or isinstance(loss, str)):
        loss = _loss_config(loss)
        if loss is None:
            return None
    if any(m is None for m in metrics):
        return None
    return {
        "optimizer": opt,
        "loss": loss,
        "loss_weights": None,
        "metrics": metrics or None,
        "weighted_metrics": None,
        "run_eagerly": False,
        "steps_per_execution": 1,
        "jit_compile": False,
    }


# ----- Keras config -> compat --------------------------------------------------------------


def _check_entry(entry: Any, where: str) -> tuple[str, dict[str, Any]]:
    """The class name and config of a serialised object, refusing anything but Keras's own."""
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        raise KerasFileError(f"{where}: expected a serialised Keras layer, got {_short(entry)}.")
    cls = entry.get("class_name")
    module = entry.get("module")
    registered = entry.get("registered_name")
    if cls == "Lambda":
        raise KerasFileError(
            f"{where}: a Lambda layer holds Python code; compat never deserialises code from a "
            "file (Keras refuses it too in safe_mode). Rebuild that part in code and load the "
            "weights with load_weights()."
        )
    if module is not None and not (module == "keras" or str(module).startswith("keras.")):
        raise KerasFileError(
            f"{where}: class {cls!r} from module {module!r} is a custom object; compat builds "
            "only its own layers from a file, never code it names."
        )
    if cls in _APPLICATION_LAYERS and module != _APPLICATION_LAYERS[cls][0]:
        raise KerasFileError(
            f"{where}: class {cls!r} from module {module!r}; compat builds Keras's "
            f"{cls} of {_APPLICATION_LAYERS[cls][0]} only."
        )
    if registered not in (None, cls):
        raise KerasFileError(
            f"{where}: {cls!r} is registered as {registered!r}, a custom object; compat builds "
            "only Keras's own layers from a file."
        )
    if cls not in LAYERS and cls not in _MODELS and cls != "InputLayer":
        raise KerasFileError(
            f"{where}: layer class {cls!r} is not one compat builds from a Keras file "
            f"(supported: {', '.join(sorted([*LAYERS, 'InputLayer', *_MODELS[:2]]))})."
        )
    return cls, entry["config"]


def _layer_from_config(cls: str, config: dict[str, Any], where: str) -> Any:
    from compat import layers

    _, passed, fixed, _ = LAYERS[cls]
    unknown = sorted(set(config) - set(passed) - set(fixed) - set(_BASE))
    if unknown:
        raise KerasFileError(f"{where}: unknown {cls} options {unknown} (not Keras 3's).")
    for key, default in fixed.items():
        if key in config and config[key] != default:
            raise KerasFileError(
                f"{where}: {key}={_short(config[key])}; compat's {cls} supports only "
                f"{key}={default!r}."
            )
    _check_dtype(config.get("dtype"), where)
    kwargs: dict[str, Any] = {}
    for key in passed:
        if key not in config:
            continue
        value = config[key]
        if key.endswith("_initializer"):
            value = _initializer_name(value, where)
        elif key.endswith("_regularizer"):
            value = _regularizer(value, where)
        elif key == "activation":
            value = _activation(value, where)
        elif key in ("kernel_size", "strides", "dilation_rate", "pool_size", "target_shape"):
            value = tuple(value) if isinstance(value, list) else value
        elif key == "padding" and isinstance(value, list):
            value = tuple(tuple(p) if isinstance(p, list) else p for p in value)
        kwargs[key] = value
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise KerasFileError(f"{where}: a layer without a name ({_short(name)}).")
    if cls in _APPLICATION_LAYERS:
        import importlib

        source = importlib.import_module(_APPLICATION_LAYERS[cls][1])
    else:
        source = layers
    try:
        layer = getattr(source, cls)(name=name, **kwargs)
    except (TypeError, ValueError, NotImplementedError) as err:
        raise KerasFileError(f"{where}: compat cannot build it: {err}") from None
    layer.trainable = bool(config.get("trainable", True))
    return layer


def _check_dtype(dtype: Any, where: str) -> None:
    name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
    if name not in (None, "float32"):
        raise KerasFileError(
            f"{where}: dtype policy {name!r}; compat builds float32 layers only (use "
            "compat.mixed_precision for mixed precision)."
        )


def _input_layer(config: dict[str, Any], where: str) -> Any:
    from compat.layers import InputLayer

    shape = config.get("batch_shape") or config.get("batch_input_shape")
    if not isinstance(shape, list) or not all(d is None or isinstance(d, int) for d in shape):
        raise KerasFileError(
            f"{where}: an input layer without a valid batch_shape ({_short(shape)})."
        )
    _check_dtype(config.get("dtype"), where)
    if config.get("sparse") or config.get("ragged"):
        raise KerasFileError(f"{where}: sparse or ragged inputs are not supported.")
    return InputLayer(batch_shape=tuple(shape), name=config.get("name"))


_OPS_MODULE = "keras.src.ops.numpy"


def _operation(entry: dict[str, Any], where: str) -> Any:
    """Keras's serialised operation node (``x + 3.0``, ``keras.ops.pad`` on a KerasTensor),
    its call's constants set when its node is read (:func:`_functional`)."""
    from compat.ops import NumpyOperation, PadOperation

    known = sorted([*NumpyOperation.FUNCTIONS, PadOperation.op])
    cls, config = entry.get("class_name"), entry.get("config")
    if (
        entry.get("module") != _OPS_MODULE
        or cls not in known
        or entry.get("registered_name") not in (None, cls)
    ):
        raise KerasFileError(
            f"{where}: operation {cls!r} from {entry.get('module')!r}; compat builds the "
            f"operations {known} of {_OPS_MODULE} only."
        )
    name = config.get("name") if isinstance(config, dict) else None
    allowed = {"name", "pad_width", "mode"} if cls == PadOperation.op else {"name"}
    if not isinstance(name, str) or not name or set(config) - allowed:
        raise KerasFileError(
            f"{where}: an operation config that is not Keras's ({_short(config)})."
        )
    if cls != PadOperation.op:
        return NumpyOperation(cls, name=name)
    try:
        return PadOperation(config.get("pad_width"), config.get("mode", "constant"), name=name)
    except ValueError as err:
        raise KerasFileError(f"{where}: {err}") from None


def build(entry: Any, where: str = "config.json") -> Any:
    """A compat model or layer from Keras's serialised form (``config.json``)."""
    if isinstance(entry, dict) and str(entry.get("module", "")).startswith("keras.src.ops"):
        return _operation(entry, f"{where}: operation '{(entry.get('config') or {}).get('name')}'")
    cls, config = _check_entry(entry, where)
    where = f"{where}: {cls} '{config.get('name')}'"
    if cls == "Sequential":
        return _sequential(config, where)
    if cls in ("Functional", "Model"):
        return _functional(config, where)
    if cls == "InputLayer":
        return _input_layer(config, where)
    return _layer_from_config(cls, config, where)


# what building a layer on shapes a file chose may raise (torch's size overflows included)
_BUILD_ERRORS = (TypeError, ValueError, NotImplementedError, RuntimeError, OverflowError)


def _sequential(config: dict[str, Any], where: str) -> Any:
    from compat.layers import InputLayer
    from compat.models import Sequential

    entries = config.get("layers")
    if not isinstance(entries, list):
        raise KerasFileError(f"{where}: no layer list.")
    model = Sequential(name=config.get("name"))
    for i, entry in enumerate(entries):
        layer = build(entry, f"{where}, layer {i}")
        if _is_operation(layer):
            raise KerasFileError(f"{where}: operation {layer.name!r} in a Sequential model.")
        try:
            model.add(layer)
        except _BUILD_ERRORS as err:
            raise KerasFileError(f"{where}: adding layer {layer.name!r}: {err}") from None
    shape = config.get("build_input_shape")
    if model._input_layer is None and isinstance(shape, list):
        model.build(tuple(shape))
    if model._input_layer is None:
        raise KerasFileError(f"{where}: no input shape (an unbuilt Sequential has no weights).")
    if not isinstance(model._input_layer, InputLayer):  # pragma: no cover - add() makes one
        raise KerasFileError(f"{where}: no input layer.")
    if config.get("trainable", True) is False:  # True leaves the layers' own flags (Keras)
        model.trainable = False
    return model


def _ref(value: Any, where: str) -> tuple[str, int, int]:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        value = (value.get("config") or {}).get("keras_history")
    if (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], str)
        and all(isinstance(v, int) for v in value[1:])
    ):
        return value[0], value[1], value[2]
    raise KerasFileError(f"{where}: a tensor reference that is not Keras's ({_short(value)}).")


def _functional(config: dict[str, Any], where: str) -> Any:
    from compat.models import Model

    entries = config.get("layers")
    if not isinstance(entries, list):
        raise KerasFileError(f"{where}: no layer list.")
    built: dict[str, Any] = {}
    pending = []
    for i, entry in enumerate(entries):
        layer = build(entry, f"{where}, layer {i}")
        if layer.name in built:
            raise KerasFileError(f"{where}: two layers named {layer.name!r}.")
        built[layer.name] = layer
        nodes = entry.get("inbound_nodes")
        if not isinstance(nodes, list):
            raise KerasFileError(f"{where}: layer {layer.name!r} without inbound_nodes.")
        pending.extend((layer, n, k) for k, n in enumerate(nodes))
    outputs: dict[tuple[str, int], Any] = {}
    for name, layer in built.items():
        if hasattr(layer, "batch_shape"):
            outputs[(name, 0)] = layer._output_tensor
    while pending:
        waiting = []
        for layer, node, k in pending:
            if not isinstance(node, dict) or not isinstance(node.get("args"), list):
                raise KerasFileError(f"{where}: layer {layer.name!r}: a node that is not Keras's.")
            args, kwargs = node["args"], node.get("kwargs") or {}
            if _is_operation(layer):
                if not _call_operation(layer, node, k, outputs, where):
                    waiting.append((layer, node, k))
                continue
            mask = kwargs.get("mask")
            no_mask = mask is None or (isinstance(mask, list) and all(m is None for m in mask))
            if len(args) != 1 or set(kwargs) - {"training", "mask"} or not no_mask:
                raise KerasFileError(
                    f"{where}: layer {layer.name!r} is called with {_short(node)}; compat "
                    "calls layers on one tensor or a list and training= only."
                )
            arg = args[0]
            multi = isinstance(arg, list) and not (len(arg) == 3 and isinstance(arg[0], str))
            refs = [_ref(a, where) for a in (arg if multi else [arg])]
            keys = [(r[0], r[1]) for r in refs]
            if not all(key in outputs for key in keys):
                waiting.append((layer, node, k))
                continue
            inputs = [outputs[key] for key in keys]
            call = {"training": kwargs["training"]} if kwargs.get("training") is not None else {}
            try:
                out = layer(inputs if multi else inputs[0], **call)
            except _BUILD_ERRORS as err:
                raise KerasFileError(f"{where}: calling layer {layer.name!r}: {err}") from None
            outputs[(layer.name, k)] = out
        if len(waiting) == len(pending):
            missing = sorted(
                {r[0] for _, n, _ in waiting for r in _node_refs(n, where)} - set(built)
            )
            raise KerasFileError(
                f"{where}: the graph cannot be built: layers {[w[0].name for w in waiting][:5]} "
                f"wait on tensors never made (unknown layers: {missing[:5]})."
            )
        pending = waiting

    def ends(value: Any, what: str) -> tuple[Any, bool]:
        structured = isinstance(value, list) and bool(value) and isinstance(value[0], list)
        refs = [_ref(v, where) for v in (value if structured else [value])]
        try:
            return [outputs[(r[0], r[1] - _first_call(built.get(r[0])))] for r in refs], structured
        except KeyError:
            raise KerasFileError(f"{where}: {what} {_short(value)} name no built tensor.") from None

    ins, in_struct = ends(config.get("input_layers"), "input_layers")
    outs, out_struct = ends(config.get("output_layers"), "output_layers")
    model = Model(
        ins if in_struct else ins[0], outs if out_struct else outs[0], name=config.get("name")
    )
    if config.get("trainable", True) is False:  # True leaves the layers' own flags (Keras)
        model.trainable = False
    return model


def _operation_args(node: dict[str, Any], where: str, kwargs: Any = ()) -> list[Any]:
    """An operation node's arguments: tensor references and numbers (the constants); its
    keyword arguments may only be those named in ``kwargs``."""
    args = node["args"]
    if set(node.get("kwargs") or {}) - set(kwargs) or not 1 <= len(args) <= 2:
        raise KerasFileError(
            f"{where}: an operation called with {_short(node)}; compat builds operations on "
            "two arguments (tensors or numbers)"
            + (f" and keyword arguments {sorted(kwargs)}." if kwargs else " without keywords.")
        )
    return [
        a if isinstance(a, (int, float)) else _ref(a, where)  # bool too: x + True, as Keras
        for a in args
    ]


def _call_operation(
    layer: Any, node: dict[str, Any], k: int, outputs: dict[tuple[str, int], Any], where: str
) -> bool:
    """Call the operation ``layer`` on its node's tensors and constants; False while a
    tensor it needs is not made yet."""
    keywords = ("constant_values",) if hasattr(layer, "set_node_constant") else ()
    args = _operation_args(node, f"{where}: operation {layer.name!r}", keywords)
    refs = [a for a in args if isinstance(a, tuple)]
    if not all((r[0], r[1]) in outputs for r in refs):
        return False
    try:
        if keywords:  # Pad: one tensor, its constant a keyword argument
            if len(args) != 1 or len(refs) != 1:
                raise ValueError(f"expected one tensor argument, received {_short(node)}")
            layer.set_node_constant((node.get("kwargs") or {}).get("constant_values"))
        else:
            layer.set_operands([None if isinstance(a, tuple) else a for a in args])
        inputs = [outputs[(r[0], r[1])] for r in refs]
        out = layer(inputs if len(inputs) > 1 else inputs[0])
    except _BUILD_ERRORS as err:
        raise KerasFileError(f"{where}: calling operation {layer.name!r}: {err}") from None
    outputs[(layer.name, k)] = out
    return True


def _node_refs(node: Any, where: str) -> list[tuple[str, int, int]]:
    try:
        if len(node["args"]) > 1:
            return [a for a in _operation_args(node, where) if isinstance(a, tuple)]
        arg = node["args"][0]
        multi = isinstance(arg, list) and not (len(arg) == 3 and isinstance(arg[0], str))
        return [_ref(a, where) for a in (arg if multi else [arg])]
    except (KerasFileError, LookupError, TypeError):
        return []


def _build_checked(entry: Any, where: str) -> Any:
    """Build on torch's meta device first: a config that declares huge layers allocates
    nothing before its variables are checked against the weights file."""
    with torch.device("meta"):
        return build(entry, where)


# ----- weights -------------------------------------------------------------------------


def _keras_layers(model: Any) -> list[Any]:
    """The layers Keras's weights file walks (Sequential: without its input layer)."""
    from compat.models import Sequential

    if isinstance(model, Sequential):
        return model.layers
    from compat.graph import map_graph

    return [x for x in map_graph(model._inputs, model._outputs)[1] if _as_operation(x) is None]


def _is_operation(layer: Any) -> bool:
    """A ``keras.ops`` node of a graph (``x + 3.0``): in Keras's config, not a layer of it."""
    return bool(getattr(layer, "_keras_operation", False))


def _as_operation(layer: Any) -> Any:
    """The operation node ``layer`` is written as: itself for an operation, the one an
    application's layer declares (``keras_operation()``: what no Keras layer computes, such
    as -inf padding), else ``None``."""
    if _is_operation(layer):
        return layer
    declared = getattr(layer, "keras_operation", None)
    return declared() if callable(declared) else None


def weight_entries(model: Any, prefix: str = "") -> Iterator[tuple[str, str, list[Any]]]:
    """``(group path, layer name, own variables)`` for every layer, as Keras names the
    groups of a ``.weights.h5`` (``layers/<snake class>[_i]``, nested models recursively)."""
    from compat.models import Model

    used: dict[str, int] = {}
    for layer in _keras_order(model):
        path = f"{prefix}layers/{_unique(snake_case(_keras_class(layer)), used)}"
        if isinstance(layer, Model):
            yield path, layer.name, []
            yield from weight_entries(layer, path + "/")
        else:
            yield path, layer.name, layer._own_variables()


def _expanded(model: Any) -> list[Any]:
    """compat's layers with the layers Keras needs before some of them (:func:`pre_layers`)."""
    out: list[Any] = []
    for layer in _keras_layers(model):
        out.extend(pre_layers(layer))
        out.append(layer)
    return out


def _keras_order(model: Any) -> list[Any]:
    """The layers in the order Keras walks them once it has built ``model``'s written config:
    with written-only layers (:func:`pre_layers`) the graph's order is Keras's own, so it
    comes from building that config (on the meta device: nothing is allocated)."""
    from compat.models import Sequential

    layers = _expanded(model)
    if isinstance(model, Sequential) or len(layers) == len(_keras_layers(model)):
        return layers
    by_name = {layer.name: layer for layer in layers}
    from compat import backend

    config = json.loads(json.dumps(serialize_layer(model)))
    counters = dict(backend._COUNTERS)
    try:
        with torch.device("meta"):
            rebuilt = build(config, f"model '{model.name}'")
    finally:  # the session's automatic names are left as they were
        backend._COUNTERS.clear()
        backend._COUNTERS.update(counters)
    return [by_name[layer.name] for layer in _keras_layers(rebuilt)]


def _unique(name: str, used: dict[str, int]) -> str:
    """Keras's ``_get_unique_name``: ``dense``, ``dense_1``, ..."""
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name


def _write_weights_h5(model: Any, target: Any) -> None:
    h5py = _h5py()

    with h5py.File(target, "w") as f:
        f.create_group("vars").attrs["name"] = model.name
        f.create_group("layers")
        for path, name, variables in weight_entries(model):
            group = f.require_group(path).create_group("vars")
            group.attrs["name"] = name
            for i, var in enumerate(variables):
                group.create_dataset(str(i), data=var.numpy())


def _check_h5_sizes(f: Any, where: str, file_size: int) -> None:
    """Refuse datasets that declare more bytes than the file holds (Keras never compresses)."""
    problems: list[str] = []

    def visit(name: str, obj: Any) -> None:
        h5py = _h5py()

        if isinstance(obj, h5py.Dataset):
            if obj.dtype.kind not in "fiub":
                problems.append(f"{name} is of type {obj.dtype} (weights are numbers)")
            elif obj.size * obj.dtype.itemsize > file_size:
                problems.append(
                    f"{name} declares shape {obj.shape} ({obj.size * obj.dtype.itemsize:,} bytes) "
                    f"in a file of {file_size:,} bytes"
                )

    f.visititems(visit)
    if problems:
        raise KerasFileError(f"{where} is crafted or damaged: {problems[0]}.")


def _plan_layer(
    plan: list[tuple[Any, Any]],
    labelled: Iterable[tuple[str, Any, Any]],
    where: str,
    skip_mismatch: bool,
) -> None:
    """Add one layer's ``(variable, dataset)`` pairs to ``plan`` once every dataset has its
    variable's shape; a mismatch raises (``label`` names the variable) or, with
    ``skip_mismatch``, leaves the whole layer out, as Keras's ``skip_mismatch``."""
    h5py = _h5py()
    layer_plan = []
    for label, var, data in labelled:
        if not isinstance(data, h5py.Dataset) or tuple(data.shape) != var.shape:
            if skip_mismatch:
                return
            got = tuple(data.shape) if isinstance(data, h5py.Dataset) else "a group"
            raise KerasFileError(
                f"{where}: variable {label} has shape {got} in the file; the model expects "
                f"{var.shape}."
            )
        layer_plan.append((var, data))
    plan.extend(layer_plan)


def _listed_weights(
    group: Any, variables: list[Any], weight_names: list[str], layer_name: str, where: str
) -> Iterator[tuple[str, Any, Any]]:
    """A legacy ``.h5`` layer's ``(label, variable, dataset)`` for :func:`_plan_layer`; a
    weight that the group lists but lacks is an error (whatever ``skip_mismatch`` says)."""
    h5py = _h5py()
    for var, wname in zip(variables, weight_names, strict=True):
        data = group.get(wname)
        if not isinstance(data, h5py.Dataset):
            raise KerasFileError(f"{where}: layer '{layer_name}' lists {wname} but lacks it.")
        yield f"{wname} of layer '{layer_name}'", var, data


def _read_weights_h5(model: Any, f: Any, where: str, skip_mismatch: bool = False) -> None:
    """Check every variable of ``model`` against the file, then assign them all."""
    h5py = _h5py()

    plan: list[tuple[Any, np.ndarray]] = []
    seen: set[str] = set()
    for path, name, variables in weight_entries(model):
        seen.add(path)
        group = f.get(path + "/vars")
        if any(isinstance(v, _Array) for v in variables):
            _check_fixed(group, path, name, variables, where)
            continue
        if not isinstance(group, h5py.Group):
            if not variables:
                continue
            raise KerasFileError(
                f"{where} has no weights for layer '{name}' (expected group {path}/vars with "
                f"{len(variables)} variables)."
            )
        keys = sorted(group.keys(), key=lambda k: (len(k), k))
        wanted = [str(i) for i in range(len(variables))]
        if keys != wanted:
            if skip_mismatch:
                continue
            raise KerasFileError(
                f"{where}: layer '{name}' ({path}/vars) holds variables {keys}; the model's "
                f"layer has {len(variables)} ({[v.name for v in variables]})."
            )
        labelled = (
            (f"{var.name} of layer '{name}' ({path}/vars/{i})", var, group[str(i)])
            for i, var in enumerate(variables)
        )
        _plan_layer(plan, labelled, where, skip_mismatch)
    extra = _extra_groups(f, seen)
    if extra and not skip_mismatch:
        raise KerasFileError(
            f"{where} holds weights for layers the model does not have: {extra[:5]} "
            f"(the model's: {sorted(seen)[:5]}...)."
        )
    _assign(plan)


def _torch_way(name: str, where: str) -> KerasFileError:
    return KerasFileError(
        f"{where} was not written for this model: its layer '{name}' (compat's input map of "
        "the timm weights, or torch's symmetric padding) is missing or differs. This compat "
        "application is the torch variant of Keras's; Keras's own weights are for Keras's "
        "architecture: load Keras's .keras (or .h5) model with load_model, which builds it."
    )


def _check_fixed(group: Any, path: str, name: str, variables: list[Any], where: str) -> None:
    """A layer that compat writes but computes inside another (:func:`pre_layers`): the
    file must hold the same values (a file compat wrote for this same model)."""
    h5py = _h5py()
    if not isinstance(group, h5py.Group) or len(group) != len(variables):
        raise _torch_way(name, where)
    for i, var in enumerate(variables):
        data = group.get(str(i))
        if not isinstance(data, h5py.Dataset) or tuple(data.shape) != var.shape:
            raise _torch_way(name, where)
        if not np.array_equal(np.asarray(data[()]), var.numpy()):
            raise _torch_way(name, where)


def _extra_groups(f: Any, seen: set[str]) -> list[str]:
    h5py = _h5py()

    extra = []

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Group) or not name.startswith("layers/"):
            return
        parts = name.split("/")
        if parts[-2] == "layers" and name not in seen:
            has_vars = isinstance(obj.get("vars"), h5py.Group) and len(obj["vars"]) > 0
            if has_vars or any(k not in ("vars", "layers") for k in obj):
                extra.append(name)

    f.visititems(visit)
    return extra


def _assign(plan: list[tuple[Any, Any]]) -> None:
    """Read every value first (a read error leaves the model as it was), then assign."""
    values = [(var, np.asarray(data[()])) for var, data in plan]
    for var, value in values:
        var.assign(value)


# ----- files -----------------------------------------------------------------------------


def _warn_uncompiled(model: Any, filepath: str) -> None:
    if model._compile_config is not None and _compile_config(model) is None:
        import warnings

        warnings.warn(
            f"{filepath}: the model's compile() arguments (a loss or metric object of your "
            "own, a learning-rate schedule) have no Keras config in compat and are not written: "
            "load_model gives the model uncompiled (save as .pt to keep them).",
            UserWarning,
            stacklevel=4,
        )


def save_keras(model: Any, filepath: str) -> None:
    """Write ``model`` as a Keras 3 ``.keras`` archive (config, metadata, HDF5 weights)."""
    config = json.dumps(model_config(model))
    _warn_uncompiled(model, filepath)
    metadata = json.dumps({"keras_version": KERAS_VERSION, "date_saved": _now()})
    weights = io.BytesIO()
    _write_weights_h5(model, weights)
    with atomic_path(filepath) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        archive.writestr("metadata.json", metadata)
        archive.writestr("config.json", config)
        archive.writestr("model.weights.h5", weights.getvalue())


def _now() -> str:
    import datetime

    return datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")


def save_weights_h5(model: Any, filepath: str) -> None:
    """Write ``model``'s weights as Keras 3's ``.weights.h5``."""
    with atomic_path(filepath) as tmp:
        _write_weights_h5(model, tmp)


def _open_archive(path: str) -> tuple[dict[str, Any], bytes]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = {i.filename: i for i in archive.infolist()}
            for name in ("config.json", "model.weights.h5"):
                if name not in infos:
                    raise KerasFileError(f"{path} is a .keras archive without {name}.")
            sizes = {n: infos[n].file_size for n in ("config.json", "model.weights.h5")}
            if sizes["config.json"] > _MAX_CONFIG_BYTES:
                raise KerasFileError(
                    f"{path}: config.json declares {sizes['config.json']:,} bytes (at most "
                    f"{_MAX_CONFIG_BYTES:,} are read)."
                )
            limit = os.path.getsize(path) * 2 + 2**20
            if sizes["model.weights.h5"] > limit:
                raise KerasFileError(
                    f"{path}: model.weights.h5 declares {sizes['model.weights.h5']:,} bytes in an "
                    f"archive of {os.path.getsize(path):,} (Keras stores its weights uncompressed)."
                )
            config = json.loads(archive.read("config.json"))
            weights = archive.read("model.weights.h5")
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise KerasFileError(f"{path} is a damaged .keras archive ({err}).") from None
    if not isinstance(config, dict):
        raise KerasFileError(f"{path}: config.json is not a serialised model.")
    return config, weights


def _h5(data: Any, where: str) -> Any:
    h5py = _h5py()

    try:
        return h5py.File(data, "r")
    except OSError as err:
        raise KerasFileError(f"{where} is not a readable HDF5 file ({err}).") from None


def load_keras(path: str, *, compile: bool = True) -> Any:
    """A compat model from a Keras 3 ``.keras`` archive."""
    config, weights = _open_archive(path)
    where = f"{path} (model.weights.h5)"
    with _h5(io.BytesIO(weights), where) as f:
        _check_h5_sizes(f, where, len(weights))
        model = _build_checked(config, f"{path}: config.json")
        _check_against(model, f, where)
        model = build(config, f"{path}: config.json")
        _read_weights_h5(model, f, where)
    model.eval()
    if compile:
        _compile(model, config.get("compile_config"), path)
    return model


def _check_against(model: Any, f: Any, where: str) -> None:
    """Shape checks on a meta-device model (nothing allocated, nothing assigned)."""
    h5py = _h5py()

    for path, name, variables in weight_entries(model):
        group = f.get(path + "/vars")
        for i, var in enumerate(variables):
            data = group.get(str(i)) if isinstance(group, h5py.Group) else None
            if not isinstance(data, h5py.Dataset) or tuple(data.shape) != var.shape:
                got = tuple(data.shape) if isinstance(data, h5py.Dataset) else "nothing"
                raise KerasFileError(
                    f"{where}: variable {var.name} of layer '{name}' ({path}/vars/{i}) has "
                    f"{got} in the file; the model's config gives it shape {var.shape}."
                )


def _compile(model: Any, config: Any, path: str) -> None:
    """``compile()`` from Keras's ``compile_config``: optimizers, losses and metrics by name
    or as compat's own classes (fixed tables, nothing imported); anything else is one error
    with the way out."""
    from compat import optimizers

    if not isinstance(config, dict) or not config:
        return
    opt, loss, metrics = config.get("optimizer"), config.get("loss"), config.get("metrics")
    problem = None
    if isinstance(opt, dict):
        cls, opt_config = opt.get("class_name"), opt.get("config")
        module = str(opt.get("module") or "keras")
        if (
            cls not in _OPTIMIZERS
            or not module.startswith("keras")
            or not isinstance(opt_config, dict)
        ):
            problem = f"optimizer {_short(opt)}"
        else:
            try:
                opt = getattr(optimizers, cls)(**opt_config)
            except (TypeError, ValueError, NotImplementedError) as err:
                problem = f"optimizer {cls} ({err})"
    elif not isinstance(opt, str):
        problem = f"optimizer {_short(opt)}"
    if loss is not None:
        loss, loss_problem = _compile_object(loss, "loss")
        problem = problem or loss_problem
    if metrics is not None:
        if not isinstance(metrics, list):
            problem = problem or f"metrics {_short(metrics)}"
        else:
            built = [_compile_object(m, "metric") for m in metrics]
            metrics = [m for m, _ in built]
            problem = problem or next((p for _, p in built if p), None)
    if problem is None:
        try:
            model.compile(optimizer=opt, loss=loss, metrics=metrics or None)
            return
        except (ValueError, NotImplementedError, TypeError) as err:
            problem = str(err)
    raise KerasFileError(
        f"{path}: compat cannot compile the model from its compile_config: {problem}. Load it "
        "with compile=False and call compile() yourself."
    )


def load_weights(model: Any, path: str, *, skip_mismatch: bool = False) -> None:
    """Keras's weights (``.weights.h5``, a legacy ``.h5``, or a ``.keras`` archive) into a
    compat model: all checked before any is assigned."""
    from ftlight.files import sniff

    if sniff(path).startswith("a Keras 3 .keras archive"):
        _, weights = _open_archive(path)
        data, where, size = io.BytesIO(weights), f"{path} (model.weights.h5)", len(weights)
    else:
        data, where, size = path, path, os.path.getsize(path)
    with _h5(data, where) as f:
        _check_h5_sizes(f, where, size)
        try:
            if _is_legacy(f):
                _read_legacy_weights(model, f, where, skip_mismatch)
            else:
                _read_weights_h5(model, f, where, skip_mismatch)
        except NotWritableError as err:
            raise KerasFileError(
                f"{where}: Keras's weights cannot be matched to model '{model.name}': {err}"
            ) from None


# ----- legacy .h5 ------------------------------------------------------------------------


def _is_legacy(f: Any) -> bool:
    return "layer_names" in f.attrs or "model_weights" in f


def _attr_text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value.tolist()]
    return value


def _legacy_variables(layer: Any) -> list[Any]:
    """Keras's ``_legacy_weights``: a layer's trainable then non-trainable variables, the
    order of a legacy ``.h5`` layer group's ``weight_names``."""
    if isinstance(layer, _Pseudo):
        return layer._own_variables()
    return layer.trainable_weights + layer.non_trainable_weights


def _legacy_pairs(model: Any, f: Any, where: str) -> list[tuple[Any, str, Any, list[str]]]:
    """``(layer, file layer name, its group, its weight_names)`` as Keras 3's legacy
    ``load_weights_from_hdf5_group`` pairs them: the model's layers that have weights with
    the file's layer groups that list weights, by order (names are not compared)."""
    h5py = _h5py()

    root = f.get("model_weights", f)
    names = _attr_text(root.attrs.get("layer_names", []))
    if not isinstance(names, list):
        raise KerasFileError(f"{where}: its layer_names attribute is not a list of names.")
    saved = []
    for name in names:
        group = root.get(name)
        if not isinstance(group, h5py.Group):
            raise KerasFileError(f"{where} lists layer '{name}' but holds no group for it.")
        weight_names = _attr_text(group.attrs.get("weight_names", []))
        if not isinstance(weight_names, list):
            raise KerasFileError(f"{where}: layer '{name}' has no list of weight_names.")
        if weight_names:
            saved.append((name, group, weight_names))
    layers = [layer for layer in _keras_order(model) if _legacy_variables(layer)]
    if len(saved) != len(layers):
        raise KerasFileError(
            f"{where} holds weights for {len(saved)} layers ({[s[0] for s in saved][:6]}); "
            f"model '{model.name}' has {len(layers)} layers with weights "
            f"({[layer.name for layer in layers][:6]}). A legacy .h5 is matched to the model's "
            "layers by order, as Keras 3 does."
        )
    top = root.get("top_level_model_weights")
    if isinstance(top, h5py.Group) and _attr_text(top.attrs.get("weight_names", [])):
        raise KerasFileError(
            f"{where} holds top-level model weights; model '{model.name}' has none."
        )
    return [(layer, *entry) for layer, entry in zip(layers, saved, strict=True)]


def _read_legacy_weights(model: Any, f: Any, where: str, skip_mismatch: bool = False) -> None:
    """Keras's legacy HDF5 layout (a group per layer, ``weight_names`` in order), matched as
    Keras 3 matches it: layer by layer in order, variable by variable in order;
    ``skip_mismatch`` skips a variable whose shape differs (Keras's ``_set_weights``). Every
    variable is checked before any is assigned."""
    plan: list[tuple[Any, Any]] = []
    for k, (layer, saved_name, group, weight_names) in enumerate(_legacy_pairs(model, f, where)):
        variables = _legacy_variables(layer)
        label = f"layer #{k} ('{layer.name}' in the model, '{saved_name}' in the file)"
        if isinstance(layer, _Pseudo):
            arrays = [group.get(n) for n in weight_names]
            if len(arrays) != len(variables) or not all(
                isinstance(a, _h5py().Dataset)
                and tuple(a.shape) == v.shape
                and np.array_equal(np.asarray(a[()]), v.numpy())
                for a, v in zip(arrays, variables, strict=True)
            ):
                raise _torch_way(layer.name, where)
            continue
        if len(weight_names) != len(variables):
            raise KerasFileError(
                f"{where}: {label} holds {len(weight_names)} variables ({weight_names[:4]}); "
                f"the model's layer has {len(variables)} ({[v.name for v in variables]})."
            )
        for item in _listed_weights(group, variables, weight_names, saved_name, where):
            _plan_layer(plan, [item], where, skip_mismatch)  # per variable, as Keras skips
    _assign(plan)


def load_legacy_h5(path: str, *, compile: bool = True) -> Any:
    """A compat model from Keras's legacy ``.h5`` model file (``model.save("x.h5")``)."""
    with _h5(path, path) as f:
        _check_h5_sizes(f, path, os.path.getsize(path))
        text = _attr_text(f.attrs.get("model_config"))
        if not isinstance(text, str) or len(text) > _MAX_CONFIG_BYTES:
            raise KerasFileError(
                f"{path} is an HDF5 file without a model config: a weights file? Build the "
                "model and call load_weights()."
            )
        try:
            config = json.loads(text)
        except json.JSONDecodeError as err:
            raise KerasFileError(f"{path}: its model_config is not JSON ({err}).") from None
        meta = _build_checked(config, f"{path}: model_config")
        _check_legacy_against(meta, f, path)
        model = build(config, f"{path}: model_config")
        _read_legacy_weights(model, f, path)
        training = _attr_text(f.attrs.get("training_config"))
    model.eval()
    if compile and isinstance(training, str):
        try:
            training_config = json.loads(training)
        except json.JSONDecodeError:
            training_config = None
        if isinstance(training_config, dict):
            opt = training_config.get("optimizer_config")
            if isinstance(opt, dict) and not opt.get("config"):
                opt = str(opt.get("class_name", "")).lower()  # written by name
            metrics = training_config.get("metrics")
            if not (isinstance(metrics, list) and all(isinstance(m, (str, dict)) for m in metrics)):
                metrics = None  # Keras's nested per-output lists: compile() yourself
            _compile(model, {"optimizer": opt, "loss": training_config.get("loss"),
                             "metrics": metrics}, path)  # fmt: skip
    return model


def _check_legacy_against(model: Any, f: Any, where: str) -> None:
    """Shape checks on a meta-device model, paired with the file as :func:`_read_legacy_weights`
    pairs them (nothing allocated, nothing assigned)."""
    h5py = _h5py()

    for layer, saved_name, group, weight_names in _legacy_pairs(model, f, where):
        for var, wname in zip(_legacy_variables(layer), weight_names, strict=False):
            data = group.get(wname)
            if isinstance(data, h5py.Dataset) and tuple(data.shape) != var.shape:
                raise KerasFileError(
                    f"{where}: variable {wname} of layer '{saved_name}' has shape "
                    f"{tuple(data.shape)} in the file; the model's config gives {var.shape}."
                )


def _legacy_optimizer(opt: Any) -> dict[str, Any]:
    if isinstance(opt, dict):
        return {"class_name": opt["class_name"], "config": opt["config"]}
    return {"class_name": opt, "config": {}}


def save_legacy_h5(model: Any, filepath: str) -> None:
    """Write Keras's legacy HDF5 model file (``model.save("x.h5")``): ``model_config`` and a
    ``model_weights`` group per layer name with its ``weight_names`` in order."""
    h5py = _h5py()

    from compat.models import Model, Sequential

    config = model_config(model)
    config.pop("compile_config", None)
    compile_config = _compile_config(model)
    with atomic_path(filepath) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["backend"] = "torch"
        f.attrs["keras_version"] = KERAS_VERSION
        f.attrs["model_config"] = json.dumps(config)
        if compile_config is not None:
            training = {
                "loss": compile_config["loss"],
                "metrics": compile_config["metrics"],
                "weighted_metrics": None,
                "loss_weights": None,
                "optimizer_config": _legacy_optimizer(compile_config["optimizer"]),
            }
            f.attrs["training_config"] = json.dumps(training)
        root = f.create_group("model_weights")
        layers = _keras_order(model)
        root.attrs["layer_names"] = np.array([layer.name.encode() for layer in layers])
        root.attrs["backend"] = "torch"
        root.attrs["keras_version"] = KERAS_VERSION
        prefix = f"{model.name}/" if isinstance(model, Sequential) else ""
        for layer in layers:
            group = root.create_group(layer.name)
            names = []
            if isinstance(layer, Model) and len(_expanded(layer)) != len(_keras_layers(layer)):
                raise NotWritableError(
                    f"Model '{layer.name}' inside '{model.name}' pads or maps its input the "
                    "torch way; save it as .keras, which Keras loads exactly."
                )
            for var in _legacy_variables(layer):
                if isinstance(layer, Model):
                    name = f"{layer.name}/{var.layer.name}/{var.name}"
                else:
                    name = f"{prefix}{layer.name}/{var.name}"
                group.create_dataset(name, data=var.numpy())
                names.append(name.encode())
            group.attrs["weight_names"] = np.array(names) if names else np.array([], "float64")
        top = root.create_group("top_level_model_weights")
        top.attrs["weight_names"] = np.array([], "float64")


keras_format.register(
    functional_config=functional_config,
    sequential_config=sequential_config,
    build=build,
    save_keras=save_keras,
    save_legacy_h5=save_legacy_h5,
    save_weights_h5=save_weights_h5,
    load_keras=load_keras,
    load_legacy_h5=load_legacy_h5,
    load_weights=load_weights,
)
