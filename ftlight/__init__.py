"""ftlight: fine-tune pre-trained image models on PyTorch Lightning."""

from ftlight.backbone import Backbone, DataConfig, LayerGroup, create_backbone, load_timm_model
from ftlight.data import ImageDataModule
from ftlight.freezing import enforce_bn_policy, freeze_backbone
from ftlight.guards import AtomicCheckpointIO, NonFiniteLossGuard
from ftlight.head import build_head
from ftlight.module import FineTuner
from ftlight.registry import BackboneSpec, list_backbones, register_backbone, resolve_backbone
from ftlight.staged import Milestone, StagedUnfreeze
from ftlight.weights import WeightsInfo, WeightsMismatchError, WeightsUnavailableError

__version__ = "0.1.0"

__all__ = [
    "AtomicCheckpointIO",
    "Backbone",
    "BackboneSpec",
    "DataConfig",
    "FineTuner",
    "ImageDataModule",
    "LayerGroup",
    "Milestone",
    "NonFiniteLossGuard",
    "StagedUnfreeze",
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
