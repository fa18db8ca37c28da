"""Red team 8: BatchNorm folding (ftlight.models.fold) must never outlive its run or serve
weights other than the model's."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import lightning as L
import pytest
import timm
import torch

from ftlight import FineTuner
from ftlight.models.fold import FoldedInference
from tests.conftest import quiet_trainer
from tests.test_fold import small_dm, with_random_statistics


class _Boom(L.Callback):
    def on_predict_batch_end(self, *args: object) -> None:
        raise RuntimeError("boom")


def _model(seed: int = 0) -> FineTuner:
    model = FineTuner("resnet18", 2, None, image_size=32, freeze=True)
    with_random_statistics(model.backbone.model, seed=seed)
    return model


def _unfolded_val_loss(model: FineTuner, loader: torch.utils.data.DataLoader) -> float:
    model.eval()
    fold = model.backbone.__dict__.pop("_fold", None)
    try:
        with torch.no_grad():
            losses = [model.loss(model(x), y) * len(y) for x, y in loader]
    finally:
        if fold is not None:
            model.backbone.__dict__["_fold"] = fold
    return float(sum(losses) / len(loader.dataset))


def test_a_predict_that_raised_leaves_no_fold_for_the_next_run(tmp_path) -> None:
    """An exception in predict skips Lightning's teardown: the fold stayed on the backbone,
    and a later validate after load_state_dict(assign=True) (new tensors, equal version
    counters) scored the old weights (val_loss 0.78 instead of 2.19)."""
    model = _model()
    dm = small_dm()
    dm.setup()
    with pytest.raises(RuntimeError, match="boom"):
        quiet_trainer(tmp_path, callbacks=[_Boom()]).predict(model, dm.test_dataloader())
    other = _model(seed=7)  # built the same way: the same version counters
    model.load_state_dict(other.state_dict(), assign=True)
    (result,) = quiet_trainer(tmp_path).validate(model, dm.val_dataloader(), verbose=False)
    assert "_fold" not in model.backbone.__dict__
    assert result["val_loss"] == pytest.approx(
        _unfolded_val_loss(model, dm.val_dataloader()), rel=1e-4
    )


@pytest.mark.parametrize("change", ["assign", "data", "replace_model"])
def test_the_fold_never_serves_weights_the_model_no_longer_has(change: str) -> None:
    """Weights replaced without an in-place write keep every version counter as it was."""
    model = _model().eval()
    other = _model(seed=7)
    x = torch.randn(4, 3, 32, 32)
    model.backbone.start_folded_inference()
    with torch.no_grad():
        model.backbone(x)  # the first batch: checked and kept
        assert model.backbone.__dict__["_fold"].copy is not None
        if change == "assign":
            model.load_state_dict(other.state_dict(), assign=True)
        elif change == "data":
            for p in model.backbone.model.parameters():
                p.data = p.data * 1.5
        else:
            model.backbone.model = other.backbone.model
        got = model.backbone(x)
        model.backbone.stop_folded_inference()
        expected = model.backbone(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_pickles_and_copies_of_a_model_in_predict_do_not_carry_the_folded_copy() -> None:
    model = _model().eval()
    buf = io.BytesIO()
    torch.save(model, buf)
    plain = buf.tell()
    model.backbone.start_folded_inference()
    buf = io.BytesIO()
    torch.save(model, buf)
    assert buf.tell() < plain * 1.1  # not a second copy of the backbone
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert "_fold" not in twin.backbone.__dict__
    assert "_fold" in model.backbone.__dict__  # the original keeps its own


def test_a_fold_started_in_training_mode_folds_the_inference_forward() -> None:
    """fx bakes Python-level ``self.training`` branches (GhostNet's head dropout) into the
    graph: traced in training mode, the copy dropped out at random, failed its check and
    warned that folding changed the outputs."""
    model = timm.create_model("ghostnet_050", pretrained=False, num_classes=0)
    with_random_statistics(model).train()
    fold = FoldedInference(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            got = fold.forward_or_none(x)
            expected = model(x)
    assert fold.copy is not None
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
