"""BatchNorm folded into convolutions for inference, and channels-last by default on the CPU."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from torch import nn

from ftlight import FineTuner, ImageDataModule
from ftlight.models.fold import FoldedInference, fold_batchnorm
from tests.conftest import quiet_trainer, two_class_arrays_dm


def with_random_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from a fresh BatchNorm's identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


# tf_efficientnet_lite0 is ftlight's efficientnet_lite0: TF-"same" padded convolutions
@pytest.mark.parametrize("name", ["resnet18", "test_efficientnet", "tf_efficientnet_lite0"])
def test_folded_copy_computes_the_original_without_batchnorm(name: str) -> None:
    model = with_random_statistics(timm.create_model(name, pretrained=False, num_classes=0))
    folded, count = fold_batchnorm(model)
    # every BatchNorm of these models reads a convolution; timm's BatchNormAct2d keeps its act
    assert count == len(batchnorms(model)) > 5
    assert batchnorms(folded) == []
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected, got = model(x), folded(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert model.training is False and all(m.training is False for m in folded.modules())


def test_models_without_foldable_batchnorm_or_untraceable_keep_their_forward() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # fx cannot trace a branch on values
                x = -x
            return self.bn(self.conv(x))

    class SharedConvOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y  # the conv's output is read twice: folding would change y

    assert fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())) is None
    assert fold_batchnorm(DataDependent().eval()) is None
    assert fold_batchnorm(SharedConvOutput().eval()) is None


def test_copy_is_dropped_when_weights_change_or_in_training_mode() -> None:
    model = with_random_statistics(timm.create_model("resnet18", pretrained=False, num_classes=0))
    fold = FoldedInference(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = fold.forward_or_none(x)
        torch.testing.assert_close(first, model(x), rtol=1e-4, atol=1e-4)
        model.train()
        assert fold.forward_or_none(x) is None  # training mode runs the original
        model.eval()
        assert fold.forward_or_none(x) is not None
        model.conv1.weight.add_(0.1)  # an optimizer step would do the same in place
        assert fold.forward_or_none(x) is None and fold.copy is None

    fold = FoldedInference(model)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)  # new statistics: the copy must not serve the old ones
    with torch.no_grad():
        assert fold.forward_or_none(x) is None


def test_a_copy_that_disagrees_on_its_first_batch_is_dropped_with_a_warning() -> None:
    model = with_random_statistics(timm.create_model("resnet18", pretrained=False, num_classes=0))
    fold = FoldedInference(model)
    with torch.no_grad():
        fold.copy.conv1.weight.mul_(2)  # a fold gone wrong
        x = torch.randn(2, 3, 32, 32)
        with pytest.warns(UserWarning, match="BatchNorm folding changed"):
            out = fold.forward_or_none(x)
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    assert fold.copy is None


def small_dm() -> ImageDataModule:
    return two_class_arrays_dm(batch_size=4, test=10)


class ModelCalls:
    """Counts the images the unfolded timm model runs."""

    def __init__(self, model: FineTuner) -> None:
        self.images = 0
        model.backbone.model.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        self.images += len(out)


def test_test_and_predict_run_the_folded_copy_and_score_as_the_original(tmp_path) -> None:
    model = FineTuner("resnet18", 2, None, image_size=32, freeze=True)
    with_random_statistics(model.backbone.model)
    dm = small_dm()
    dm.setup()
    x, _ = next(iter(dm.test_dataloader()))
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model.probabilities(model(xb)) for xb, _ in dm.test_dataloader()])
    calls = ModelCalls(model)
    predicted = torch.cat(quiet_trainer(tmp_path).predict(model, dm.test_dataloader()))
    # only the first batch ran the original model, to check the folded copy against it
    assert calls.images == len(x)
    torch.testing.assert_close(predicted, expected, rtol=1e-4, atol=1e-4)
    assert "_fold" not in model.backbone.__dict__  # nothing outlives the predict loop
    calls.images = 0
    quiet_trainer(tmp_path).test(model, datamodule=dm, verbose=False)
    assert calls.images == len(x)


def test_the_frozen_feature_cache_runs_the_folded_copy(tmp_path) -> None:
    model = FineTuner("resnet18", 2, None, image_size=32, freeze=True)
    with_random_statistics(model.backbone.model)
    calls = ModelCalls(model)
    dm = small_dm()
    quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=0).fit(model, dm)
    assert calls.images == dm.batch_size  # the train pass's first batch, the check
    assert "_fold" not in model.backbone.__dict__


def test_bf16_inference_folds_without_a_false_alarm(tmp_path) -> None:
    model = FineTuner("resnet18", 2, None, image_size=32, freeze=True)
    with_random_statistics(model.backbone.model)
    dm = small_dm()
    dm.setup()
    calls = ModelCalls(model)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="BatchNorm folding")
        trainer = quiet_trainer(tmp_path, precision="bf16-mixed")
        predicted = torch.cat(trainer.predict(model, dm.test_dataloader()))
    assert calls.images == dm.batch_size  # the check's batch only: the copy ran the rest
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = torch.cat([model.probabilities(model(x)) for x, _ in dm.test_dataloader()])
    torch.testing.assert_close(predicted.float(), expected.float(), rtol=0, atol=0.05)


def test_backbones_are_channels_last_on_the_cpu_unless_asked_not_to() -> None:
    def conv_weight(model: FineTuner) -> torch.Tensor:
        return model.backbone.model.conv1.weight

    assert conv_weight(FineTuner("resnet18", 2, None)).is_contiguous(
        memory_format=torch.channels_last
    )
    plain = conv_weight(FineTuner("resnet18", 2, None, channels_last=False))
    assert plain.is_contiguous() and not plain.is_contiguous(memory_format=torch.channels_last)
