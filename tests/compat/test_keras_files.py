"""Keras 3's own files both ways: real Keras (torch backend) writes and reads them in the test.

``.keras`` archives, ``.weights.h5`` and legacy ``.h5`` written by Keras load into compat with
Keras's outputs; compat's ``save``/``save_weights`` write files real Keras loads with compat's
outputs; ``get_config`` equals Keras's; a file never builds anything but compat's own layers
and a bad weights file is one error naming the layer and variable, with nothing assigned.
"""

from __future__ import annotations

import json
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from ftlight.files import UnreadableFileError


def _close(a: np.ndarray, b: np.ndarray, tol: float = 1e-4) -> None:
    """Equal within ``tol`` of the output's scale (deep models with weights=None give
    small outputs, so a plain absolute tolerance would pass anything)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = float(np.abs(b).max())
    assert scale > 0
    assert float(np.abs(a - b).max()) <= tol * scale, (np.abs(a - b).max(), scale)


def _sequential(K):
    return K.Sequential(
        [
            K.Input((8, 8, 3)),
            K.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv"),
            K.layers.BatchNormalization(name="bn"),
            K.layers.MaxPooling2D(name="pool"),
            K.layers.Flatten(name="flat"),
            K.layers.Dropout(0.2, name="drop"),
            K.layers.Dense(5, activation="softmax", name="head"),
        ],
        name="seq",
    )


def _functional(K):
    inner = K.Sequential(
        [K.Input((6, 6, 3)), K.layers.DepthwiseConv2D(3, padding="same"), K.layers.ReLU(6.0)],
        name="inner",
    )
    inputs = K.Input((6, 6, 3), name="image")
    a = K.layers.Conv2D(3, 1, name="a")(inputs)
    b = inner(inputs, training=False)
    x = K.layers.Add(name="add")([a, b])
    x = K.layers.Concatenate(name="cat")([x, K.layers.ZeroPadding2D(0, name="zp")(a)])
    x = K.layers.GlobalAveragePooling2D(name="gap")(x)
    x = K.layers.LayerNormalization(epsilon=1e-6, name="ln")(x)
    outputs = K.layers.Dense(2, name="out")(x)
    return K.Model(inputs, outputs, name="fn")


def _randomise(model, seed: int = 0) -> None:
    """Non-trivial weights everywhere (BatchNorm statistics included)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in weights])


def _json(config):
    return json.loads(json.dumps(config))


