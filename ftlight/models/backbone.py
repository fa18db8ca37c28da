"""Backbones: a timm model minus its classifier, with preprocessing, layer groups, provenance."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import timm
import torch
from torch import nn

from ftlight.data.config import DataConfig
from ftlight.models.fold import FoldedInference
from ftlight.models.groups import LayerGroup, timm_layer_groups
from ftlight.models.registry import BackboneSpec, resolve_backbone
from ftlight.models.weights import (
    WEIGHT_FILE_SUFFIXES,
    WeightsInfo,
    create_hub_model,
    is_weight_file,
    load_state_dict_file,
)


class Backbone(nn.Module):
    """Images ``(B, 3, H, W)`` -> pooled features ``(B, num_features)``.

    Attributes: ``num_features``, ``data_config`` (:class:`DataConfig`), ``layer_groups``
    (stem first, last stage last), ``weights_info`` (:class:`WeightsInfo`), ``name``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        data_config: DataConfig,
        weights_info: WeightsInfo,
        min_input_size: int = 32,
        group_layers: Callable[[nn.Module], list[LayerGroup]] = timm_layer_groups,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.data_config = data_config
        self.weights_info = weights_info
        self.num_features = _output_width(model)
        self.layer_groups = group_layers(model)
        self.min_input_size = min_input_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"{self.name} expects images of shape (batch, 3, height, width). "
                f"Received: shape={tuple(images.shape)}"
            )
        if min(images.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"{self.name} needs inputs of at least {self.min_input_size}x"
                f"{self.min_input_size} pixels. Received: {tuple(images.shape[-2:])}"
            )
        fold = self.__dict__.get("_fold")
        if fold is not None and fold.module is not self.model:  # the model was replaced
            self.stop_folded_inference()
        elif fold is not None:
            out = fold.forward_or_none(images)
            if out is not None:
                return out
        return self.model(images)

    def start_folded_inference(self) -> None:
        """From now on, inference-mode passes run a copy with BatchNorm folded into the
        convolutions (:mod:`ftlight.models.fold`) while the weights stay unchanged."""
        self.__dict__["_fold"] = FoldedInference(self.model)

    def stop_folded_inference(self) -> None:
        self.__dict__.pop("_fold", None)

    def __getstate__(self) -> dict[str, Any]:
        # pickles and deep copies (torch.save of a model in predict) hold no folded copy
        return {k: v for k, v in super().__getstate__().items() if k != "_fold"}

    @contextlib.contextmanager
    def folded_inference(self) -> Iterator[None]:
        """:meth:`start_folded_inference` inside the ``with`` block only."""
        self.start_folded_inference()
        try:
            yield
        finally:
            self.stop_folded_inference()

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unpooled feature map (B, C, h, w)."""
        return self.model.forward_features(images)


def _keeps_pre_logits(model: nn.Module) -> bool:
    pre = getattr(model, "pre_logits", None)
    if pre is None:
        return False
    return not isinstance(pre, nn.Identity)


def _output_width(model: nn.Module) -> int:
    # timm models expose the post-pre_logits width as ``head_hidden_size`` when it differs.
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _data_config_from(model: nn.Module, spec: BackboneSpec) -> DataConfig:
    cfg = timm.data.resolve_data_config({}, model=model)
    if spec.offline_weights is not None:  # the offline weights' own preprocessing
        cfg.update(spec.offline_data_config)
    return DataConfig(
        input_size=tuple(int(v) for v in cfg["input_size"]),
        interpolation=str(cfg.get("interpolation", "bilinear")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
    )


def load_timm_model(
    name: str,
    weights: str | os.PathLike | None = None,
    *,
    weights_strict: bool = True,
    classifier_optional: bool = True,
    pre_logits_optional: bool = False,
    trust_pickle: bool = False,
    **timm_kwargs: Any,
) -> tuple[nn.Module, WeightsInfo]:
    """The full timm model (ImageNet classifier kept) with ``weights`` loaded, and provenance.

    ``weights``, ``weights_strict`` and ``trust_pickle`` as in :func:`create_backbone`; never
    falls back to random weights. ``classifier_optional``: a weights file may lack the
    classifier or hold one of another size (when the caller replaces it);
    ``pre_logits_optional``: it may also lack the fully connected layers before the classifier
    (when the caller drops them: ``keep_fc=False``, Keras's ``include_top=False``).
    """
    spec = resolve_backbone(name)
    if weights is None:
        model = timm.create_model(spec.timm_name, pretrained=False, **timm_kwargs)
        info = WeightsInfo(source="random")
    elif weights == "imagenet" and spec.offline_weights is not None:
        model = timm.create_model(spec.timm_name, pretrained=False, **timm_kwargs)
        info = spec.offline_weights(model)
    elif weights == "imagenet":
        model, info = create_hub_model(spec.timm_name, **timm_kwargs)
    elif is_weight_file(weights):
        model = timm.create_model(spec.timm_name, pretrained=False, **timm_kwargs)
        info = load_state_dict_file(
            model,
            weights,
            strict=weights_strict,
            classifier_optional=classifier_optional,
            pre_logits_optional=pre_logits_optional,
            trust_pickle=trust_pickle,
        )
    else:
        raise ValueError(
            f"Unsupported weights={weights!r}. Expected None, 'imagenet', or a path to a file "
            f"ending in one of {WEIGHT_FILE_SUFFIXES}."
        )
    return model, info


def create_backbone(
    name: str,
    weights: str | os.PathLike | None = None,
    *,
    keep_fc: bool = True,
    image_size: int | None = None,
    weights_strict: bool = True,
    trust_pickle: bool = False,
    **timm_kwargs: Any,
) -> Backbone:
    """Build a registered backbone (or any timm model) without its classifier.

    Args:
        name: ``vgg16``/``VGG16``, ``resnet50``/``ResNet50``, ``inception_v3``/``InceptionV3``,
            ``efficientnet_lite0`` or any timm model name.
        weights: ``None`` (random), ``"imagenet"`` (timm hub, or the offline package for
            ``efficientnet_lite0``), or a local file (.pth/.pt/.bin/.safetensors/.ckpt).
        keep_fc: keep the fully connected layers before the classifier (VGG16's fc1/fc2) and
            replace only the prediction layer; ``False`` drops them (pooled conv features).
        image_size: override the input size of the data config (e.g. 128 for fast CPU runs).
        weights_strict: a weights file must hold every weight of the backbone, with its shape
            (the classifier, replaced anyway, excepted); ``False`` loads the matching part.
        trust_pickle: unpickle a trusted weights file that holds Python objects besides
            tensors (never needed for state dicts, safetensors or ftlight checkpoints).
        timm_kwargs: passed to ``timm.create_model`` (``drop_rate``, ``drop_path_rate``, ...).
    """
    spec = resolve_backbone(name)
    model, info = load_timm_model(
        spec.name,
        weights,
        weights_strict=weights_strict,
        pre_logits_optional=not keep_fc,
        trust_pickle=trust_pickle,
        **timm_kwargs,
    )
    if info.source == "file":
        # The classifier is removed below: its absence from a backbone-only file is expected.
        classifier = str(model.pretrained_cfg.get("classifier", "")) + "."
        info.missing_keys = [k for k in info.missing_keys if not k.startswith(classifier)]
    data_config = _data_config_from(model, spec)
    if image_size is not None:
        data_config = data_config.with_image_size(image_size)
    model.reset_classifier(0)
    if not keep_fc and _keeps_pre_logits(model):
        model.pre_logits = nn.Identity()
        model.head_hidden_size = model.num_features
    return Backbone(
        model,
        name=spec.name,
        data_config=data_config,
        weights_info=info,
        min_input_size=spec.min_input_size,
        group_layers=spec.group_layers,
    )
