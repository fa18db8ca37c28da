""".keras and .weights.h5 round trips of one application per family (APPS of
test_applications_zoo, its small sizes), with random weights, both ways:

- Keras -> compat: real Keras's model (Keras's own graph: MobileNetV3's operation nodes,
  ConvNeXt's LayerScale and nested Sequentials...)
  saved by Keras loads with ``load_model``, has Keras's config and computes Keras's outputs;
  Keras's ``.weights.h5`` of it loads over other weights with the same outputs.
- compat -> Keras: compat's own application (its torch variant) saved by compat loads in
  real Keras and computes compat's outputs; compat's ``.weights.h5`` loads into that Keras
  model over other weights with the same outputs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_applications_zoo import APPS
from test_keras_weights import _close, _names, _randomise

# Each case builds a whole application in Keras and in compat (1-4 s on 2 idle cores).
# `slow`: Keras -> compat of the deep ones (compat builds Keras's graph and initialises
# every weight before the file's replace them: 5-17 s). InceptionResNetV2 (54M parameters
# without its top, 220 MB a file, four files) has one slow test of its own doing both ways
# (46 s on 2 cores with one other job; 86-146 s at load averages 6-9: mostly Keras building
# its graph and reading and writing the files; no step of it is repeated).
SLOW = {"InceptionV3", "Xception", "EfficientNetB0", "ResNet50V2", "ResNet50", "DenseNet121",
        "EfficientNetV2B0"}  # fmt: skip
LEFT_OUT = {"InceptionResNetV2"}
# even: compat's Xception pools pad torch's way (1 px every side) where Keras's 'same' pads
# only the bottom/right, which its Keras file must still compute exactly
SIZES = {"Xception": 72}
# compat's variant keeps what no Keras layer computes: ResNet50V2's pool1_pad pads with -inf
# before a 'valid' max pool (torch's MaxPool2d(padding=1) of the weights); its file holds
# keras.ops.pad(..., constant_values=-inf), an operation node, not a layer of Keras's model
WRITTEN_AS_OPERATIONS = {"ResNet50V2": ["pool1_pad"]}


def _cases(direction: str) -> list:
    slow = SLOW if direction == "keras_to_compat" else set()
    return [
        pytest.param(
            p.values[0],
            SIZES.get(p.id, p.values[3]),
            id=f"{p.id}-{direction}",
            marks=[pytest.mark.slow] if p.id in slow else [],
        )
        for p in APPS
        if p.id not in LEFT_OUT
    ]


def _x(size: int) -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, (2, size, size, 3)).astype("float32")


@pytest.mark.parametrize(("app", "size"), _cases("keras_to_compat"))
def test_keras_application_files_load_in_compat(keras, ck, tmp_path: Path, app, size) -> None:
    _keras_to_compat(keras, ck, tmp_path, app, size)


@pytest.mark.parametrize(("app", "size"), _cases("compat_to_keras"))
def test_compat_application_files_load_in_keras(keras, ck, tmp_path: Path, app, size) -> None:
    _compat_to_keras(keras, ck, tmp_path, app, size)


@pytest.mark.slow
def test_inception_resnet_v2_files_round_trip_both_ways(keras, ck, tmp_path: Path) -> None:
    """At Keras's smallest input (75x75), headless: every block type (stem, mixed_5b,
    block35, mixed_6a, block17, mixed_7a, block8, conv_7b) and the CustomScaleLayer residual
    sums, in both directions; one test so the two share a session and its warm-up."""
    names = _keras_to_compat(keras, ck, tmp_path, "InceptionResNetV2", 75)
    for prefix in ("mixed_5b", "block35_10", "mixed_6a", "block17_20", "mixed_7a", "block8_10",
                   "conv_7b"):  # fmt: skip
        assert any(n.startswith(prefix) for _, n in names), prefix
    assert sum(c == "CustomScaleLayer" for c, _ in names) == 10 + 20 + 10
    for f in tmp_path.iterdir():  # 880 MB of files
        f.unlink()
    _compat_to_keras(keras, ck, tmp_path, "InceptionResNetV2", 75)


def _keras_to_compat(keras, ck, tmp_path: Path, app: str, size: int) -> list[tuple[str, str]]:
    """Keras's application saved by Keras loads in compat with Keras's graph and outputs;
    returns its layers' ``_names``."""
    kwargs = {"weights": None, "include_top": False, "input_shape": (size, size, 3)}
    source = getattr(keras.applications, app)(**kwargs)
    _randomise(source)
    source.save(tmp_path / "k.keras")
    source.save_weights(tmp_path / "k.weights.h5")
    x = _x(size)
    expected = source.predict(x, verbose=0)
    loaded = ck.models.load_model(tmp_path / "k.keras")
    names = _names(loaded)
    assert names == _names(source)
    # written back as Keras wrote it (operation nodes, nested Sequentials, application layers)
    assert json.loads(json.dumps(loaded.get_config())) == json.loads(
        json.dumps(source.get_config())
    )
    assert loaded.count_params() == source.count_params()
    _close(loaded.predict(x, verbose=0), expected)
    _randomise(loaded, seed=5)
    assert not np.allclose(loaded.predict(x, verbose=0), expected, atol=1e-3)
    loaded.load_weights(tmp_path / "k.weights.h5")
    _close(loaded.predict(x, verbose=0), expected)
    return names


def _compat_to_keras(keras, ck, tmp_path: Path, app: str, size: int) -> None:
    """compat's application saved by compat loads in Keras with compat's outputs."""
    kwargs = {"weights": None, "include_top": False, "input_shape": (size, size, 3)}
    model = getattr(ck.applications, app)(**kwargs)
    _randomise(model, seed=2)
    x = _x(size)
    ours = model.predict(x, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Keras file, not compat's torch fallback
        model.save(tmp_path / "c.keras")
        model.save_weights(tmp_path / "c.weights.h5")
    back = keras.models.load_model(tmp_path / "c.keras")
    operations = WRITTEN_AS_OPERATIONS.get(app, [])
    assert not [layer.name for layer in back.layers if layer.name in operations]
    assert [op.name for op in back.operations if op.name in operations] == operations
    if operations:  # and compat reads its operation nodes back
        _close(ck.models.load_model(tmp_path / "c.keras").predict(x, verbose=0), ours)
    _close(back.predict(x, verbose=0), ours)
    _randomise(back, seed=3)
    assert not np.allclose(back.predict(x, verbose=0), ours, atol=1e-3)
    back.load_weights(tmp_path / "c.weights.h5")
    _close(back.predict(x, verbose=0), ours)