def _keras_saves(k_model, folder: Path) -> list[Path]:
    """``k.keras`` and the legacy ``k.h5``, saved by real Keras in ``folder``."""
    paths = [folder / "k.keras", folder / "k.h5"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras: "HDF5 is a legacy format"
        for path in paths:
            k_model.save(path)
    return paths


@pytest.mark.parametrize("build", [_sequential, _functional])
def test_keras_files_load_in_compat_and_compat_files_load_in_keras(
    keras, ck, tmp_path: Path, build
) -> None:
    shape = (3, 8, 8, 3) if build is _sequential else (3, 6, 6, 3)
    x = np.random.default_rng(1).uniform(-1, 1, shape).astype("float32")
    k_model = build(keras)
    _randomise(k_model)
    expected = k_model.predict(x, verbose=0)
    k_model.save_weights(tmp_path / "k.weights.h5")
    for path in _keras_saves(k_model, tmp_path):
        loaded = ck.models.load_model(path)
        assert type(loaded).__name__ == type(k_model).__name__.replace("Functional", "Model")
        assert [layer.name for layer in loaded.layers] == [layer.name for layer in k_model.layers]
        _close(loaded.predict(x, verbose=0), expected)
    c_model = build(ck)
    assert not np.allclose(c_model.predict(x, verbose=0), expected, atol=1e-3)
    for name in ("k.weights.h5", "k.h5", "k.keras"):  # Keras's load_weights reads all three
        c_model.load_weights(tmp_path / name)
        _close(c_model.predict(x, verbose=0), expected)

    # get_config is Keras's, dtype policies and build configs included
    assert _json(c_model.get_config()) == _json(k_model.get_config())
    rebuilt = type(c_model).from_config(c_model.get_config())
    assert [type(a) for a in rebuilt.layers] == [type(b) for b in c_model.layers]

    # compat -> Keras: all three files, read by real Keras
    c_model.save(tmp_path / "c.keras")
    c_model.save(tmp_path / "c.h5")
    c_model.save_weights(tmp_path / "c.weights.h5")
    assert zipfile.ZipFile(tmp_path / "c.keras").namelist() == [
        "metadata.json",
        "config.json",
        "model.weights.h5",
    ]
    for name in ("c.keras", "c.h5"):
        _close(keras.models.load_model(tmp_path / name).predict(x, verbose=0), expected)
    fresh = build(keras)
    fresh.load_weights(tmp_path / "c.weights.h5")
    _close(fresh.predict(x, verbose=0), expected)


def _normalizing(K):
    """Keras's Normalization: set mean/variance (a config, no variables), unadapted (the
    variables mean, variance, count: EfficientNet's stem), axis=None and invert=True."""
    return K.Sequential(
        [
            K.Input((4, 4, 3)),
            K.layers.Normalization(mean=[0.5, -1.0, 2.0], variance=[4.0, 0.25, 9.0], name="set"),
            K.layers.Normalization(axis=3, name="unadapted"),
            K.layers.Normalization(axis=None, name="scalar"),
            K.layers.Conv2D(2, 3, name="conv"),
            K.layers.Normalization(invert=True, name="inverse"),
            K.layers.Flatten(name="flat"),
        ],
        name="norm",
    )


def test_normalization_files_both_ways(keras, ck, tmp_path: Path) -> None:
    x = np.random.default_rng(1).uniform(-1, 1, (2, 4, 4, 3)).astype("float32")
    k_model = _normalizing(keras)
    rng = np.random.default_rng(0)
    for layer in k_model.layers:  # random statistics: variances positive, counts integral
        layer.set_weights(
            [rng.integers(1, 9, w.shape) if w.dtype.kind == "i" else rng.uniform(0.5, 2, w.shape)
             for w in layer.get_weights()]
        )  # fmt: skip
    assert [len(layer.weights) for layer in k_model.layers] == [0, 3, 3, 2, 3, 0]
    expected = k_model.predict(x, verbose=0)
    for path in _keras_saves(k_model, tmp_path):
        loaded = ck.models.load_model(path)
        assert [type(a).__name__ for a in loaded.layers] == [
            type(b).__name__ for b in k_model.layers
        ]
        _close(loaded.predict(x, verbose=0), expected)
        for a, b in zip(loaded.layers, k_model.layers, strict=True):  # count included
            for u, v in zip(a.get_weights(), b.get_weights(), strict=True):
                np.testing.assert_allclose(u, v, rtol=1e-6)
    c_model = _normalizing(ck)
    assert _json(c_model.get_config()) == _json(k_model.get_config())
    c_model.load_weights(tmp_path / "k.h5")
    c_model.save(tmp_path / "c.keras")
    c_model.save(tmp_path / "c.h5")
    for name in ("c.keras", "c.h5"):
        _close(keras.models.load_model(tmp_path / name).predict(x, verbose=0), expected)
    for axis in (-1, None):  # adapt(): Keras's mean and variance; count stays 0, as Keras's
        k_layer, c_layer = keras.layers.Normalization(axis=axis), ck.layers.Normalization(axis=axis)
        k_layer.adapt(3 * x + 1)
        c_layer.adapt(3 * x + 1)
        for u, v in zip(c_layer.get_weights(), k_layer.get_weights(), strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-5)
        _close(c_layer(x), k_layer(x))
    with pytest.raises(NotImplementedError, match=r"axis=\(1,\)\) on 4-d inputs.*last"):
        ck.layers.Normalization(axis=1)(x)  # Keras keeps axis 1; compat only the channels


def test_efficientnets_initializers_and_dropout_come_over(keras, ck, tmp_path: Path) -> None:
    """EfficientNet's config pieces: VarianceScaling and Constant initializers (built with
    Keras's statistics, written back as Keras's), Dropout(noise_shape=(None, 1, 1, 1))."""
    vs = keras.initializers.VarianceScaling
    k_model = keras.Sequential(
        [
            keras.Input((6, 6, 8)),
            keras.layers.Conv2D(
                64, 3, name="conv", bias_initializer=keras.initializers.Constant(0.25),
                kernel_initializer=vs(2.0, "fan_out", "truncated_normal"),
            ),
            keras.layers.Dropout(0.5, noise_shape=(None, 1, 1, 1), name="drop"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(200, kernel_initializer=vs(1 / 3, "fan_out", "uniform"), name="d"),
        ],
        name="eff",
    )  # fmt: skip
    x = np.random.default_rng(1).uniform(-1, 1, (2, 6, 6, 8)).astype("float32")
    expected = k_model.predict(x, verbose=0)
    k_model.save(tmp_path / "k.keras")
    loaded = ck.models.load_model(tmp_path / "k.keras")
    _close(loaded.predict(x, verbose=0), expected)
    assert _json(loaded.get_config()) == _json(k_model.get_config())
    loaded.save(tmp_path / "c.keras")
    _close(keras.models.load_model(tmp_path / "c.keras").predict(x, verbose=0), expected)

    fresh = type(loaded).from_config(loaded.get_config())  # initialised from the config
    conv, dense = (np.asarray(fresh.get_layer(n).get_weights()[0]) for n in ("conv", "d"))
    # Keras: truncated normal, std sqrt(2 / fan_out) (fan_out = 3 * 3 * 64), cut at 2 std
    # of the untruncated one; uniform with limit sqrt(3 * (1/3) / fan_out) (fan_out 200)
    assert abs(conv.std() / np.sqrt(2 / 576) - 1) < 0.05
    assert np.abs(conv).max() <= 2 * np.sqrt(2 / 576) / 0.87962566103423978
    assert abs(np.abs(dense).max() / np.sqrt(1 / 200) - 1) < 0.01
    np.testing.assert_array_equal(fresh.get_layer("conv").get_weights()[1], 0.25)

    drop = loaded.get_layer("drop")  # training: one keep/drop draw per sample
    out = np.asarray(drop(np.ones((64, 3, 3, 4), "float32"), training=True))
    assert set(np.unique(out)) == {0.0, 2.0}
    assert (out == out[:, :1, :1, :1]).all()


def test_compile_config_travels_both_ways(keras, ck, tmp_path: Path) -> None:
    k_model = _sequential(keras)
    k_model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.5), loss="mse")
    for path in _keras_saves(k_model, tmp_path):
        loaded = ck.models.load_model(path)
        assert type(loaded.optimizer).__name__ == "SGD" and loaded.optimizer.momentum == 0.5
        np.testing.assert_allclose(float(loaded.optimizer.learning_rate), 0.05, rtol=1e-6)
        assert loaded._compile_config.loss == "mse"
    x, y = np.ones((4, 8, 8, 3), "float32"), np.full((4, 5), 0.2, "float32")
    before = loaded.get_weights()[0].copy()
    loaded.fit(x, y, epochs=1, verbose=0)  # a Keras file's model trains right away
    assert not np.array_equal(before, loaded.get_weights()[0])
    loaded.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    loaded.save(tmp_path / "c.keras")
    again = keras.models.load_model(tmp_path / "c.keras")
    assert again.compiled and type(again.optimizer).__name__ == "Adam"
    assert again.loss == "categorical_crossentropy"


