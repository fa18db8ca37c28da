"""Freeze backbone parameters by layer group or module name, with an explicit BatchNorm policy.

A frozen BatchNorm layer runs in inference mode: it normalises with its moving statistics and
never updates them, also after ``model.train()`` (which Lightning calls every epoch).
Call :func:`enforce_bn_policy` after every ``train()``; :class:`ftlight.FineTuner` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ftlight.models.backbone import Backbone

FreezeSpec = bool | int | Sequence[str] | None
BNPolicy = Literal["frozen", "train", "inference"]

INFERENCE_ATTR = "ftlight_inference"
"""Set on a module (True/False) to force or forbid inference mode for its BatchNorm layers."""


def frozen_param_names(backbone: Backbone, freeze: FreezeSpec) -> list[str]:
    """Names (relative to ``backbone``) of the parameters that ``freeze`` selects."""
    groups = backbone.layer_groups
    if freeze is None or freeze is False:
        return []
    if freeze is True:
        selected = list(groups)
    elif isinstance(freeze, int):
        if not 0 <= freeze <= len(groups):
            raise ValueError(
                f"freeze={freeze} is out of range: {backbone.name} has {len(groups)} layer "
                f"groups ({[g.name for g in groups]}). Expected an integer in [0, {len(groups)}]."
            )
        selected = groups[:freeze]
    elif isinstance(freeze, (list, tuple)):
        names = []
        all_params = [n for n, _ in backbone.model.named_parameters()]
        group_by_name = {g.name: g for g in groups}
        for item in freeze:
            if item in group_by_name:
                names.extend(group_by_name[item].param_names)
                continue
            hits = [n for n in all_params if n == item or n.startswith(item + ".")]
            if not hits:
                raise ValueError(
                    f"freeze: no layer group or module named {item!r} in {backbone.name}. "
                    f"Layer groups: {list(group_by_name)}; modules look like "
                    f"{sorted({n.split('.')[0] for n in all_params})[:8]}."
                )
            names.extend(hits)
        return [f"model.{n}" for n in dict.fromkeys(names)]
    else:
        raise TypeError(
            "freeze must be True/False/None, an integer number of layer groups, or a list of "
            f"group or module names. Received: {freeze!r}"
        )
    return [f"model.{n}" for g in selected for n in g.param_names]


def freeze_backbone(backbone: Backbone, freeze: FreezeSpec) -> list[str]:
    """Freeze what ``freeze`` selects (and unfreeze the rest); return the frozen names."""
    names = set(frozen_param_names(backbone, freeze))
    for name, param in backbone.named_parameters():
        param.requires_grad_(name not in names)
    return sorted(names)


def is_frozen_bn(module: _BatchNorm, inherited: bool | None = None) -> bool:
    """A BN layer is frozen when forced by :data:`INFERENCE_ATTR` or when all its params are."""
    forced = getattr(module, INFERENCE_ATTR, inherited)
    if forced is not None:
        return bool(forced)
    params = list(module.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)


def enforce_bn_policy(root: nn.Module, policy: BNPolicy = "frozen") -> None:
    """Put frozen BatchNorm layers under ``root`` into inference mode (``policy="frozen"``).

    ``policy="inference"`` puts every BN layer in inference mode, trainable or not (Keras's
    fine-tuning recipe: ``base_model(x, training=False)``; gamma/beta still learn, the moving
    statistics never change).

    ``INFERENCE_ATTR`` set on any ancestor module applies to every BN layer below it.
    With ``policy="train"`` frozen BN layers still update their statistics in training mode.
    """
    if policy not in ("frozen", "train", "inference"):
        raise ValueError(f"bn must be 'frozen', 'train' or 'inference'. Received: {policy!r}")

    def visit(module: nn.Module, inherited: bool | None) -> None:
        own = getattr(module, INFERENCE_ATTR, None)
        flag = own if own is not None else inherited
        frozen = (
            flag is True
            or (policy == "inference" and flag is not False)
            or (policy == "frozen" and is_frozen_bn(module, flag))
        )
        if isinstance(module, _BatchNorm) and module.training and frozen:
            module.eval()
        for child in module.children():
            visit(child, flag)

    visit(root, None)
