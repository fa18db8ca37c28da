"""``FineTuner(head_init="probe")``: the linear head fitted to the cached features of the frozen
backbone before the first step (LP-FT's linear probe), never again on resume, one head for
every DDP rank, and a clear error wherever it cannot run."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from ftlight import FineTuner
from ftlight.callbacks.feature_cache import FeatureCache
from ftlight.callbacks.staged import Milestone, StagedUnfreeze
from ftlight.models.head import PROBE_L2, fit_linear_probe
from tests.conftest import quiet_trainer, two_class_arrays_dm


def model(**kw) -> FineTuner:
    L.seed_everything(0, verbose=False)
    return FineTuner("resnet18", 2, None, image_size=32, freeze=True, lr=0.05, **kw)


class FirstStepHead(L.Callback):
    """The head's weight when the first training batch starts, and the cached training rows."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []
        self.rows = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.weights or batch_idx == 0:
            self.weights.append(pl_module.head[-1].weight.detach().clone())
        cache = next(cb for cb in trainer.callbacks if isinstance(cb, FeatureCache))
        self.rows = next(rows for (split, *_), (_, rows) in cache.store.items() if split == "train")


def objective_gradient(linear: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    w = linear.weight.detach().clone().requires_grad_()
    b = linear.bias.detach().clone().requires_grad_()
    value = F.cross_entropy(F.linear(x, w, b), y) + 0.5 * PROBE_L2 * w.pow(2).sum()
    value.backward()
    return float(torch.cat([w.grad.flatten(), b.grad]).abs().max())


def test_probe_fits_the_head_on_the_cached_rows_before_the_first_step(tmp_path) -> None:
    dm = two_class_arrays_dm()
    probed, plain = model(head_init="probe"), model()
    initial = probed.head[-1].weight.detach().clone()
    assert torch.equal(initial, plain.head[-1].weight)  # same seed, same random head
    seen = FirstStepHead()
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[seen]).fit(probed, datamodule=dm)

    first = seen.weights[0]
    assert not torch.allclose(first, initial)
    # the head at step 0 is the minimiser of the probe's objective on the cached rows
    features, labels = seen.rows.tensors[:2]
    reference = torch.nn.Linear(features.shape[1], 2)
    fit_linear_probe(reference, features, labels, F.cross_entropy)
    torch.testing.assert_close(first, reference.weight, rtol=1e-4, atol=1e-5)
    assert objective_gradient(reference, features, labels) < 1e-3
    # it separates the training rows, where the random head is at chance
    assert (reference(features).argmax(1) == labels).float().mean() == 1.0


def test_probe_is_not_repeated_on_resume(tmp_path) -> None:
    dm = two_class_arrays_dm()
    first = model(head_init="probe")
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=True)
    trainer.fit(first, datamodule=dm)
    ckpt = tmp_path / "one.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["state_dict"]["head.0.weight"]

    seen = FirstStepHead()
    resumed = model(head_init="probe")
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[seen]).fit(
        resumed, datamodule=dm, ckpt_path=ckpt
    )
    torch.testing.assert_close(seen.weights[0], saved, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"cache_features": False}, "caching is off: cache_features=False."),
        ({"freeze": None}, "trainable parameters"),
    ],
    ids=["cache-off", "backbone-trains"],
)
def test_probe_without_cached_rows_is_a_clear_error(tmp_path, kw, reason) -> None:
    net = model(head_init="probe", **{k: v for k, v in kw.items() if k != "freeze"})
    if "freeze" in kw:
        net.set_freeze(kw["freeze"])
    with pytest.raises(ValueError, match=r"head_init='probe'.*caching is off") as err:
        quiet_trainer(tmp_path, max_epochs=1).fit(net, datamodule=two_class_arrays_dm())
    assert reason in str(err.value)


def test_probe_needs_a_linear_head_and_a_known_mode() -> None:
    with pytest.raises(ValueError, match=r"linear head .*hidden=\(\).*\['Linear', 'Linear'\]"):
        model(head_init="probe", hidden=(8,))
    with pytest.raises(
        ValueError, match=r"head_init must be 'auto', 'random' or 'probe'\. Received: 'lp'"
    ):
        model(head_init="lp")


def test_probe_fits_a_binary_head_with_its_own_loss() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = (x[:, 0] - 0.5 * x[:, 1] > 0).float()
    head = torch.nn.Linear(5, 1)

    def bce(logits, target):
        return F.binary_cross_entropy_with_logits(logits.squeeze(1), target)

    fit_linear_probe(head, x, y, bce)
    assert ((head(x).squeeze(1) > 0).float() == y).float().mean() >= 0.97
    assert head.weight[0, 0] > 0 > head.weight[0, 1]


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch, lightning as L
    sys.path.insert(0, {root!r})
    from ftlight import FineTuner
    from tests.conftest import quiet_trainer, two_class_arrays_dm

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 0:
                torch.save(pl_module.head[-1].weight, f"head{{trainer.global_rank}}.pt")

    L.seed_everything(0, verbose=False)
    net = FineTuner("resnet18", 2, None, image_size=32, freeze=True, head_init="probe")
    trainer = quiet_trainer(".", max_epochs=1, devices=2, strategy="ddp", callbacks=[Record()])
    trainer.fit(net, datamodule=two_class_arrays_dm())
    """
)


@pytest.mark.slow
def test_every_ddp_rank_starts_from_rank_zeros_probe(tmp_path) -> None:
    root = str(Path(__file__).resolve().parents[1])
    (tmp_path / "run.py").write_text(DDP_SCRIPT.format(root=root))
    proc = subprocess.run(
        [sys.executable, "run.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    heads = [torch.load(tmp_path / f"head{rank}.pt") for rank in (0, 1)]
    torch.testing.assert_close(heads[0], heads[1], rtol=0, atol=0)
    L.seed_everything(0, verbose=False)
    random_head = FineTuner("resnet18", 2, None, image_size=32).head[-1].weight
    assert not torch.allclose(heads[0], random_head)


class Rates(L.Callback):
    """The head's learning rate before every training step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def defaults(**kw) -> FineTuner:
    """The issue-14 snippet's model: nothing about the head's start or schedule given."""
    L.seed_everything(0, verbose=False)
    return FineTuner("resnet18", 2, None, image_size=32, freeze=True, lr=0.05, **kw)