def _transfer(K, base):
    """The Keras transfer-learning tutorial's model: a frozen application called with
    training=False inside a functional model with a new head."""
    base.trainable = False
    inputs = K.Input((32, 32, 3))
    x = K.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    return K.Model(inputs, K.layers.Dense(2)(K.layers.Dropout(0.2)(x)))


@pytest.mark.parametrize("direction", ["keras_to_compat", "compat_to_keras"])
def test_an_application_comes_over_exactly(keras, ck, tmp_path: Path, direction) -> None:
    """Keras -> compat: Keras's own MobileNetV2 graph (its padding, alpha=0.35) is what loads,
    not compat's torch variant. compat -> Keras: compat's MobileNetV2 (torch padding, input
    map of the timm weights) is written with the extra ZeroPadding2D/1x1 Conv2D layers that
    say exactly what it computes. Both inside the tutorial's frozen transfer model (the name
    "mobilenetv2_1.00_32" holds a dot, which torch's module names cannot)."""
    x = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    kwargs = {"weights": None, "include_top": False, "input_shape": (32, 32, 3)}
    path = tmp_path / "app.keras"
    if direction == "keras_to_compat":
        base = keras.applications.MobileNetV2(alpha=0.35, **kwargs)
        source = _transfer(keras, base)
        source.save(path)
        loaded = ck.models.load_model(path)
        assert len(loaded.layers[1].layers) == len(base.layers)
        # Keras's weights never load into compat's torch variant (padding differs)
        base.save_weights(tmp_path / "k.weights.h5")
        with pytest.raises(UnreadableFileError, match=r"'Conv1_input_map' .* load_model"):
            ck.applications.MobileNetV2(**kwargs).load_weights(tmp_path / "k.weights.h5")
    else:
        base = ck.applications.MobileNetV2(**kwargs)
        source = _transfer(ck, base)
        source.save(path)
        loaded = keras.models.load_model(path)
        names = {layer.name for layer in loaded.layers[1].layers}
        added = names - {layer.name for layer in base.layers}
        assert added == {"Conv1_input_map", "Conv1_torch_pad"}, added
        source.save_weights(tmp_path / "c.weights.h5")  # and back into compat's own variant
        again = _transfer(ck, ck.applications.MobileNetV2(**kwargs))
        again.load_weights(tmp_path / "c.weights.h5")
        _close(again.predict(x, verbose=0), source.predict(x, verbose=0), tol=1e-6)
    assert [layer.trainable for layer in loaded.layers] == [True, False, True, True, True]
    _close(loaded.predict(x, verbose=0), source.predict(x, verbose=0))


