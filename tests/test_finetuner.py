"""Freezing, the BatchNorm policy, FineTuner training and checkpoints, feature caching."""

from __future__ import annotations

import ast
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

import ftlight
from ftlight.callbacks.feature_cache import CachingUnavailableError, cache_features
from ftlight.models.freezing import frozen_param_names
from tests.conftest import frozen_bn_state


def tiny_trainer(tmp_path: Path, **kw) -> L.Trainer:
    defaults = dict(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**defaults, **kw})


def arrays_dm(colour_arrays, **kw) -> ftlight.ImageDataModule:
    x, y = colour_arrays
    return ftlight.ImageDataModule.from_arrays(
        x, y, batch_size=8, val_split=0.25, image_size=32, **kw
    )


def test_freezing_by_groups_freezes_exactly_those_parameters() -> None:
    model = ftlight.FineTuner("resnet50", num_classes=3, freeze=2)
    groups = model.backbone.layer_groups
    expected = {f"backbone.model.{n}" for g in groups[:2] for n in g.param_names}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == expected
    assert all(p.requires_grad for p in model.head.parameters())


def test_freezing_by_module_names_and_bad_specs() -> None:
    backbone = ftlight.create_backbone("resnet50")
    names = frozen_param_names(backbone, ["conv1", "layer1.0"])
    assert "model.conv1.weight" in names and "model.layer1.0.conv1.weight" in names
    assert not any(n.startswith("model.layer1.1") for n in names)
    with pytest.raises(ValueError, match="no layer group or module named 'layer9'"):
        frozen_param_names(backbone, ["layer9"])
    with pytest.raises(ValueError, match=r"freeze=7 is out of range.*5 layer"):
        frozen_param_names(backbone, 7)
    assert len(frozen_param_names(backbone, True)) == len(list(backbone.parameters()))


def test_frozen_batchnorm_statistics_unchanged_after_fit(tmp_path, colour_arrays) -> None:
    model = ftlight.FineTuner("resnet18", num_classes=2, freeze=3, image_size=32)
    frozen_bns = {
        n
        for n in frozen_bn_state(model.backbone)
        if n.startswith(("model.bn1", "model.layer1", "model.layer2"))
    }
    before = frozen_bn_state(model.backbone)
    tiny_trainer(tmp_path).fit(model, arrays_dm(colour_arrays))
    after = frozen_bn_state(model.backbone)
    assert frozen_bns and all(torch.equal(before[k], after[k]) for k in frozen_bns)
    # The unfrozen top stages did train their BatchNorm statistics: the check can fail.
    changed = [
        k
        for k in before
        if k.startswith("model.layer4")
        and "running_mean" in k
        and not torch.equal(before[k], after[k])
    ]
    assert changed


def test_bn_train_policy_updates_frozen_statistics(tmp_path, colour_arrays) -> None:
    model = ftlight.FineTuner("resnet18", num_classes=2, freeze=True, bn="train", image_size=32)
    before = frozen_bn_state(model.backbone)
    tiny_trainer(tmp_path).fit(model, arrays_dm(colour_arrays))
    after = frozen_bn_state(model.backbone)
    assert not torch.equal(before["model.bn1.running_mean"], after["model.bn1.running_mean"])
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_finetuner_trains_on_arrays(tmp_path, colour_arrays) -> None:
    model = ftlight.FineTuner("resnet18", num_classes=2, freeze=True, lr=1e-2, image_size=32)
    head_before = [p.clone() for p in model.head.parameters()]
    backbone_before = [p.clone() for p in model.backbone.parameters()]
    trainer = tiny_trainer(tmp_path, max_epochs=3)
    trainer.fit(model, arrays_dm(colour_arrays))
    assert {"train_loss", "val_loss", "val_acc", "val_f1"} <= set(trainer.callback_metrics)
    assert all(
        not torch.equal(a, b) for a, b in zip(head_before, model.head.parameters(), strict=True)
    )
    assert all(
        torch.equal(a, b) for a, b in zip(backbone_before, model.backbone.parameters(), strict=True)
    )
    assert model.confusion_matrix is not None and model.confusion_matrix.sum() == 8
    assert trainer.callback_metrics["val_acc"] >= 0.75  # red vs blue is easy


