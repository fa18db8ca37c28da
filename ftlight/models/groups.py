"""Layer groups: the depth units of a backbone (stem, stages, blocks) that ``freeze=N``,
``layer_decay`` and staged unfreezing work on. A registry entry names its grouping function."""

from __future__ import annotations

from dataclasses import dataclass

from timm.models import group_parameters
from torch import nn


@dataclass(frozen=True)
class LayerGroup:
    """A depth unit of the backbone (stem, a stage, ...): names of its parameters and modules."""

    name: str
    param_names: tuple[str, ...]
    module_names: tuple[str, ...]


def timm_layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Coarse timm groups (stem, stages, ...) in order; empty groups (a removed fc) dropped."""
    named = dict(model.named_parameters())
    grouped = group_parameters(model, model.group_matcher(coarse=True))
    groups = []
    for i, (key, names) in enumerate(grouped.items()):
        names = tuple(n for n in names if n in named)
        if not names:
            continue
        modules = tuple(sorted({n.rsplit(".", 1)[0] for n in names}))
        label = "stem" if i == 0 else f"group{key}" if not isinstance(key, str) else key
        groups.append(LayerGroup(str(label), names, modules))
    renamed = []
    for i, g in enumerate(groups):
        label = "stem" if i == 0 else f"stage{i}"
        renamed.append(LayerGroup(label, g.param_names, g.module_names))
    return renamed


def vgg_block_groups(model: nn.Module) -> list[LayerGroup]:
    """VGG as Keras names it: ``block1`` … ``block5`` (each ends in a max-pool), then ``fc``."""
    block_of: dict[str, int] = {}
    block = 1
    for index, layer in enumerate(model.features):
        block_of[f"features.{index}"] = block
        if isinstance(layer, nn.MaxPool2d):
            block += 1
    members: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        prefix = ".".join(name.split(".")[:2])
        label = f"block{block_of[prefix]}" if prefix in block_of else "fc"
        members.setdefault(label, []).append(name)
    return [
        LayerGroup(label, tuple(names), tuple(sorted({n.rsplit(".", 1)[0] for n in names})))
        for label, names in members.items()
    ]