@pytest.mark.slow  # ResNet50 built twice (meta, then real): about 10 s on 2 loaded cores
def test_keras_resnet50_loads_as_keras_built_it(keras, ck, tmp_path: Path) -> None:
    """Keras's ResNet50 (stride on the 1x1 convolutions, biases on every convolution) comes
    over as that architecture, not compat's torch-weights variant."""
    source = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3))
    source.save(tmp_path / "resnet.keras")
    loaded = ck.models.load_model(tmp_path / "resnet.keras")
    assert loaded.count_params() == source.count_params()
    assert loaded.get_layer("conv2_block1_1_conv").use_bias
    x = np.random.default_rng(3).uniform(-1, 1, (1, 32, 32, 3)).astype("float32")
    _close(loaded.predict(x, verbose=0), source.predict(x, verbose=0))


def test_other_suffixes_keep_compats_torch_file(ck, tmp_path: Path) -> None:
    model = _sequential(ck)
    model.save(tmp_path / "m.pt")
    model.save_weights(tmp_path / "m.weights.pt")
    assert zipfile.ZipFile(tmp_path / "m.pt").namelist()[0].endswith("data.pkl")
    loaded = ck.models.load_model(tmp_path / "m.pt")
    x = np.ones((1, 8, 8, 3), "float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    # a layer Keras's config cannot be written for: .keras warns and keeps compat's own file
    augmented = ck.Sequential(
        [ck.Input((8, 8, 3)), ck.layers.RandomBrightness(0.1, name="light"), ck.layers.Flatten()]
    )
    with pytest.warns(UserWarning, match=r"compat's own torch file.*'light'"):
        augmented.save(tmp_path / "aug.keras")
    assert ck.models.load_model(tmp_path / "aug.keras").layers[0].name == "light"


# ----- trust: what a file may build ----------------------------------------------------


def edit_keras_archive(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of Keras's archive ``src`` at ``dst`` whose ``config.json`` went through ``edit``
    (in place), every other member (weights, metadata) as Keras wrote it: a crafted file."""
    with zipfile.ZipFile(src) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(dst, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return dst


def _archive(path: Path, config: dict, weights: bytes | None = None) -> Path:
    if weights is None:
        weights = _empty_h5()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("model.weights.h5", weights)
    return path


def _empty_h5() -> bytes:
    import io

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_group("layers")
        f.create_group("vars")
    return buf.getvalue()


def _dense_sequential(layer: dict) -> dict:
    return {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": "s",
            "layers": [
                {"class_name": "InputLayer", "config": {"batch_shape": [None, 4], "name": "i"}},
                layer,
            ],
        },
    }


@pytest.mark.parametrize(
    "layer, message",
    [
        (
            {"module": "h11_evil_module", "class_name": "Dense", "config": {"units": 2}},
            r"'Dense' from module 'h11_evil_module' is a custom object",
        ),
        (
            {"module": "keras.layers", "class_name": "Dense", "registered_name": "my>Dense",
             "config": {"units": 2, "name": "d"}},
            r"registered as 'my>Dense', a custom object",
        ),
        (
            {"module": "keras.layers", "class_name": "Lambda",
             "config": {"name": "l", "function": {"class_name": "__lambda__"}}},
            r"Lambda layer holds Python code",
        ),
        (
            {"module": "keras.layers", "class_name": "TextVectorization", "config": {"name": "t"}},
            r"layer class 'TextVectorization' is not one compat builds",
        ),
        (
            {"module": "keras.layers", "class_name": "Dense",
             "config": {"name": "d", "units": 2, "activation": {"module": "h11_evil_module",
                                                                 "class_name": "function",
                                                                 "config": "f"}}},
            r"activation .* compat never deserialises functions",
        ),
        (
            {"module": "keras.src.ops.numpy", "class_name": "Add", "registered_name": "Add",
             "config": {"name": "a"}},
            r"operation 'a' in a Sequential model",
        ),
        (
            {"module": "keras.src.ops.numpy", "class_name": "Divide",
             "registered_name": "Divide", "config": {"name": "d"}},
            r"operation 'Divide' .*compat builds the operations \['Add', 'Multiply', 'Pad'\]",
        ),
        (
            {"module": "keras.layers", "class_name": "CustomScaleLayer",
             "config": {"name": "c", "scale": 0.1}},
            r"compat builds Keras's CustomScaleLayer of keras.src.applications.inception_re",
        ),
    ],
)  # fmt: skip
def test_a_config_builds_only_compats_own_layers(ck, tmp_path: Path, layer, message) -> None:
    path = _archive(tmp_path / "evil.keras", _dense_sequential(layer))
    with pytest.raises(UnreadableFileError, match=message) as err:
        ck.models.load_model(path)
    assert str(path) in str(err.value)
    assert "h11_evil_module" not in sys.modules


def test_a_real_keras_lambda_model_is_refused(keras, ck, tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2)])
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(UnreadableFileError, match=r"Lambda layer holds Python code"):
        ck.models.load_model(tmp_path / "lambda.keras")
    with pytest.raises(NotImplementedError, match=r"never classes of your own"):
        ck.models.load_model(tmp_path / "lambda.keras", custom_objects={"f": print})


def _rewrite(path: Path, out: Path, edit) -> Path:
    """A copy of the HDF5 weights file ``path`` with ``edit(h5py.File)`` applied."""
    out.write_bytes(path.read_bytes())
    with h5py.File(out, "r+") as f:
        edit(f)
    return out


def _replace(f, name: str, value: np.ndarray) -> None:
    del f[name]
    f.create_dataset(name, data=value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda f: _replace(f, "layers/dense/vars/0", np.zeros((3, 5), "float32")),
            r"variable kernel of layer 'head' \(layers/dense/vars/0\) has shape \(3, 5\) in the "
            r"file; the model expects \(16, 5\)",
        ),
        (
            lambda f: f.__delitem__("layers/batch_normalization/vars/3"),
            r"layer 'bn' \(layers/batch_normalization/vars\) holds variables \['0', '1', '2'\]",
        ),
        (
            lambda f: f.create_dataset("layers/dense/vars/2", data=np.zeros(5, "float32")),
            r"layer 'head' \(layers/dense/vars\) holds variables \['0', '1', '2'\]",
        ),
        (
            lambda f: f.create_dataset("layers/dense_9/vars/0", data=np.zeros(5, "float32")),
            r"weights for layers the model does not have: \['layers/dense_9'\]",
        ),
        (
            lambda f: f.__delitem__("layers/conv2d"),
            r"no weights for layer 'conv' \(expected group layers/conv2d/vars with 2 variables\)",
        ),
        (
            lambda f: f.create_dataset("layers/dense/vars/9", shape=(10**6, 10**6), dtype="f4"),
            r"layers/dense/vars/9 declares shape \(1000000, 1000000\) \(4,000,000,000,000 bytes\)",
        ),
    ],
)
def test_a_bad_weights_file_is_one_error_and_assigns_nothing(
    keras, ck, tmp_path: Path, edit, message
) -> None:
    k_model = _sequential(keras)
    k_model.save_weights(tmp_path / "good.weights.h5")
    bad = _rewrite(tmp_path / "good.weights.h5", tmp_path / "bad.weights.h5", edit)
    model = _sequential(ck)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(UnreadableFileError, match=message) as err:
        model.load_weights(bad)
    assert str(bad) in str(err.value)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)  # not one variable was assigned


def test_a_config_declaring_huge_layers_allocates_nothing(keras, ck, tmp_path: Path) -> None:
    """Dense(units=10**9) in config.json with a 4x2 kernel in the file: refused after building
    on the meta device (16 GB were never allocated), naming the variable."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    model.save(tmp_path / "small.keras")
    with zipfile.ZipFile(tmp_path / "small.keras") as archive:
        config = json.loads(archive.read("config.json"))
        weights = archive.read("model.weights.h5")
    config["config"]["layers"][1]["config"]["units"] = 4 * 10**9
    path = _archive(tmp_path / "huge.keras", config, weights)
    with pytest.raises(
        UnreadableFileError, match=r"variable kernel of layer 'd' .* \(4, 2\) in the"
    ):
        ck.models.load_model(path)


def test_a_config_whose_sizes_overflow_is_one_error(ck, tmp_path: Path) -> None:
    layers = [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, 10**9, 10**9, 3]}},
        {"class_name": "Flatten", "config": {"name": "f"}},
        {"class_name": "Dense", "config": {"name": "d", "units": 10**9}},
    ]
    layers[0]["config"]["name"] = "i"
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": layers}}
    path = _archive(tmp_path / "overflow.keras", config)
    with pytest.raises(UnreadableFileError, match=r"overflow\.keras: config\.json: .* layer 'd'"):
        ck.models.load_model(path)