def test_finetuner_trains_on_a_folder_and_round_trips_checkpoint(tmp_path, image_folder) -> None:
    dm = ftlight.ImageDataModule.from_folder(
        image_folder, batch_size=4, val_split=0.25, num_workers=0
    )
    model = ftlight.FineTuner(
        "efficientnet_lite0",
        num_classes=2,
        freeze=4,
        image_size=48,
        hidden=(16,),
        dropout=0.1,
        head_batchnorm=True,
    )
    trainer = tiny_trainer(tmp_path)
    trainer.fit(model, dm)
    assert model.class_names == ["blue", "red"]  # taken from the folder
    assert dm.data_config.image_size == 48  # preprocessing flowed from the model
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    raw = torch.load(path, map_location="cpu", weights_only=False)
    assert raw["ftlight"]["class_names"] == ["blue", "red"]
    assert raw["ftlight"]["data_config"]["input_size"] == [3, 48, 48] or tuple(
        raw["ftlight"]["data_config"]["input_size"]
    ) == (3, 48, 48)
    assert raw["ftlight"]["weights_info"]["source"] == "random"
    restored = ftlight.FineTuner.from_checkpoint(path)
    x = torch.randn(4, 3, 48, 48)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), restored(x), atol=1e-6)
    assert restored.class_names == ["blue", "red"]
    assert restored.data_config == model.data_config


def test_weight_decay_skips_norms_and_biases_and_backbone_lr_is_lower() -> None:
    model = ftlight.FineTuner(
        "resnet18", num_classes=2, lr=1e-3, weight_decay=0.05, layer_decay=0.5
    )
    groups = model.param_groups()
    for group in groups:
        if group["weight_decay"] > 0:
            assert all(p.ndim > 1 for p in group["params"])
        else:
            assert all(p.ndim <= 1 for p in group["params"])
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["head"] == 1e-3
    assert lrs["stage4"] == pytest.approx(1e-4) and lrs["stage3"] == pytest.approx(5e-5)
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(model.parameters()))


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_schedulers_step_per_batch(tmp_path, colour_arrays, scheduler) -> None:
    model = ftlight.FineTuner(
        "resnet18",
        num_classes=2,
        freeze=True,
        scheduler=scheduler,
        warmup_epochs=0.5,
        image_size=32,
    )
    trainer = tiny_trainer(tmp_path, max_epochs=2, limit_train_batches=None)
    trainer.fit(model, arrays_dm(colour_arrays))
    lr_now = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr_now < 1e-3 * 0.5  # annealed by the end


def test_binary_and_multilabel_tasks(tmp_path, colour_arrays) -> None:
    binary = ftlight.FineTuner("resnet18", num_classes=1, task="binary", freeze=True, image_size=32)
    tiny_trainer(tmp_path).fit(binary, arrays_dm(colour_arrays))
    probs = binary.eval()(torch.randn(3, 3, 32, 32))
    assert probs.shape == (3, 1)
    multi = ftlight.FineTuner("resnet18", num_classes=3, task="multilabel", freeze=True)
    target = torch.tensor([[1, 0, 1], [0, 1, 0]])
    loss = multi.loss(torch.zeros(2, 3), target)
    assert loss.item() == pytest.approx(np.log(2), rel=1e-5)


def test_bad_arguments_say_what_was_expected(colour_arrays) -> None:
    with pytest.raises(ValueError, match="2 class names given but num_classes=3"):
        ftlight.FineTuner("resnet18", num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="too small for task='multiclass'"):
        ftlight.FineTuner("resnet18", num_classes=1)
    model = ftlight.FineTuner("resnet18", num_classes=2)
    with pytest.raises(ValueError, match="one-hot"):
        model.loss(torch.zeros(2, 2), torch.tensor([[1, 0], [0, 1]]))
    with pytest.raises(ValueError, match="out of range"):
        model.loss(torch.zeros(2, 2), torch.tensor([0, 5]))


def test_cached_features_give_the_same_logits(colour_arrays) -> None:
    model = ftlight.FineTuner("resnet18", num_classes=2, freeze=True, image_size=32).eval()
    dm = arrays_dm(colour_arrays, augment=False)
    cached = cache_features(dm, model.backbone, progress=False)
    feats, labels = cached.splits["val"]
    images = torch.stack([dm.datasets["val"][i][0] for i in range(len(dm.datasets["val"]))])
    with torch.no_grad():
        assert torch.allclose(model(feats), model(images), atol=1e-5)
    assert torch.equal(labels, dm.datasets["val"].labels)
    with pytest.raises(CachingUnavailableError, match="augment=True"):
        cache_features(arrays_dm(colour_arrays, augment=True), model.backbone)


