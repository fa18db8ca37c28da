"""Staged unfreezing: gating before milestones, warm-up, BN in inference mode, resume."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.nn.modules.batchnorm import _BatchNorm

from ftlight import FineTuner, ImageDataModule
from ftlight.callbacks.staged import Milestone, StagedUnfreeze
from tests.conftest import frozen_bn_state, quiet_trainer

LR_STAGE4 = 0.05


def make_data(seed: int = 0) -> ImageDataModule:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)
    y = np.repeat([0, 1], 16)
    x[y == 1, :, :, 0] = 255  # a learnable signal
    return ImageDataModule.from_arrays(
        x, y, class_names=["a", "b"], batch_size=8, val_split=0.25, augment=False
    )


def make_model() -> FineTuner:
    return FineTuner("resnet18", 2, None, image_size=32, freeze=True, optimizer="sgd", lr=0.05)


def make_trainer(tmp_path, max_epochs: int, callbacks: list) -> L.Trainer:
    return quiet_trainer(
        tmp_path, max_epochs=max_epochs, callbacks=callbacks, enable_checkpointing=True
    )


def snapshot(model: FineTuner, prefix: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(prefix)}


def changed(before: dict[str, torch.Tensor], model: FineTuner) -> bool:
    params = dict(model.named_parameters())
    return any(not torch.equal(v, params[n]) for n, v in before.items())


def stage4_schedule(**kwargs) -> StagedUnfreeze:
    return StagedUnfreeze(
        [Milestone(epoch=1, groups=["stage4"], lr=LR_STAGE4, **kwargs)], unfrozen_bn="inference"
    )


class EpochProbe(L.Callback):
    """Parameters and BN state at each epoch end; BN modes and stage4 lr during training."""

    def __init__(self) -> None:
        self.params: list[dict[str, torch.Tensor]] = []
        self.bn: list[dict[str, torch.Tensor]] = []
        self.bn_training: list[bool] = []
        self.stage4_lrs: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        for name, m in pl_module.backbone.model.named_modules():
            if isinstance(m, _BatchNorm) and name.startswith("layer4"):
                self.bn_training.append(m.training)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for g in optimizer.param_groups:
            if g["name"] == "stage4":
                grads = any(p.grad is not None for p in g["params"])
                self.stage4_lrs.append((trainer.current_epoch, g["lr"] if grads else 0.0))
                break

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.params.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})
        self.bn.append(frozen_bn_state(pl_module.backbone))


def test_gated_until_milestone_then_trains_with_frozen_bn(tmp_path) -> None:
    L.seed_everything(0)
    model = make_model()
    stem_param = "backbone.model.conv1.weight"
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    bn_initial = frozen_bn_state(model.backbone)
    probe = EpochProbe()
    staged = stage4_schedule()
    trainer = make_trainer(tmp_path, 2, [staged, probe])
    trainer.fit(model, make_data())

    # The optimizer had the stage4 groups from the start, at the milestone's lr.
    names = [g["name"] for g in trainer.optimizers[0].param_groups]
    assert "stage4" in names and "stage1" not in names
    assert all(
        g["lr"] == LR_STAGE4 for g in trainer.optimizers[0].param_groups if g["name"] == "stage4"
    )
    # requires_grad is set once, before the optimizer and DDP exist, and never flipped.
    assert all(p.requires_grad for n, p in model.named_parameters() if ".layer4." in n)
    assert not model.get_parameter(stem_param).requires_grad

    stage4 = [n for n in initial if ".layer4." in n]
    head = [n for n in initial if n.startswith("head.")]
    epoch0, epoch1 = probe.params
    assert all(torch.equal(epoch0[n], initial[n]) for n in stage4), "gated group moved"
    assert any(not torch.equal(epoch0[n], initial[n]) for n in head)
    assert any(not torch.equal(epoch1[n], epoch0[n]) for n in stage4), "unfrozen group idle"
    assert torch.equal(epoch1[stem_param], initial[stem_param])
    # Frozen BN in inference mode in every phase: never training, statistics untouched.
    assert probe.bn_training and not any(probe.bn_training)
    for state in probe.bn:
        assert all(torch.equal(state[k], bn_initial[k]) for k in bn_initial)
    assert {e for e, lr in probe.stage4_lrs if lr > 0} == {1}
    assert staged.phase == 1


def test_warmup_ramps_lr_and_unfrozen_bn_train(tmp_path) -> None:
    L.seed_everything(0)
    model = make_model()
    probe = EpochProbe()
    staged = StagedUnfreeze(
        [Milestone(epoch=1, groups=1, lr=LR_STAGE4, warmup_epochs=1.0)], unfrozen_bn="train"
    )
    make_trainer(tmp_path, 2, [staged, probe]).fit(model, make_data())
    steps_per_epoch = 3  # 24 training images, batch 8
    lrs = [lr for epoch, lr in probe.stage4_lrs if epoch == 1]
    expected = [LR_STAGE4 * (k + 1) / steps_per_epoch for k in range(steps_per_epoch)]
    assert lrs == pytest.approx(expected)
    # After its milestone with unfrozen_bn="train", stage4's BN trains (gated before it).
    per_epoch = len(probe.bn_training) // 2
    assert not any(probe.bn_training[:per_epoch])
    assert all(probe.bn_training[per_epoch:])
    # Optimizer lr is the base lr again after the step (warm-up is a per-step factor).
    stage4 = [g for g in model.trainer.optimizers[0].param_groups if g["name"] == "stage4"]
    assert all(g["lr"] == LR_STAGE4 for g in stage4)


def run_and_checkpoint(tmp_path, epochs: int) -> tuple[FineTuner, str, dict]:
    L.seed_everything(0)
    model = make_model()
    initial = snapshot(model, "backbone.model.layer4.")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    make_trainer(tmp_path, epochs, [stage4_schedule(), ckpt]).fit(model, make_data())
    return model, str(tmp_path / "ckpt" / "last.ckpt"), initial


def resume(tmp_path, ckpt_path: str, epochs: int) -> tuple[FineTuner, StagedUnfreeze, L.Trainer]:
    model = make_model()
    staged = stage4_schedule()
    trainer = make_trainer(tmp_path, epochs, [staged])
    trainer.fit(model, make_data(), ckpt_path=ckpt_path)
    return model, staged, trainer


def test_resume_before_milestone_unfreezes_on_time(tmp_path) -> None:
    first, path, initial = run_and_checkpoint(tmp_path, epochs=1)
    saved = torch.load(path, weights_only=False)
    state = next(v for k, v in saved["callbacks"].items() if "StagedUnfreeze" in k)
    assert state["phase"] == 0
    stage4 = snapshot(first, "backbone.model.layer4.")
    assert not changed(initial, first), "stage4 trained before its milestone"

    model, staged, _ = resume(tmp_path, path, epochs=2)
    assert staged.phase == 1
    assert changed(stage4, model), "stage4 did not train after resuming before its milestone"
    assert not changed(snapshot(first, "backbone.model.layer1."), model)


def test_resume_after_milestone_keeps_training_unfrozen_groups(tmp_path) -> None:
    first, path, initial = run_and_checkpoint(tmp_path, epochs=2)
    saved = torch.load(path, weights_only=False)
    state = next(v for k, v in saved["callbacks"].items() if "StagedUnfreeze" in k)
    assert state["phase"] == 1 and 0 in state["start_steps"]
    stage4 = snapshot(first, "backbone.model.layer4.")
    assert changed(initial, first)
    layer1 = snapshot(first, "backbone.model.layer1.")

    model, staged, trainer = resume(tmp_path, path, epochs=3)
    assert staged.phase == 1 and staged.start_steps == state["start_steps"]
    assert changed(stage4, model), "unfrozen group stopped training after resume (#21901)"
    assert not changed(layer1, model)
    optimizer = trainer.optimizers[0]
    groups = [g for g in optimizer.param_groups if g["name"] == "stage4"]
    assert groups and all(g["lr"] == LR_STAGE4 for g in groups)
    # The optimizer state of stage4 (momentum) was restored and kept being used.
    assert all(optimizer.state[p] for g in groups for p in g["params"])


def test_milestone_errors_name_the_layer_groups() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="stage4"):
        StagedUnfreeze([Milestone(epoch=1, groups=["layer9"])]).resolve(model)
    with pytest.raises(ValueError, match="top layer groups"):
        StagedUnfreeze([Milestone(epoch=1, groups=99)]).resolve(model)
    with pytest.raises(ValueError, match=">= 0"):
        StagedUnfreeze([Milestone(epoch=-1)])
    resolved = StagedUnfreeze([{"epoch": 1, "groups": 1}, {"epoch": 2, "groups": "all"}]).resolve(
        model
    )
    assert resolved["stage4"] == 0 and resolved["stem"] == 1


class _LrVsScheduler(L.Callback):
    """At each batch start: the stage4 group's LR against what the scheduler last set."""

    def __init__(self) -> None:
        self.pairs: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        optimizer = trainer.optimizers[0]
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        for i, group in enumerate(optimizer.param_groups):
            if group["name"] == "stage4":
                self.pairs.append((group["lr"], scheduler.get_last_lr()[i]))


def test_warmup_composes_with_a_step_scheduler(tmp_path) -> None:
    """The warm-up factor is undone right after each step, so the scheduler's LR stands."""
    L.seed_everything(0)
    model = FineTuner(
        "resnet18",
        2,
        None,
        image_size=32,
        freeze=True,
        optimizer="sgd",
        lr=0.05,
        scheduler="cosine",
    )
    probe = _LrVsScheduler()
    staged = StagedUnfreeze([Milestone(epoch=0, groups=1, lr=LR_STAGE4, warmup_epochs=1.0)])
    make_trainer(tmp_path, 2, [staged, probe]).fit(model, make_data())
    assert len(probe.pairs) == 12  # 6 steps x (decay, no-decay) groups of stage4
    for lr, scheduled in probe.pairs:
        assert lr == pytest.approx(scheduled)
    assert probe.pairs[-1][0] < probe.pairs[1][0]  # the cosine schedule did decay it