def _fixed_batch(K):
    """A functional model on ``Input(batch_size=4)``: Keras's shapes keep the 4 throughout."""
    inputs = K.Input((6, 6, 3), batch_size=4, name="img")
    a = K.layers.Conv2D(3, 3, padding="same", name="a")(inputs)
    b = K.layers.BatchNormalization(name="bn")(a)
    x = K.layers.Add(name="add")([a, b])
    x = K.layers.GlobalAveragePooling2D(name="gap")(x)
    return K.Model(inputs, K.layers.Dense(2, name="out")(x), name="fixed")


def _archived_config(path: Path) -> dict:
    """The model config a ``.keras`` archive holds, without Keras's ``shared_object_id``
    marks (Python object ids, different in every session)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "shared_object_id"}
        return [strip(v) for v in value] if isinstance(value, list) else value

    with zipfile.ZipFile(path) as archive:
        return strip(json.loads(archive.read("config.json"))["config"])


def test_a_fixed_batch_size_is_written_as_keras_writes_it(keras, ck, tmp_path: Path) -> None:
    """``Input(batch_size=4)`` in a functional model: compat's config (every tensor shape and
    build_config) is Keras's, both ways through ``.keras`` files."""
    k_model, c_model = _fixed_batch(keras), _fixed_batch(ck)
    assert _json(c_model.get_config()) == _json(k_model.get_config())
    _randomise(k_model)
    c_model.set_weights(k_model.get_weights())
    x = np.random.default_rng(6).uniform(-1, 1, (4, 6, 6, 3)).astype("float32")
    k_model.save(tmp_path / "k.keras")
    c_model.save(tmp_path / "c.keras")
    assert _archived_config(tmp_path / "c.keras") == _archived_config(tmp_path / "k.keras")
    back = keras.models.load_model(tmp_path / "c.keras")
    assert tuple(back.input.shape) == (4, 6, 6, 3)
    _close(back.predict(x, verbose=0), k_model.predict(x, verbose=0))
    # Keras -> compat -> Keras keeps it
    loaded = ck.models.load_model(tmp_path / "k.keras")
    loaded.save(tmp_path / "again.keras")
    assert _archived_config(tmp_path / "again.keras") == _archived_config(tmp_path / "k.keras")
    _close(loaded.predict(x, verbose=0), k_model.predict(x, verbose=0))


