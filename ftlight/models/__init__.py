"""The model stack: registry, weights, backbones, heads, freezing and optimizers (plain
``nn.Module`` code, no Lightning). Imports :mod:`ftlight.data` (the data config), never the
reverse."""

from ftlight.models.backbone import Backbone, create_backbone, load_timm_model
from ftlight.models.freezing import enforce_bn_policy, freeze_backbone
from ftlight.models.groups import LayerGroup
from ftlight.models.head import build_head
from ftlight.models.registry import (
    BackboneSpec,
    list_backbones,
    register_backbone,
    resolve_backbone,
)
from ftlight.models.weights import WeightsInfo, WeightsMismatchError, WeightsUnavailableError

__all__ = [
    "Backbone",
    "BackboneSpec",
    "LayerGroup",
    "WeightsInfo",
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "build_head",
    "create_backbone",
    "enforce_bn_policy",
    "freeze_backbone",
    "list_backbones",
    "load_timm_model",
    "register_backbone",
    "resolve_backbone",
]
