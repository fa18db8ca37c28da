"""Issue 13's engine hygiene: registry entries hold callables, timm's no_weight_decay() is
respected, importing ftlight changes no global state, gated groups are said to be gated."""

from __future__ import annotations

import subprocess
import sys

import lightning as L
import torch
from torch import nn

import ftlight
from ftlight.callbacks import Milestone, StagedUnfreeze
from ftlight.models.groups import LayerGroup
from ftlight.models.registry import BackboneSpec, register_backbone
from ftlight.models.weights import WeightsInfo


def test_a_backbone_is_one_registry_entry_with_its_own_callables() -> None:
    calls: list[str] = []

    def two_halves(model: nn.Module) -> list[LayerGroup]:
        names = [n for n, _ in model.named_parameters()]
        half = len(names) // 2
        calls.append("groups")
        return [
            LayerGroup("bottom", tuple(names[:half]), ()),
            LayerGroup("top", tuple(names[half:]), ()),
        ]

    def offline(model: nn.Module) -> WeightsInfo:
        calls.append("weights")
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(0.5)
        return WeightsInfo(source="packaged")

    register_backbone(
        BackboneSpec(
            "test_two_halves_resnet18",
            "resnet18",
            group_layers=two_halves,
            offline_weights=offline,
            offline_data_config={"mean": (0.1, 0.2, 0.3), "std": (1.0, 1.0, 1.0)},
        )
    )
    backbone = ftlight.create_backbone("test_two_halves_resnet18", "imagenet")
    assert calls == ["weights", "groups"]
    assert [g.name for g in backbone.layer_groups] == ["bottom", "top"]
    assert backbone.data_config.mean == (0.1, 0.2, 0.3)
    assert backbone.weights_info.source == "packaged"
    assert all(float(p.flatten()[0]) == 0.5 for p in backbone.parameters())


def test_position_embeddings_and_class_token_get_no_weight_decay() -> None:
    model = ftlight.FineTuner("vit_tiny_patch16_224", 3, None, weight_decay=0.05, freeze=False)
    assert {"pos_embed", "cls_token"} <= set(model.backbone.model.no_weight_decay())
    decayed = {id(p) for g in model.param_groups() if g["weight_decay"] > 0 for p in g["params"]}
    params = dict(model.backbone.model.named_parameters())
    assert id(params["pos_embed"]) not in decayed
    assert id(params["cls_token"]) not in decayed
    assert id(params["blocks.0.attn.qkv.weight"]) in decayed  # a plain weight still decays


RECORD_FILTER_CALLERS = """
import sys, warnings
callers = []
original = warnings.filterwarnings
def recording(*args, **kwargs):
    callers.append(sys._getframe(1).f_code.co_filename)
    return original(*args, **kwargs)
warnings.filterwarnings = recording
import ftlight, compat, ftlight.cli.main, ftlight.cli.report, ftlight.cli.predict
print("\\n".join(callers))
"""


def test_importing_ftlight_and_compat_sets_no_warning_filter() -> None:
    out = subprocess.run(
        [sys.executable, "-c", RECORD_FILTER_CALLERS], capture_output=True, text=True, check=True
    ).stdout
    ours = [f for f in out.splitlines() if "/ftlight/" in f or "/compat/" in f]
    assert not ours, f"warnings.filterwarnings at import time in {ours}"


def test_gated_groups_are_named_as_gated_next_to_the_model_summary(tmp_path) -> None:
    model = ftlight.FineTuner("resnet18", 2, None, freeze=True, image_size=32)
    staged = StagedUnfreeze([Milestone(epoch=3, groups=1)])
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False)
    staged.setup(trainer, model, "fit")
    line = staged.gating_summary(model, 0)
    top = model.backbone.layer_groups[-1]
    count = sum(
        p.numel() for n, p in model.backbone.model.named_parameters() if n in top.param_names
    )
    assert f"{count:,} of the parameters counted as trainable are gated" in line
    assert f"{top.name} from epoch 3" in line
    assert "no parameter is gated" in staged.gating_summary(model, 3)