def _operations(K):
    """Keras's hard sigmoid as MobileNetV3 writes it (``ReLU(6)(x + 3) * (1 / 6)``: ``+`` and
    ``*`` on KerasTensors are operation nodes with a constant), a constant first
    (``3.0 + x``) and two tensors (``a * b``)."""
    inputs = K.Input((4,), name="x")
    a = K.layers.Dense(3, name="a")(inputs)
    b = K.layers.Dense(3, name="b")(inputs)
    x = K.layers.ReLU(6.0, name="relu6")(a + 3.0) * (1.0 / 6.0)
    return K.Model(inputs, [x, (3.0 + b) * a], name="ops")


def test_keras_operation_nodes_come_over_both_ways(keras, ck, tmp_path: Path) -> None:
    source = _operations(keras)
    _randomise(source)
    source.save(tmp_path / "k.keras")
    x = np.random.default_rng(7).uniform(-3, 3, (5, 4)).astype("float32")
    loaded = ck.models.load_model(tmp_path / "k.keras")
    # operations are no layers of model.layers in Keras, nor here
    assert [layer.name for layer in loaded.layers] == ["x", "a", "b", "relu6"]
    assert _json(loaded.get_config()) == _json(source.get_config())
    for got, want in zip(loaded.predict(x, verbose=0), source.predict(x, verbose=0), strict=True):
        _close(got, want, tol=1e-6)
    loaded.save(tmp_path / "c.keras")  # written back as Keras wrote them
    assert _archived_config(tmp_path / "c.keras") == _archived_config(tmp_path / "k.keras")
    back = keras.models.load_model(tmp_path / "c.keras")
    for got, want in zip(back.predict(x, verbose=0), source.predict(x, verbose=0), strict=True):
        _close(got, want, tol=1e-6)
    config = _archived_config(tmp_path / "k.keras")
    add = next(e for e in config["layers"] if e["class_name"] == "Add")
    add["inbound_nodes"][0]["args"][1] = "3.0"  # a string where a number or tensor goes
    _archive(tmp_path / "bad.keras", {"module": "keras.src.models.functional",
                                      "class_name": "Functional", "config": config})  # fmt: skip
    with pytest.raises(UnreadableFileError, match=r"operation 'add'.*not Keras's \('3.0'\)"):
        ck.models.load_model(tmp_path / "bad.keras")