def test_default_probes_a_frozen_cached_linear_head_and_anneals(tmp_path, caplog) -> None:
    net, seen, rates = defaults(), FirstStepHead(), Rates()
    assert net.hparams.head_init == "auto" and net.hparams.scheduler == "auto"
    with caplog.at_level(logging.INFO):
        quiet_trainer(tmp_path, max_epochs=3, callbacks=[seen, rates]).fit(
            net, datamodule=two_class_arrays_dm()
        )
    said = caplog.text
    assert "head_init='auto': head fitted by a linear probe" in said
    assert "scheduler='auto': cosine from lr=0.05 to 0" in said  # the choice is said
    features, labels = seen.rows.tensors[:2]
    reference = torch.nn.Linear(features.shape[1], 2)
    fit_linear_probe(reference, features, labels, F.cross_entropy)
    torch.testing.assert_close(seen.weights[0], reference.weight, rtol=1e-4, atol=1e-5)
    assert net.head_probed and net.anneal
    # cosine from the given rate (it stays the peak) towards 0 over the fit's 9 steps
    assert rates.lrs[0] == pytest.approx(0.05)
    assert all(a > b for a, b in zip(rates.lrs, rates.lrs[1:], strict=False))
    assert rates.lrs[-1] < 0.01
    ckpt = tmp_path / "probed.ckpt"
    net.trainer.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=True)["ftlight"]["anneal"] is True


@pytest.mark.parametrize(
    "kw",
    [
        {"hidden": (8,)},  # a head the probe cannot fit
        {"cache_features": False},  # no cached rows
        {"head_init": "random"},  # asked for
        {"scheduler": None},  # probed, but a constant rate asked for
    ],
    ids=["hidden", "no-cache", "random", "constant"],
)
def test_default_is_random_and_constant_where_the_probe_cannot_run(tmp_path, kw) -> None:
    net, seen, rates = defaults(**kw), FirstStepHead(), Rates()
    initial = net.head[-1].weight.detach().clone()
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[seen, rates]).fit(
        net, datamodule=two_class_arrays_dm()
    )
    assert rates.lrs == [pytest.approx(0.05)] * len(rates.lrs)  # the given rate, constant
    assert not net.anneal
    if "scheduler" in kw:  # the probe still runs: only the schedule was asked for
        assert net.head_probed
    else:
        assert not net.head_probed
        torch.testing.assert_close(seen.weights[0], initial, rtol=0, atol=0)


def test_default_keeps_a_random_head_in_a_staged_run(tmp_path) -> None:
    """Staged runs (fine_tune, the staged configs) cache their frozen phase in one process but
    not under DDP (gated groups): ``head_init="auto"`` leaves their head random everywhere so
    one process and several start alike (tests/test_ddp.py compares them)."""
    net, seen = defaults(), FirstStepHead()
    initial = net.head[-1].weight.detach().clone()
    staged = StagedUnfreeze([Milestone(epoch=1, groups=["stage4"])])
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[seen, staged])
    trainer.fit(net, datamodule=two_class_arrays_dm())
    cache = next(cb for cb in trainer.callbacks if isinstance(cb, FeatureCache))
    assert 0 in cache.epochs_cached  # the rows were there: the probe could have run
    assert not net.head_probed and not net.anneal
    torch.testing.assert_close(seen.weights[0], initial, rtol=0, atol=0)


def test_resume_continues_the_annealed_schedule_and_does_not_probe_again(tmp_path, caplog) -> None:
    """A fit from the probe resumed from its epoch-0 checkpoint takes the rates of the run
    that was never stopped (the anneal flag and the scheduler's state come back), and does
    not fit the probe again over the trained head."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    whole = Rates()
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    options = {"max_epochs": 3, "enable_checkpointing": True}
    quiet_trainer(tmp_path / "a", callbacks=[whole, every_epoch], **options).fit(
        defaults(), datamodule=two_class_arrays_dm()
    )
    per_epoch = len(whole.lrs) // 3
    resumed, later = defaults(), Rates()
    caplog.clear()  # the first run's log said it probed
    with caplog.at_level(logging.INFO):
        quiet_trainer(tmp_path / "b", callbacks=[later], **options).fit(
            resumed,
            datamodule=two_class_arrays_dm(),
            ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt",
        )
    assert resumed.anneal and resumed.head_probed
    assert later.lrs == pytest.approx(whole.lrs[per_epoch:])  # still falling, as uninterrupted
    assert later.lrs[0] < whole.lrs[0]
    assert "fitted by a linear probe" not in caplog.text
    assert "Restoring states from the checkpoint" in caplog.text  # the log was captured
