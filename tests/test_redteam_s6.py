"""Red-team of session 6's ``head_init="probe"``: non-finite features are one clear error; a
learning-rate finder beside the probe (it would sweep the random head while training starts
from the probe) is refused; a second ``fit``, or a fit of a module rebuilt from a checkpoint,
goes on from the trained head instead of probing over it."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from ftlight import FineTuner
from ftlight.models.head import fit_linear_probe
from ftlight.tuning import LRFinder
from tests.conftest import quiet_trainer, two_class_arrays_dm


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_probe_on_non_finite_features_is_a_clear_error(bad) -> None:
    """A NaN/inf feature made L-BFGS's line search raise torch's 'value cannot be converted
    to type float without overflow'; the docstring promises FloatingPointError."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    x[3, 1] = bad
    head = torch.nn.Linear(4, 2)
    before = head.weight.detach().clone()
    with pytest.raises(FloatingPointError, match=r"1 of the 64 feature values are not finite"):
        fit_linear_probe(head, x, y, F.cross_entropy)
    assert torch.equal(head.weight, before)


class HeadAtSteps(FineTuner):
    """Records the head's weight at every training step (the finder's sweep included, where
    Lightning swaps every callback out)."""

    def training_step(self, batch, batch_idx):
        heads = self.__dict__.setdefault("heads", [])
        heads.append((self.global_step, self.head[-1].weight.detach().clone()))
        if [step for step, _ in heads].count(0) == self.__dict__.get("stop_at_start", 0):
            self.trainer.should_stop = True  # the step 0 wanted: no need to train on
        return super().training_step(batch, batch_idx)


def probed(**kw) -> HeadAtSteps:
    L.seed_everything(0, verbose=False)
    return HeadAtSteps("resnet18", 2, None, image_size=32, freeze=True, head_init="probe", **kw)


def test_a_learning_rate_finder_beside_the_probe_is_refused(tmp_path) -> None:
    """Lightning's sweep runs with the callbacks swapped out, so the probe would come after
    it: the rate would be found for the random head while training starts from the probe."""
    with pytest.raises(ValueError, match=r"head_init='probe' with a learning-rate finder"):
        probed(lr="auto")
    net = probed(lr=0.05)
    trainer = quiet_trainer(tmp_path, max_epochs=5, callbacks=[LRFinder(num_training_steps=15)])
    with pytest.raises(ValueError, match=r"finder sweeps before the probe is fitted"):
        trainer.fit(net, datamodule=two_class_arrays_dm())
    assert not net.head_probed


def test_a_second_fit_continues_from_the_trained_head(tmp_path) -> None:
    """The probe fits a module's head once: a second fit on a new Trainer (global_step 0
    again) goes on from the head the first one trained."""
    net = probed(lr=0.05)
    quiet_trainer(tmp_path, max_epochs=1).fit(net, datamodule=two_class_arrays_dm())
    trained = net.head[-1].weight.detach().clone()
    net.heads.clear()
    net.__dict__["stop_at_start"] = 1
    quiet_trainer(tmp_path, max_epochs=1).fit(net, datamodule=two_class_arrays_dm())
    torch.testing.assert_close(net.heads[0][1], trained, rtol=0, atol=0)


def test_a_module_from_a_checkpoint_keeps_its_trained_head(tmp_path) -> None:
    """Checkpoints say the head was probed: a module rebuilt from one and fitted anew (global
    step 0, no resume) trains on from the checkpoint's head."""
    net = probed(lr=0.05)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(net, datamodule=two_class_arrays_dm())
    trainer.save_checkpoint(tmp_path / "probed.ckpt")
    rebuilt = HeadAtSteps.from_checkpoint(tmp_path / "probed.ckpt")
    assert rebuilt.head_probed
    saved = rebuilt.head[-1].weight.detach().clone()
    rebuilt.__dict__["stop_at_start"] = 1
    quiet_trainer(tmp_path, max_epochs=1).fit(rebuilt, datamodule=two_class_arrays_dm())
    torch.testing.assert_close(rebuilt.heads[0][1], saved, rtol=0, atol=0)