def _pads(K):
    """``keras.ops.pad`` on KerasTensors: zeros (Keras records ``constant_values=None``), -inf
    before a max pool (how compat writes ResNet50V2's pool1_pad) and a constant."""
    inputs = K.Input((5, 5, 2), name="x")
    a = K.layers.Conv2D(3, 1, name="a")(inputs)
    zeros = K.ops.pad(a, [[0, 0], [1, 1], [0, 2], [0, 0]])
    low = K.ops.pad(a, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=float("-inf"))
    pooled = K.layers.MaxPooling2D(3, strides=2, name="pool")(low)
    shifted = K.ops.pad(K.layers.Flatten(name="flat")(a), [[0, 0], [2, 0]], constant_values=2.5)
    return K.Model(inputs, [zeros, pooled, shifted], name="pads")


def test_keras_pad_operations_come_over_both_ways(keras, ck, tmp_path: Path) -> None:
    source = _pads(keras)
    _randomise(source)
    source.save(tmp_path / "k.keras")
    x = np.random.default_rng(3).normal(size=(2, 5, 5, 2)).astype("float32")
    want = source.predict(x, verbose=0)
    assert np.isfinite(want[1]).all()  # -inf never wins a pool window
    loaded = ck.models.load_model(tmp_path / "k.keras")
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in source.layers]
    assert len(source.layers) == 4  # the pads are operations, not layers
    assert _json(loaded.get_config()) == _json(source.get_config())
    for got, expected in zip(loaded.predict(x, verbose=0), want, strict=True):
        _close(got, expected, tol=1e-6)
    loaded.save(tmp_path / "c.keras")
    assert _archived_config(tmp_path / "c.keras") == _archived_config(tmp_path / "k.keras")
    # compat's own keras.ops.pad builds the same graph, which Keras reads
    ours = _pads(ck)
    assert _json(ours.get_config()) == _json(source.get_config())
    ours.set_weights(source.get_weights())
    ours.save(tmp_path / "ours.keras")
    back = keras.models.load_model(tmp_path / "ours.keras")
    for got, expected in zip(back.predict(x, verbose=0), want, strict=True):
        _close(got, expected, tol=1e-6)
    # eager, as Keras
    eager = [np.arange(6.0).reshape(2, 3), [[1, 0], [0, 2]]]
    np.testing.assert_array_equal(
        ck.ops.pad(*eager, constant_values=-1.0),
        keras.ops.convert_to_numpy(keras.ops.pad(*eager, constant_values=-1.0)),
    )
    config = _archived_config(tmp_path / "k.keras")
    node = next(e for e in config["layers"] if e["class_name"] == "Pad")
    node["config"]["mode"] = "reflect"
    _archive(tmp_path / "bad.keras", {"module": "keras.src.models.functional",
                                      "class_name": "Functional", "config": config})  # fmt: skip
    expected = r"operation 'pad(_\d)?'.*mode 'constant' only. Received: mode='reflect'"
    with pytest.raises(UnreadableFileError, match=expected):
        ck.models.load_model(tmp_path / "bad.keras")


