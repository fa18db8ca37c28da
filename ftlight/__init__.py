"""ftlight: fine-tune pre-trained image models on PyTorch Lightning.

Layers, bottom to top: :mod:`ftlight.files` (atomic writes), :mod:`ftlight.data`,
:mod:`ftlight.models`, :mod:`ftlight.callbacks`, :mod:`ftlight.finetuner` (the
LightningModule that puts them together), :mod:`ftlight.cli`.
"""

from ftlight.callbacks import AtomicCheckpointIO, Milestone, NonFiniteLossGuard, StagedUnfreeze
from ftlight.data import DataConfig, ImageDataModule
from ftlight.finetuner import FineTuner
from ftlight.models import (
    Backbone,
    BackboneSpec,
    LayerGroup,
    WeightsInfo,
    WeightsMismatchError,
    WeightsUnavailableError,
    build_head,
    create_backbone,
    enforce_bn_policy,
    freeze_backbone,
    list_backbones,
    load_timm_model,
    register_backbone,
    resolve_backbone,
)
from ftlight.recipes import fine_tune, fine_tune_callbacks

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
    "fine_tune",
    "fine_tune_callbacks",
    "freeze_backbone",
    "list_backbones",
    "load_timm_model",
    "register_backbone",
    "resolve_backbone",
]
