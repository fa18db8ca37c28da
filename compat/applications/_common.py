"""Shared plumbing: timm modules and weights from the ftlight engine, Keras's arguments."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from compat import backend, layers
from compat.graph import KerasTensor
from compat.layers import Input
from compat.layers.core import _init_weight
from compat.models import Model
from ftlight.models.backbone import load_timm_model
from ftlight.models.weights import WEIGHT_FILE_SUFFIXES, is_weight_file


def timm_model(
    name: str, weights: Any, include_top: bool, classes: int, **timm_kwargs: Any
) -> nn.Module:
    """The timm model (classifier kept) for ``weights``; never falls back to random weights.

    Weights are resolved by the engine (:func:`ftlight.models.backbone.load_timm_model`); a compat
    ``save_weights`` file is loaded later by :func:`finish_weights`. ``timm_kwargs`` go to
    ``timm.create_model`` (not for ``weights="imagenet"``).
    """
    if weights is None or _is_compat_weights(weights):
        return load_timm_model(name, None, **timm_kwargs)[0]
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(
            "If using `weights='imagenet'` with `include_top=True`, `classes` should be "
            f"1000. Received classes={classes}"
        )
    if weights == "imagenet":
        return load_timm_model(name, weights)[0]
    if is_weight_file(weights) and os.path.exists(weights):
        # The file's classifier is needed only when it becomes Keras's `predictions` layer.
        keeps_classifier = include_top and classes == 1000
        return load_timm_model(
            name,
            weights,
            classifier_optional=not keeps_classifier,
            pre_logits_optional=not include_top,
            **timm_kwargs,
        )[0]
    raise ValueError(
        "The `weights` argument should be either `None` (random initialization), 'imagenet' "
        "(pre-training on ImageNet), or the path to an existing weights file (a torch state "
        f"dict {WEIGHT_FILE_SUFFIXES} or a compat save_weights file). Received: "
        f"weights={weights!r}"
    )


def _is_compat_weights(weights: Any) -> bool:
    if not isinstance(weights, (str, os.PathLike)) or weights == "imagenet":
        return False
    return os.path.exists(weights) and not is_weight_file(weights)


def finish_weights(model: Any, weights: Any) -> Any:
    """Keras's initialisation for ``weights=None``; a compat weights file is loaded here."""
    if weights is None:
        keras_init(model)
    elif _is_compat_weights(weights):
        model.load_weights(weights)
    return model


def check_input_shape(
    input_tensor: Any,
    input_shape: Any,
    default: int,
    min_size: int,
    include_top: bool,
    weights: Any,
) -> tuple[Any, ...] | None:
    """Keras's checks of ``input_shape`` (run before any weights are loaded)."""
    if input_tensor is not None:
        return None
    if input_shape is None:
        # Keras: a headless model takes any image size; the top needs the default one.
        return (default, default, 3) if include_top else (None, None, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        hint = ""
        if len(input_shape) == 3 and input_shape[0] == 3:
            hint = f" This looks channels-first; pass {(*input_shape[1:], 3)}."
        raise ValueError(
            f"`input_shape` must be a tuple of three integers (height, width, 3) "
            f"(channels_last). Received: input_shape={input_shape}.{hint}"
        )
    if include_top and None in input_shape:
        raise ValueError(
            "If `include_top` is True, you should specify a static `input_shape`. "
            f"Received: input_shape={input_shape}"
        )
    if weights == "imagenet" and include_top and input_shape != (default, default, 3):
        raise ValueError(
            f"When setting `include_top=True` and loading `imagenet` weights, "
            f"`input_shape` should be {(default, default, 3)}. Received: "
            f"input_shape={input_shape}. For another size use include_top=False (and a new "
            "head), or resize the images."
        )
    for d in input_shape[:2]:
        if d is not None and d < min_size:
            raise ValueError(
                f"Input size must be at least {min_size}x{min_size}; Received: "
                f"input_shape={input_shape}"
            )
    return input_shape


def model_input(
    input_tensor: Any,
    input_shape: Any,
    default: int,
    min_size: int,
    include_top: bool,
    weights: Any,
) -> KerasTensor:
    if input_tensor is not None:
        if not isinstance(input_tensor, KerasTensor):
            raise TypeError(
                f"input_tensor must be a compat KerasTensor (compat.Input). "
                f"Received: {type(input_tensor)}"
            )
        return input_tensor
    shape = check_input_shape(None, input_shape, default, min_size, include_top, weights)
    return Input(shape=shape)


def check_pooling(pooling: Any) -> None:
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"`pooling` must be None, 'avg' or 'max'. Received: pooling={pooling!r}")