def test_a_nested_model_called_on_two_tensors_comes_over(keras, ck, tmp_path: Path) -> None:
    """Keras records ``mask=[None, None]`` for a nested model called on a list: compat reads
    it (no mask is none) and writes it back so."""
    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    inner = keras.Model([a, b], keras.layers.Add(name="sum")([a, b]), name="inner")
    x, y = keras.Input((3,), name="x"), keras.Input((3,), name="y")
    source = keras.Model([x, y], keras.layers.Dense(2, name="d")(inner([x, y])), name="outer")
    _randomise(source)
    source.save(tmp_path / "k.keras")
    loaded = ck.models.load_model(tmp_path / "k.keras")
    node = next(e for e in _json(loaded.get_config())["layers"] if e["name"] == "inner")
    assert node["inbound_nodes"][0]["kwargs"] == {"mask": [None, None]}
    data = [np.random.default_rng(i).normal(size=(4, 3)).astype("float32") for i in (8, 9)]
    _close(loaded.predict(data, verbose=0), source.predict(data, verbose=0), tol=1e-6)


def _augmented(K):
    """keras.io's transfer-learning tutorial: augmentation layers in a nested Sequential."""
    augment = K.Sequential(
        [
            K.layers.RandomFlip("horizontal", name="flip"),
            K.layers.RandomRotation(0.1, seed=3, name="rotate"),
            K.layers.RandomZoom(0.2, name="zoom"),
            K.layers.RandomTranslation((-0.1, 0.2), 0.1, name="shift"),
            K.layers.RandomContrast(0.3, name="contrast"),
        ],
        name="data_augmentation",
    )
    inputs = K.Input((12, 12, 3), name="image")
    x = augment(inputs)
    x = K.layers.Rescaling(1 / 127.5, offset=-1, name="scale")(x)
    x = K.layers.Conv2D(4, 3, name="conv")(x)
    x = K.layers.GlobalAveragePooling2D(name="gap")(x)
    return K.Model(inputs, K.layers.Dense(2, name="head")(x), name="augmented")


def test_tutorial_augmentation_layers_come_over_both_ways(keras, ck, tmp_path: Path) -> None:
    source = _augmented(keras)
    _randomise(source)
    source.save(tmp_path / "k.keras")
    x = np.random.default_rng(4).uniform(0, 255, (3, 12, 12, 3)).astype("float32")
    want = source.predict(x, verbose=0)  # the augmentation is the identity at inference
    loaded = ck.models.load_model(tmp_path / "k.keras")
    assert _json(loaded.get_config()) == _json(source.get_config())
    _close(loaded.predict(x, verbose=0), want, tol=1e-6)
    ours = _augmented(ck)
    ours.set_weights(source.get_weights())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Keras file, not compat's torch fallback
        ours.save(tmp_path / "c.keras")
    assert _archived_config(tmp_path / "c.keras") == _archived_config(tmp_path / "k.keras")
    back = keras.models.load_model(tmp_path / "c.keras")
    _close(back.predict(x, verbose=0), want, tol=1e-6)
    assert [type(la).__name__ for la in back.get_layer("data_augmentation").layers] == [
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomContrast",
    ]
