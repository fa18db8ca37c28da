"""Keras's own weight files as an application's ``weights``: Keras's exact architecture and
predictions (files shaped like Keras's ImageNet downloads, written here with random weights)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from compat.applications import _keras_weights
from compat.backend import to_snake_case


def _randomise(model, seed: int = 0) -> None:
    """Random weights everywhere (Keras's weights=None leaves zero biases, unit BatchNorm
    statistics and near-zero outputs in deep models: a comparison of those proves little)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        if v.path.endswith(("gamma", "moving_variance")):
            value = rng.uniform(0.5, 1.5, shape)
        elif v.path.endswith(("beta", "moving_mean", "bias")):
            value = rng.normal(0.0, 0.2, shape)
        elif v.path.endswith("/count"):  # Normalization's (EfficientNet's stem)
            v.assign(rng.integers(1, 100, shape))
            continue
        elif v.path.endswith("/variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif v.path.endswith("/mean"):
            value = rng.normal(0.0, 0.2, shape)
        else:  # kernels: variance-preserving
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            if "depthwise" in v.path:
                fan_in = int(np.prod(shape[:2]))
            value = rng.normal(0.0, 1.0 / np.sqrt(max(fan_in, 1)), shape)
        v.assign(value.astype("float32"))


def _legacy_h5(keras, model, path: Path) -> Path:
    """Keras's legacy weights-only HDF5 layout, as its ImageNet files have it."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


def _close(a, b, tol: float = 1e-4) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = float(np.abs(b).max())
    assert scale > 1e-3, scale  # random weights give outputs of a real size
    assert float(np.abs(a - b).max()) <= tol * scale, (np.abs(a - b).max(), scale)


def _names(model) -> list[tuple[str, str]]:
    """``(class, name)`` of each layer, automatic names (``conv2d_7``: they count the session's
    layers) without their number."""
    out = []
    for layer in model.layers:
        cls = type(layer).__name__
        auto = re.fullmatch(rf"({to_snake_case(cls)})(_\d+)?", layer.name)
        out.append((cls, auto.group(1) if auto else layer.name))
    return out


def _compare(keras, ck, tmp_path: Path, app: str, size: int, **kwargs) -> None:
    """Real Keras and compat, both given the same Keras file, predict the same."""
    source = getattr(keras.applications, app)(weights=None, input_shape=(size, size, 3), **kwargs)
    _randomise(source)
    path = _legacy_h5(keras, source, tmp_path / "weights.h5")
    kwargs = {"input_shape": (size, size, 3), **kwargs}
    expected = getattr(keras.applications, app)(weights=str(path), **kwargs)
    model = getattr(ck.applications, app)(weights=str(path), **kwargs)
    assert _names(model) == _names(expected)
    assert model.name == expected.name
    assert model.count_params() == expected.count_params()
    x = np.random.default_rng(1).uniform(-1, 1, (2, size, size, 3)).astype("float32")
    _close(model.predict(x, verbose=0), expected.predict(x, verbose=0))


@pytest.mark.parametrize(
    ("app", "size", "kwargs"),
    [
        ("VGG16", 32, {"classes": 10}),
        # odd size: Keras's correct_pad pads (1, 1) where even sizes get (0, 1)
        ("MobileNetV2", 33, {"include_top": False, "pooling": "avg"}),
        ("MobileNetV2", 32, {"classes": 10, "classifier_activation": None}),
        ("MobileNetV2", 32, {"alpha": 0.35, "include_top": False}),  # tutorials' small width
        # Conv2D classifier + Reshape: classes patched in both
        ("MobileNet", 32, {"classes": 10}),
        # hard_sigmoid's `x + 3.0` and `x * (1 / 6)`: Keras's Add/Multiply operation nodes
        # with a constant operand; odd size: correct_pad
        ("MobileNetV3Small", 33, {"include_top": False, "pooling": "avg"}),
        ("MobileNetV3Large", 32, {"alpha": 0.75, "classes": 10, "classifier_activation": None}),
        pytest.param("Xception", 71, {"include_top": False, "pooling": "avg"},
                     marks=pytest.mark.slow),
        pytest.param("ResNet50", 32, {"include_top": False, "pooling": "avg"},
                     marks=pytest.mark.slow),
        pytest.param("ResNet50", 32, {"classes": 10}, marks=pytest.mark.slow),
        pytest.param("DenseNet121", 32, {"include_top": False, "pooling": "max"},
                     marks=pytest.mark.slow),
        pytest.param("InceptionV3", 75, {"include_top": False}, marks=pytest.mark.slow),
        # Normalization (unadapted: mean/variance/count in the file), VarianceScaling and
        # Constant initializers, Dropout(noise_shape=...) from Keras's config
        # (about 25 s and 40 s on 2 loaded cores: Keras builds each twice)
        pytest.param("EfficientNetB0", 32, {"include_top": False, "pooling": "avg"},
                     marks=pytest.mark.slow),
        # Normalization(mean=..., variance=...) in the config
        pytest.param("EfficientNetV2B0", 32, {"classes": 10}, marks=pytest.mark.slow),
        # VarianceScaling from the config was all V2S/M/L lacked
        pytest.param("EfficientNetV2S", 32, {"include_top": False}, marks=pytest.mark.slow),
        # Keras's own CustomScaleLayer (x + r * scale) on a list of two tensors
        pytest.param("InceptionResNetV2", 75, {"include_top": False}, marks=pytest.mark.slow),
        # LayerScale, nested Sequential stem/downsampling, `x + y` operation nodes, pooling
        # before the last LayerNormalization
        ("ConvNeXtTiny", 32, {"include_top": False, "pooling": "avg"}),
        # the nested Sequentials' inputs take the input size's shapes
        pytest.param("ConvNeXtTiny", 32, {"classes": 10}, marks=pytest.mark.slow),
    ],
)  # fmt: skip
def test_keras_file_gives_keras_predictions(keras, ck, tmp_path, app, size, kwargs) -> None:
    _compare(keras, ck, tmp_path, app, size, **kwargs)


@pytest.fixture
def mobilenet_files(keras, tmp_path: Path) -> dict[str, Path]:
    """A headless and a 10-class MobileNetV2 (32 px), as Keras writes them."""
    files = {}
    for kind, kwargs in (("notop", {"include_top": False}), ("top", {"classes": 10})):
        model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), **kwargs)
        _randomise(model)
        files[kind] = _legacy_h5(keras, model, tmp_path / f"{kind}.h5")
        if kind == "notop":
            model.save_weights(tmp_path / "notop.weights.h5")  # Keras 3's own format
            files["keras3"] = tmp_path / "notop.weights.h5"
            files["model"] = model
    return files


def test_keras_3_weights_file_and_odd_size(keras, ck, mobilenet_files) -> None:
    """A Keras 3 ``.weights.h5`` loads the same way; padding follows each layer's input size
    (Keras's correct_pad): at 37 px block_1_pad sees 19 px (odd), block_3_pad 10 (even)."""
    path = str(mobilenet_files["keras3"])
    x = np.random.default_rng(2).uniform(-1, 1, (1, 37, 37, 3)).astype("float32")
    kwargs = {"include_top": False, "input_shape": (37, 37, 3)}
    expected = keras.applications.MobileNetV2(weights=path, **kwargs)
    model = ck.applications.MobileNetV2(weights=path, **kwargs)
    for layer, padding in (("block_1_pad", ((1, 1), (1, 1))), ("block_3_pad", ((0, 1), (0, 1)))):
        assert tuple(map(tuple, expected.get_layer(layer).padding)) == padding
        assert model.get_layer(layer).padding == padding
    _close(model.predict(x, verbose=0), expected.predict(x, verbose=0))
    # any size without input_shape, as Keras's (None, None, 3)
    model = ck.applications.MobileNetV2(weights=path, include_top=False)
    expected = keras.applications.MobileNetV2(weights=path, include_top=False)
    assert model.name == expected.name == "mobilenetv2_1.00_None"
    _close(model.predict(x, verbose=0), expected.predict(x, verbose=0))


def test_wrong_keras_file_is_one_clear_error(ck, mobilenet_files) -> None:
    notop, top = str(mobilenet_files["notop"]), str(mobilenet_files["top"])
    with pytest.raises(
        ValueError, match=r"notop.h5 holds weights for 104 layers.*has 105.*include_top=False"
    ):
        ck.applications.MobileNetV2(weights=notop, input_shape=(32, 32, 3), classes=10)
    with pytest.raises(
        ValueError, match=r"top.h5 holds weights for 105 layers.*has 104.*include_top=True"
    ):
        ck.applications.MobileNetV2(weights=top, include_top=False)
    with pytest.raises(ValueError, match=r"layer #104 .predictions'.*classes"):
        ck.applications.MobileNetV2(weights=top, input_shape=(32, 32, 3), classes=5)
    with pytest.raises(ValueError, match=r"another application"):
        ck.applications.DenseNet121(weights=notop, include_top=False)
    with pytest.raises(ValueError, match=r"Only `None` and `softmax`"):
        ck.applications.MobileNetV2(
            weights=top, input_shape=(32, 32, 3), classes=10, classifier_activation="relu"
        )
    with pytest.raises(NotImplementedError, match=r"alpha=0.6.*\[0.35, 0.5, 0.75, 1.0, 1.3, 1.4\]"):
        ck.applications.MobileNetV2(weights=notop, include_top=False, alpha=0.6)
    with pytest.raises(NotImplementedError, match=r"dropout"):  # recorded with defaults only
        ck.applications.MobileNet(weights=notop, include_top=False, dropout=0.5)
    with pytest.raises(NotImplementedError, match=r"input_tensor"):
        ck.applications.MobileNetV2(weights=notop, input_tensor=ck.Input((32, 32, 3)))


def test_keras_cache_path(ck, mobilenet_files, tmp_path, monkeypatch) -> None:
    """``cached_weights`` finds the file where Keras's download put it ($KERAS_HOME/models)."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(FileNotFoundError, match=r"no_top.h5 is not there.*include_top=False"):
        _keras_weights.cached_weights("MobileNetV2", include_top=False)
    cache = tmp_path / "kh" / "models"
    cache.mkdir(parents=True)
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    shutil.copy(mobilenet_files["notop"], cache / name)
    path = ck.applications.cached_weights("MobileNetV2", include_top=False)
    assert path == str(cache / name)
    model = ck.applications.MobileNetV2(weights=path, include_top=False, pooling="avg")
    x = np.random.default_rng(3).uniform(-1, 1, (1, 32, 32, 3)).astype("float32")
    keras_model = mobilenet_files["model"]
    pooled = np.asarray(keras_model.predict(x, verbose=0)).mean(axis=(1, 2))
    _close(model.predict(x, verbose=0), pooled)
    # a whole Keras model file (.keras) as weights, as Keras's load_weights takes it
    keras_model.save(tmp_path / "whole.keras")
    model = ck.applications.MobileNetV2(weights=str(tmp_path / "whole.keras"), include_top=False)
    _close(model.predict(x, verbose=0), keras_model.predict(x, verbose=0))
    # Keras's names for MobileNet's other widths and sizes (keras/src/applications/mobilenet.py)
    assert _keras_weights._file_name("MobileNet", False, 0.25, 128) == (
        "mobilenet_2_5_128_tf_no_top.h5"
    )
    assert _keras_weights._file_name("MobileNetV3Large", False, 0.75, 224) == (
        "weights_mobilenet_v3_large_224_0.75_float_no_top_v2.h5"
    )
    with pytest.raises(ValueError, match=r"'EfficientNetB0'; known"):
        _keras_weights.cached_weights("EfficientNetB0")


def test_every_recorded_application_builds(ck) -> None:
    """Each recorded config builds in compat (meta device: no memory), and the applications
    the brief asks for first are recorded, not refused."""
    import torch

    from compat.keras_format import hook

    files = _keras_weights.CONFIGS.glob("*.json.gz")
    recorded = sorted(p.name[: -len(".json.gz")].partition("_alpha") for p in files)
    assert set(_keras_weights._FILES) <= {app for app, _, _ in recorded}
    # MobileNet(V2)'s and MobileNetV3's other alphas; EfficientNetB0-B7 (not in _FILES: see
    # there)
    assert len(recorded) == len(_keras_weights._FILES) + 8 + 2 + 8
    for app, _, alpha in recorded:
        for kwargs in ({"include_top": False, "pooling": "avg"}, {"classes": 7}):
            config = _keras_weights.keras_config(app, alpha=float(alpha or 1.0), **kwargs)
            with torch.device("meta"):
                model = hook("build")(config, app)
            assert model.output.shape[0] is None and len(model.output.shape) == 2
            if "classes" in kwargs:
                assert model.output.shape[1] == 7


def test_batchnorm_without_scale_or_center(keras, ck, tmp_path) -> None:
    """Keras's InceptionV3 uses BatchNormalization(scale=False): gamma is fixed at 1 and is no
    variable (Keras lists beta, moving mean and variance only); center=False fixes beta at 0."""
    source = keras.Sequential(
        [
            keras.Input((4, 4, 3)),
            keras.layers.BatchNormalization(scale=False),
            keras.layers.BatchNormalization(center=False),
        ]
    )
    _randomise(source)
    source.save(tmp_path / "bn.keras")
    model = ck.models.load_model(tmp_path / "bn.keras")
    assert [len(layer.weights) for layer in model.layers] == [3, 3]
    assert [len(layer.trainable_weights) for layer in model.layers] == [1, 1]
    x = np.random.default_rng(4).normal(size=(2, 4, 4, 3)).astype("float32")
    _close(model.predict(x, verbose=0), source.predict(x, verbose=0), tol=1e-6)
    model.layers[0].trainable = True  # the fixed gamma stays out of training
    assert [w.name for w in model.layers[0].trainable_weights] == ["beta"]
    model.save(tmp_path / "back.keras")  # and back: Keras reads scale=False with 3 variables
    again = keras.models.load_model(tmp_path / "back.keras")
    _close(again.predict(x, verbose=0), source.predict(x, verbose=0), tol=1e-6)


def test_file_with_other_layer_names_loads_by_order(keras, ck, mobilenet_files, tmp_path):
    """Keras's ImageNet files were written by Keras 2 (layer names such as ``conv2d_1``);
    Keras 3 loads them by layer order, whatever the names."""
    import h5py

    path = tmp_path / "renamed.h5"
    shutil.copy(mobilenet_files["notop"], path)
    with h5py.File(path, "r+") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        for name in names:
            f.move(name, f"keras2_{name}")
        f.attrs["layer_names"] = [f"keras2_{n}".encode() for n in names]
    x = np.random.default_rng(5).uniform(-1, 1, (1, 32, 32, 3)).astype("float32")
    expected = keras.applications.MobileNetV2(weights=str(path), include_top=False)
    model = ck.applications.MobileNetV2(weights=str(path), include_top=False)
    _close(model.predict(x, verbose=0), expected.predict(x, verbose=0))