# Keras's ``preprocess_input`` conventions as ``pixels = scale * x[..., order] + offset``
# (pixels RGB in [0, 255]): the inverse of each convention.
_CONVENTIONS: dict[str, tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]]] = {
    "caffe": ((2, 1, 0), (1.0, 1.0, 1.0), (123.68, 116.779, 103.939)),
    "tf": ((0, 1, 2), (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    "torch": (
        (0, 1, 2),
        (0.229 * 255, 0.224 * 255, 0.225 * 255),
        (0.485 * 255, 0.456 * 255, 0.406 * 255),
    ),
    "raw": ((0, 1, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
}


class InputMap(nn.Module):
    """Exact per-channel affine map (with channel order) from an application's Keras
    ``preprocess_input`` convention to the normalisation its timm weights were trained with.

    Keras code feeds ``preprocess_input(x)``; the timm weights expect ``(x / 255 - mean) / std``
    on RGB. Applied before the first layer (so zero padding happens in the weights' domain, as
    in timm); no information is lost.
    """

    def __init__(self, convention: str, mean: Any, std: Any) -> None:
        super().__init__()
        order, scale, offset = _CONVENTIONS[convention]
        mean64, std64 = np.asarray(mean, "float64"), np.asarray(std, "float64")
        a = np.asarray(scale, "float64") / 255.0 / std64
        b = (np.asarray(offset, "float64") / 255.0 - mean64) / std64
        self.convention = convention
        self.register_buffer("order", torch.tensor(order, dtype=torch.long), persistent=False)
        self.register_buffer("scale", torch.tensor(a, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("offset", torch.tensor(b, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # NCHW
        if (
            x.ndim == 4
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
        ):
            # compat's batches are NHWC viewed as NCHW; stay channels-last, as index_select
            # on dim 1 would return NCHW-contiguous and every later conv and batch norm would
            # take torch's slower NCHW CPU kernels (about 8% of a ResNet50 training step)
            nhwc = x.permute(0, 2, 3, 1).index_select(3, self.order)
            return (nhwc * self.scale.view(3) + self.offset.view(3)).permute(0, 3, 1, 2)
        return x.index_select(1, self.order) * self.scale + self.offset

    def extra_repr(self) -> str:
        return f"convention={self.convention!r}"


def input_map(convention: str, tm: nn.Module) -> InputMap:
    """The map from ``convention`` to the normalisation of ``tm``'s (default) pretrained cfg."""
    cfg = tm.pretrained_cfg
    return InputMap(convention, cfg["mean"], cfg["std"])


class _MappedInput:
    """Mixin: the first layer of an application applies its :class:`InputMap` first."""

    input_map: InputMap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.input_map(x))


class Conv2D(_MappedInput, layers.Conv2D):
    pass


class ZeroPadding2D(_MappedInput, layers.ZeroPadding2D):
    pass


_MAPPED: dict[type, type] = {layers.Conv2D: Conv2D, layers.ZeroPadding2D: ZeroPadding2D}


def map_input(layer: Any, mapping: InputMap) -> Any:
    """Make ``layer`` (the application's first layer) apply ``mapping`` to its input.

    The class keeps Keras's name (``Conv2D``...), so layer classes still match Keras's.
    """
    layer.__class__ = _MAPPED[type(layer)]
    layer.input_map = mapping
    return layer


def variance_scaling(scale: float, mode: str, distribution: str) -> dict[str, Any]:
    """Keras's ``VarianceScaling`` initializer as its serialised config (what Keras's
    applications pass as ``kernel_initializer``); :func:`keras_init` draws from it."""
    return {
        "class_name": "VarianceScaling",
        "config": {"scale": scale, "mode": mode, "distribution": distribution},
    }


def _init(weight: torch.Tensor, initializer: Any, fan_in: int, fan_out: int) -> None:
    if not (isinstance(initializer, dict) and initializer.get("class_name") == "VarianceScaling"):
        _init_weight(weight, initializer, fan_in, fan_out)
        return
    cfg = initializer["config"]
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[cfg["mode"]]
    scale = cfg["scale"] / max(1.0, n)
    with torch.no_grad():
        if cfg["distribution"] == "truncated_normal":  # Keras: cut at two stddevs
            std = float(np.sqrt(scale) / 0.87962566103423978)
            # inverse-CDF sampling (torch's trunc_normal_ resamples: slow on big kernels)
            edge = math.erf(2.0 / math.sqrt(2.0))
            weight.uniform_(-edge, edge).erfinv_().mul_(std * math.sqrt(2.0))
            weight.clamp_(-2 * std, 2 * std)
        elif cfg["distribution"] == "untruncated_normal":
            weight.normal_(0.0, np.sqrt(scale))
        elif cfg["distribution"] == "uniform":
            limit = np.sqrt(3.0 * scale)
            weight.uniform_(-limit, limit)
        else:
            raise NotImplementedError(f"VarianceScaling(distribution={cfg['distribution']!r})")


def keras_init(model: Any) -> None:
    """Re-initialise like Keras's ``weights=None``: the layers' kernel initializers (Keras
    default glorot-uniform), zero biases, BatchNorm gamma 1, beta 0, moving mean 0, variance 1
    (timm's own init differs, e.g. zero gamma in the last BatchNorm of each ResNet block)."""
    for layer in model.layers:
        keras_init_layer(layer)


def keras_init_layer(layer: Any) -> None:
    """Keras's initialisation of one (built) layer; see :func:`keras_init`."""
    if isinstance(layer, layers.DepthwiseConv2D):  # Keras kernel (kh, kw, in, multiplier)
        w, mult = layer.conv.weight, layer.depth_multiplier
        receptive = w.shape[2] * w.shape[3]
        _init(w, layer.kernel_initializer, layer.groups * receptive, mult * receptive)
        if layer.conv.bias is not None:
            nn.init.zeros_(layer.conv.bias)
    elif isinstance(layer, layers.Conv2D):
        w = layer.conv.weight
        receptive = w.shape[2] * w.shape[3]
        _init(w, layer.kernel_initializer, w.shape[1] * receptive, w.shape[0] * receptive)
        if layer.conv.bias is not None:
            nn.init.zeros_(layer.conv.bias)
    elif isinstance(layer, layers.SeparableConv2D):
        w, mult = layer.depthwise.weight, layer.depth_multiplier
        receptive = w.shape[2] * w.shape[3]
        _init(w, layer.depthwise_initializer, w.shape[0] // mult * receptive, mult * receptive)
        w = layer.pointwise.weight
        _init(w, layer.pointwise_initializer, w.shape[1], w.shape[0])
        if layer.pointwise.bias is not None:
            nn.init.zeros_(layer.pointwise.bias)
    elif isinstance(layer, layers.Dense):
        w = layer.linear.weight
        _init(w, layer.kernel_initializer, w.shape[1], w.shape[0])
        if layer.linear.bias is not None:
            nn.init.zeros_(layer.linear.bias)
    elif isinstance(layer, layers.BatchNormalization):
        layer.bn.reset_parameters()


def no_act_bn(bn: nn.Module) -> nn.Module:
    """timm's BatchNormAct2d with its activation removed (Keras has a separate Activation)."""
    if hasattr(bn, "act"):
        bn.act = nn.Identity()
    if hasattr(bn, "drop"):
        bn.drop = nn.Identity()
    return bn


def prediction_layer(fc: nn.Linear, weights: Any, classes: int, activation: Any) -> Any:
    """Keras's ``predictions`` Dense: the weights' classifier when it fits, else a new one."""
    from compat import layers

    if weights is not None and classes == fc.out_features:
        return layers.Dense.from_torch(fc, name="predictions", activation=activation)
    return layers.Dense(classes, activation=activation, name="predictions")


def global_pool(x: Any, pooling: str | None, names: tuple[str | None, str | None]) -> Any:
    """``pooling="avg"|"max"`` of a headless application (``None``: the feature map)."""
    from compat import layers

    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name=names[0])(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name=names[1])(x)
    return x


@dataclass(frozen=True)
class Request:
    """The arguments every Keras application builder takes (Keras's names)."""

    include_top: bool = True
    weights: Any = "imagenet"
    input_tensor: Any = None
    input_shape: Any = None
    pooling: str | None = None
    classes: int = 1000
    classifier_activation: Any = "softmax"
    name: str | None = None

    @classmethod
    def of(cls, arguments: dict[str, Any]) -> Request:
        """The request among a builder's arguments (``locals()``), the others ignored."""
        return cls(**{f.name: arguments[f.name] for f in fields(cls)})


@contextmanager
def keras_graph(
    request: Request,
    timm_name: str,
    default_size: int,
    min_size: int,
    *,
    size_fixed_by_top: bool = True,
    timm_kwargs: dict[str, Any] | None = None,
) -> Iterator[tuple[nn.Module, KerasTensor]]:
    """Check Keras's arguments, make the timm module and the graph's input under Keras's
    canonical layer names; yields ``(timm_module, inputs)``.

    ``size_fixed_by_top``: ``include_top=True`` fixes the input size (Keras's rule for most
    applications; MobileNetV3 accepts any size with its top). ``timm_kwargs``: see
    :func:`timm_model`.
    """
    fixed = request.include_top and size_fixed_by_top
    check_pooling(request.pooling)
    check_input_shape(
        request.input_tensor, request.input_shape, default_size, min_size, fixed, request.weights
    )
    tm = timm_model(
        timm_name, request.weights, request.include_top, request.classes, **(timm_kwargs or {})
    )
    with backend.canonical_names():
        inputs = model_input(
            request.input_tensor,
            request.input_shape,
            default_size,
            min_size,
            fixed,
            request.weights,
        )
        yield tm, inputs


def classifier_or_pool(
    x: Any,
    request: Request,
    classifier: nn.Linear,
    *,
    avg_pool_name: str | None = "avg_pool",
    pool_names: tuple[str | None, str | None] = ("avg_pool", "max_pool"),
) -> Any:
    """Keras's usual end: global average pooling + ``predictions`` with the top, else
    ``pooling`` (``pool_names``: the names Keras gives the avg/max pooling layers)."""
    if request.include_top:
        x = layers.GlobalAveragePooling2D(name=avg_pool_name)(x)
        head = prediction_layer(
            classifier, request.weights, request.classes, request.classifier_activation
        )
        return head(x)
    return global_pool(x, request.pooling, pool_names)


def keras_model(
    inputs: KerasTensor,
    x: Any,
    request: Request,
    classifier: nn.Linear,
    *,
    pool_names: tuple[str | None, str | None] = ("avg_pool", "max_pool"),
) -> Model:
    """Keras's usual end of an application: :func:`classifier_or_pool`, the ``Model`` under
    the requested name, then :func:`finish_weights`."""
    x = classifier_or_pool(x, request, classifier, pool_names=pool_names)
    return finish_weights(Model(inputs, x, name=request.name), request.weights)


def keras_application(
    build: Callable[[Request], Any], keras_name: str, default_name: str, timm: str
) -> Callable[..., Any]:
    """A builder with the signature Keras's VGG16/ResNet50/DenseNet121/... share.

    ``build`` (a function or a ``functools.partial`` of one) makes the model from a
    :class:`Request`; the builder belongs to ``build``'s module, as Keras's to its own;
    ``timm``: the timm model it is built on.
    """
    module = getattr(build, "func", build).__module__

    def builder(
        include_top: bool = True,
        weights: Any = "imagenet",
        input_tensor: Any = None,
        input_shape: Any = None,
        pooling: str | None = None,
        classes: int = 1000,
        classifier_activation: Any = "softmax",
        name: str = default_name,
    ) -> Model:
        return build(Request.of(locals()))

    builder.__name__ = builder.__qualname__ = keras_name
    builder.__module__ = module
    builder.__doc__ = f"Keras's ``{keras_name}`` on timm's ``{timm}`` (see {module})."
    return builder


def keras_applications(
    build: Callable[[Any, Request], Any],
    variants: Iterable[Any],
    keras_name: str,
    default_name: str,
    timm: str,
) -> list[Callable[..., Any]]:
    """:func:`keras_application` for each variant of a family (ResNet50/101/152, ...):
    ``build(variant, request)`` makes the model; the names are ``str.format`` patterns filled
    with the variant."""
    return [
        keras_application(
            functools.partial(build, variant),
            keras_name.format(variant),
            default_name.format(variant),
            timm.format(variant),
        )
        for variant in variants
    ]