def test_default_finetuner_fits_on_precomputed_features(colour_arrays) -> None:
    # The demo's path: cache_features() first, then a FineTuner whose own cache is on by
    # default; the callback must serve the rows as they are, not feed them to the backbone.
    model = ftlight.FineTuner("resnet18", num_classes=2, freeze=True, image_size=32)
    cached = cache_features(arrays_dm(colour_arrays, augment=False), model.backbone, progress=False)
    trainer = L.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(model, datamodule=cached)
    assert trainer.current_epoch == 2
    assert torch.isfinite(trainer.callback_metrics["val_loss"])


def test_engine_never_imports_compat() -> None:
    root = Path(ftlight.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "compat"]
    assert not offenders


class _ModeProbe(L.Callback):
    def __init__(self) -> None:
        self.head_training: list[bool] = []
        self.frozen_bn_training: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.head_training.append(pl_module.head.training)
        self.frozen_bn_training.append(pl_module.backbone.model.bn1.training)


def test_model_left_in_eval_mode_still_trains_in_train_mode(tmp_path, colour_arrays) -> None:
    model = ftlight.FineTuner("resnet18", num_classes=2, freeze=2, dropout=0.5, image_size=32)
    model.eval()  # e.g. after predicting; Lightning 2.6 would keep this mode
    probe = _ModeProbe()
    tiny_trainer(tmp_path, callbacks=[probe]).fit(model, arrays_dm(colour_arrays))
    assert probe.head_training and all(probe.head_training)  # dropout active while training
    assert not any(probe.frozen_bn_training)  # frozen BN still in inference mode


def test_bn_inference_policy_keeps_statistics_while_bn_weights_train(
    tmp_path, colour_arrays
) -> None:
    model = ftlight.FineTuner(
        "resnet18",
        num_classes=2,
        freeze=None,
        bn="inference",
        image_size=32,
        lr=1e-2,
        backbone_lr=1e-2,
    )
    before = frozen_bn_state(model.backbone)
    gamma = model.backbone.model.layer4[1].bn2.weight.clone()
    tiny_trainer(tmp_path).fit(model, arrays_dm(colour_arrays))
    after = frozen_bn_state(model.backbone)
    assert all(torch.equal(before[k], after[k]) for k in before)  # statistics fixed
    assert not torch.equal(gamma, model.backbone.model.layer4[1].bn2.weight)  # gamma learns
    with pytest.raises(ValueError, match="bn must be 'frozen', 'train' or 'inference'"):
        ftlight.FineTuner("resnet18", num_classes=2, bn="eval")


def test_checkpoint_records_the_preprocessing_the_data_module_really_used(
    tmp_path, colour_arrays
) -> None:
    model = ftlight.FineTuner("resnet18", num_classes=2, freeze=True)  # weights' 224 px
    trainer = tiny_trainer(tmp_path)
    trainer.fit(model, arrays_dm(colour_arrays))  # the data module resizes to 32 px
    assert model.data_config.image_size == 32 and model.data_config.crop is False
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    restored = ftlight.FineTuner.from_checkpoint(tmp_path / "m.ckpt")
    assert restored.data_config == model.data_config


def test_class_names_that_disagree_with_the_data_are_refused(tmp_path, colour_arrays) -> None:
    x, y = colour_arrays
    dm = ftlight.ImageDataModule.from_arrays(
        x, y, class_names=["red", "blue"], val_split=0.25, image_size=32
    )
    model = ftlight.FineTuner("resnet18", num_classes=2, freeze=True, class_names=["blue", "red"])
    with pytest.raises(ValueError, match=r"disagree with the data's classes \['red', 'blue'\]"):
        tiny_trainer(tmp_path).fit(model, dm)


def test_binary_f1_is_the_macro_average_of_both_classes() -> None:
    model = ftlight.FineTuner("resnet18", num_classes=1, task="binary")
    logits = torch.full((4, 1), 5.0)  # everything predicted positive
    target = torch.tensor([0, 0, 1, 1])
    model.val_metrics.update(model._metric_input(logits), target)
    values = model.val_metrics.compute()
    assert values["val_acc"].item() == pytest.approx(0.5)
    assert values["val_f1"].item() == pytest.approx((0.0 + 2 / 3) / 2)  # not 2/3 (positive only)
