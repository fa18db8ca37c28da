"""Applications carry Keras's layer names, classes, order and counts (reference data)."""

from __future__ import annotations

import numpy as np
import pytest

# Tops at their default size (headless models: tests/compat/test_applications_zoo.py, against
# Keras models built in the test).
CASES = [
    ("ResNet50", "ResNet50", {}, 25_636_712 - 26_560),
    ("InceptionV3", "InceptionV3", {}, 23_851_784 + 17_216),
]


@pytest.mark.parametrize(("fn", "ref", "kwargs", "params"), CASES, ids=[c[1] for c in CASES])
def test_layers_match_keras_reference(ck, reference, fn, ref, kwargs, params):
    model = getattr(ck.applications, fn)(weights=None, **kwargs)
    expected = reference(ref)
    assert len(model.layers) == expected["num_layers"]
    assert [la.name for la in model.layers] == [la["name"] for la in expected["layers"]]
    assert [type(la).__name__ for la in model.layers] == [la["class"] for la in expected["layers"]]
    if params is not None:
        assert model.count_params() == params
    shapes = {la.name: list(la.output.shape) for la in model.layers}
    mismatched = {
        la["name"] for la in expected["layers"] if shapes[la["name"]] != la["output_shape"]
    }
    if fn == "ResNet50":  # stride on the 3x3 conv (v1.5), documented in compat.applications
        assert mismatched == {
            f"conv{s}_block1_1_{k}" for s in (3, 4, 5) for k in ("conv", "bn", "relu")
        }
    else:
        assert mismatched == set()


@pytest.mark.slow
def test_vgg16_with_top_has_keras_param_count(ck, reference):
    model = ck.applications.VGG16(weights=None)
    assert model.count_params() == reference("VGG16")["total_params"] == 138_357_544
    assert [la.name for la in model.layers] == [la["name"] for la in reference("VGG16")["layers"]]


def test_recipe_selectors_pick_keras_layers(ck):
    model = ck.applications.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3))
    conv5 = [la.name for la in model.layers if la.name.startswith("conv5")]
    assert len(conv5) == 32 and conv5[0] == "conv5_block1_1_conv"


def test_bad_arguments_say_what_was_received(ck):
    with pytest.raises(ValueError, match="pooling"):
        ck.applications.VGG16(weights=None, include_top=False, pooling="sum")
    with pytest.raises(ValueError, match="at least 75x75"):
        ck.applications.InceptionV3(weights=None, include_top=False, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="weights"):
        ck.applications.ResNet50(weights="nowhere.h5", include_top=False)


def test_preprocess_and_decode(ck):
    x = np.full((1, 2, 2, 3), 255.0, dtype="float32")
    # copies: like Keras, preprocess_input writes over a float array
    np.testing.assert_allclose(ck.applications.inception_v3.preprocess_input(x.copy()), 1.0)
    caffe = ck.applications.vgg16.preprocess_input(x.copy())
    np.testing.assert_allclose(
        caffe[0, 0, 0], [255 - 103.939, 255 - 116.779, 255 - 123.68], rtol=1e-6
    )
    preds = np.zeros((1, 1000), dtype="float32")
    preds[0, 1] = 1.0
    top = ck.applications.resnet50.decode_predictions(preds, top=2)
    assert top[0][0] == ("n01443537", "goldfish", 1.0)  # Keras's (wnid, short_name, score)
    preds[0, 2] = 0.5
    assert ck.applications.vgg19.decode_predictions(preds, top=2)[0][1][:2] == (
        "n01484850",
        "great_white_shark",
    )
    with pytest.raises(ValueError, match=r"\(samples, 1000\)"):
        ck.applications.resnet50.decode_predictions(np.zeros((1, 10)))
