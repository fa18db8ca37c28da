"""Red-team findings on Keras's own files in compat: real Keras 3 (torch backend) is the oracle.

Each test states the right behaviour; it was filed ``xfail(strict=True)`` while the library
got it wrong and runs as a normal test once fixed (all fixed now, with the tests the fixes added).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from test_keras_files import edit_keras_archive


def _save_legacy_h5(model, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras: "HDF5 is a legacy format"
        model.save(path)


def _randomise(model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in weights])


def _close(a, b, tol: float = 1e-4) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    scale = float(np.abs(b).max())
    assert scale > 0, "comparing against all zeros proves nothing"
    return a.shape == b.shape and float(np.abs(a - b).max()) <= tol * scale


def _inner_functional(K):
    i = K.Input((8, 8, 3))
    return K.Model(i, K.layers.Conv2D(3, 3, padding="same", name="c")(i), name="inner")


X = np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 3)).astype("float32")


def test_nested_functional_called_twice_keeps_each_output(keras, ck, tmp_path: Path) -> None:
    def build(K):
        inner = _inner_functional(K)
        i = K.Input((8, 8, 3))
        a = inner(i)
        b = inner(a)
        return K.Model(i, [a, K.layers.Flatten(name="fl")(b)])

    k_model = build(keras)
    _randomise(k_model)
    first, second = k_model.predict(X, verbose=0)
    k_model.save(tmp_path / "k.keras")
    got = ck.models.load_model(tmp_path / "k.keras").predict(X, verbose=0)
    assert _close(got[0], first) and _close(got[1], second)


def test_nested_functional_as_the_output_loads(keras, ck, tmp_path: Path) -> None:
    inner = _inner_functional(keras)
    i = keras.Input((8, 8, 3))
    k_model = keras.Model(i, inner(i))
    _randomise(k_model)
    expected = k_model.predict(X, verbose=0)
    k_model.save(tmp_path / "k.keras")
    loaded = ck.models.load_model(tmp_path / "k.keras")
    assert _close(loaded.predict(X, verbose=0), expected)


def test_nested_functional_output_ref_is_keras(keras, ck) -> None:
    def build(K):
        inner = _inner_functional(K)
        i = K.Input((8, 8, 3))
        return K.Model(i, inner(i))

    assert build(ck).get_config()["output_layers"] == build(keras).get_config()["output_layers"]


def test_legacy_h5_load_weights_matches_layers_by_order(keras, ck, tmp_path: Path) -> None:
    x = np.random.default_rng(1).uniform(-1, 1, (2, 5)).astype("float32")

    def build(K):
        return K.Sequential([K.Input((5,)), K.layers.Dense(4), K.layers.Dense(2)])

    k_model = build(keras)
    _randomise(k_model)
    expected = k_model.predict(x, verbose=0)
    _save_legacy_h5(k_model, tmp_path / "k.h5")
    build(keras)  # a first model in the session shifts the automatic names
    again = build(keras)
    again.load_weights(tmp_path / "k.h5")
    assert _close(again.predict(x, verbose=0), expected)  # Keras: by order

    build(ck)
    c_model = build(ck)
    c_model.load_weights(tmp_path / "k.h5")
    assert _close(c_model.predict(x, verbose=0), expected)


def test_legacy_h5_load_weights_permuted_names_follow_keras(keras, ck, tmp_path: Path) -> None:
    x = np.random.default_rng(1).uniform(-1, 1, (2, 4)).astype("float32")

    def build(K, names):
        return K.Sequential([K.Input((4,)), *[K.layers.Dense(4, name=n) for n in names]])

    k_model = build(keras, ["a", "b"])
    _randomise(k_model)
    _save_legacy_h5(k_model, tmp_path / "k.h5")
    k_swapped = build(keras, ["b", "a"])
    k_swapped.load_weights(tmp_path / "k.h5")
    c_swapped = build(ck, ["b", "a"])
    c_swapped.load_weights(tmp_path / "k.h5")
    assert _close(c_swapped.predict(x, verbose=0), k_swapped.predict(x, verbose=0))


def test_two_input_model_predicts_like_keras(keras, ck, tmp_path: Path) -> None:
    v = np.random.default_rng(2).uniform(-1, 1, (2, 5)).astype("float32")

    def build(K):
        img, vec = K.Input((8, 8, 3), name="img"), K.Input((5,), name="vec")
        f = K.layers.GlobalAveragePooling2D()(K.layers.Conv2D(4, 3)(img))
        h = K.layers.Concatenate()([f, K.layers.Dense(4)(vec)])
        return K.Model([img, vec], K.layers.Dense(2, name="out")(h))

    k_model = build(keras)
    _randomise(k_model)
    expected = k_model.predict([X, v], verbose=0)
    k_model.save(tmp_path / "k.keras")
    loaded = ck.models.load_model(tmp_path / "k.keras")
    assert _close(loaded.predict([X, v], verbose=0), expected)


def test_two_output_model_predicts_like_keras(keras, ck, tmp_path: Path) -> None:
    def build(K):
        i = K.Input((8, 8, 3))
        h = K.layers.GlobalAveragePooling2D()(K.layers.Conv2D(4, 3)(i))
        return K.Model(i, [K.layers.Dense(2, name="a")(h), K.layers.Dense(1, name="b")(h)])

    k_model = build(keras)
    _randomise(k_model)
    expected = k_model.predict(X, verbose=0)
    k_model.save(tmp_path / "k.keras")
    got = ck.models.load_model(tmp_path / "k.keras").predict(X, verbose=0)
    assert isinstance(got, list) and len(got) == 2
    assert all(_close(g, e) for g, e in zip(got, expected, strict=True))


def test_per_channel_rescaling_file_loads(keras, ck, tmp_path: Path) -> None:
    k_model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Rescaling([1.0, 2.0, 3.0], offset=[0.1, 0.2, 0.3])]
    )
    expected = k_model.predict(X, verbose=0)
    k_model.save(tmp_path / "k.keras")
    assert _close(ck.models.load_model(tmp_path / "k.keras").predict(X, verbose=0), expected)


def test_activation_aliases_serialise_as_keras(keras, ck) -> None:
    def build(K):
        return K.Sequential(
            [
                K.Input((3,)),
                K.layers.Dense(2, activation="swish"),
                K.layers.Activation("hard_swish"),
            ]
        )

    def acts(model):
        return [layer["config"].get("activation") for layer in model.get_config()["layers"]]

    assert acts(build(ck)) == acts(build(keras))


def test_layer_get_config_keeps_its_options(keras, ck) -> None:
    for cls, kwargs in (("Activation", {"activation": "relu"}), ("Rescaling", {"scale": 2.0})):
        want = getattr(keras.layers, cls)(**kwargs).get_config()
        got = getattr(ck.layers, cls)(**kwargs).get_config()
        assert set(got) == set(want), (cls, sorted(set(want) - set(got)))


def test_a_config_with_zero_strides_is_a_keras_file_error(keras, ck, tmp_path: Path) -> None:
    from compat.keras_files import KerasFileError

    k_model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name="c")])
    k_model.save(tmp_path / "k.keras")

    def zero_strides(config: dict) -> None:
        config["config"]["layers"][1]["config"]["strides"] = [0, 0]

    edit_keras_archive(tmp_path / "k.keras", tmp_path / "bad.keras", zero_strides)
    with pytest.raises(KerasFileError, match="'c'"):
        ck.models.load_model(tmp_path / "bad.keras")


def test_a_file_compiled_with_a_loss_object_loads_and_evaluates_as_keras(
    keras, ck, tmp_path: Path
) -> None:
    x = np.random.default_rng(1).uniform(-1, 1, (16, 6)).astype("float32")
    y = np.random.default_rng(2).integers(0, 3, 16)
    k_model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    k_model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    expected = k_model.evaluate(x, y, verbose=0)
    k_model.save(tmp_path / "k.keras")
    loaded = ck.models.load_model(tmp_path / "k.keras")
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(expected, rel=1e-5)


def test_fixed_batch_size_is_kept_in_the_config(keras, ck) -> None:
    def build(K):
        return K.Sequential([K.Input((6,), batch_size=4), K.layers.Dense(3)])

    assert (
        build(ck).get_config()["build_input_shape"]
        == build(keras).get_config()["build_input_shape"]
    )


def test_nested_functional_called_twice_goes_to_keras(keras, ck, tmp_path: Path) -> None:
    """compat -> Keras: the same graph written by compat loads in Keras with each output."""
    inner = _inner_functional(ck)
    i = ck.Input((8, 8, 3))
    a = inner(i)
    b = inner(a)
    c_model = ck.Model(i, [a, ck.layers.Flatten(name="fl")(b)])
    _randomise(c_model)
    first = ck.Model(i, a).predict(X, verbose=0)
    second = ck.Model(i, c_model.outputs[1]).predict(X, verbose=0)
    c_model.save(tmp_path / "c.keras")
    got = keras.models.load_model(tmp_path / "c.keras").predict(X, verbose=0)
    assert _close(got[0], first) and _close(got[1], second)
    assert not _close(first.reshape(second.shape), second)  # the calls differ: order checked


def test_legacy_h5_nested_model_keeps_keras_weight_order(keras, ck, tmp_path: Path) -> None:
    """A nested model's legacy group lists trainable then non-trainable variables (Keras's
    ``_legacy_weights``: BatchNormalization's moving stats last), both ways."""

    def build(K):
        inner = K.Sequential(
            [K.Input((8, 8, 3)), K.layers.Conv2D(2, 3), K.layers.BatchNormalization(),
             K.layers.Flatten(), K.layers.Dense(2)],
            name="inner",
        )  # fmt: skip
        i = K.Input((8, 8, 3))
        return K.Model(i, K.layers.Dense(1, name="top")(inner(i)))

    k_model = build(keras)
    _randomise(k_model)
    expected = k_model.predict(X, verbose=0)
    _save_legacy_h5(k_model, tmp_path / "k.h5")
    c_model = build(ck)
    c_model.load_weights(tmp_path / "k.h5")
    assert _close(c_model.predict(X, verbose=0), expected)
    assert _close(ck.models.load_model(tmp_path / "k.h5").predict(X, verbose=0), expected)
    c_model.save(tmp_path / "c.h5")
    again = build(keras)
    again.load_weights(tmp_path / "c.h5")
    assert _close(again.predict(X, verbose=0), expected)


def test_legacy_h5_layer_count_mismatch_is_one_clear_error(keras, ck, tmp_path: Path) -> None:
    k_model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    _save_legacy_h5(k_model, tmp_path / "k.h5")
    c_model = ck.Sequential([ck.Input((4,)), ck.layers.Dense(3)])
    before = [w.copy() for w in c_model.get_weights()]
    from compat.keras_files import KerasFileError

    with pytest.raises(KerasFileError, match=r"2 layers.*has 1 layers with weights.*by order"):
        c_model.load_weights(tmp_path / "k.h5")
    assert all(np.array_equal(a, b) for a, b in zip(before, c_model.get_weights(), strict=True))


def test_two_input_model_refuses_the_wrong_number_of_arrays(ck) -> None:
    a, b = ck.Input((3,)), ck.Input((2,))
    model = ck.Model([a, b], ck.layers.Concatenate()([a, b]))
    x = np.ones((2, 3), "float32")
    with pytest.raises(ValueError, match=r"2 inputs: pass x as a list of 2 arrays.*a list of 1"):
        model.predict([x], verbose=0)
    with pytest.raises(ValueError, match="x sizes: 2, 3"):
        model.predict([x, np.ones((3, 2), "float32")], verbose=0)
    got = model.predict_on_batch([x, np.zeros((2, 2), "float32")])
    assert got.shape == (2, 5)


def test_two_output_model_predict_on_batch_is_a_list(keras, ck) -> None:
    def build(K):
        i = K.Input((3,))
        return K.Model(i, [K.layers.Dense(2, name="a")(i), K.layers.Dense(1, name="b")(i)])

    k_model, c_model = build(keras), build(ck)
    _randomise(k_model)
    c_model.set_weights(k_model.get_weights())
    x = np.random.default_rng(3).uniform(-1, 1, (4, 3)).astype("float32")
    want, got = k_model.predict_on_batch(x), c_model.predict_on_batch(x)
    assert isinstance(got, list) and all(_close(g, w) for g, w in zip(got, want, strict=True))


def test_loss_and_metric_objects_go_both_ways(keras, ck, tmp_path: Path) -> None:
    """Keras's serialised loss/metric objects load as compat's own classes and compat writes
    the same compile_config Keras writes, so evaluate agrees after either trip."""
    x = np.random.default_rng(1).uniform(-1, 1, (16, 6)).astype("float32")
    y = np.random.default_rng(2).integers(0, 3, 16)

    def build(K):
        model = K.Sequential([K.Input((6,)), K.layers.Dense(3, name="d")])
        model.compile(
            optimizer="adam",
            loss=K.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[K.metrics.SparseCategoricalAccuracy(), "accuracy",
                     K.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")],
        )  # fmt: skip
        return model

    k_model, c_model = build(keras), build(ck)
    _randomise(k_model)
    c_model.set_weights(k_model.get_weights())
    expected = k_model.evaluate(x, y, verbose=0, return_dict=True)
    assert c_model.get_config()["layers"][1]["config"]["name"] == "d"
    k_model.save(tmp_path / "k.keras")
    c_model.save(tmp_path / "c.keras")
    from_keras = ck.models.load_model(tmp_path / "k.keras")
    assert from_keras.evaluate(x, y, verbose=0, return_dict=True) == pytest.approx(expected)
    from_compat = keras.models.load_model(tmp_path / "c.keras")
    assert from_compat.evaluate(x, y, verbose=0, return_dict=True) == pytest.approx(expected)
    k_cfg = k_model.get_compile_config()
    c_cfg = from_compat.get_compile_config()
    assert (c_cfg["loss"], c_cfg["metrics"]) == (k_cfg["loss"], k_cfg["metrics"])


def test_a_loss_object_from_another_module_is_refused(keras, ck, tmp_path: Path) -> None:
    from compat.keras_files import KerasFileError

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy())
    model.save(tmp_path / "k.keras")

    def loss_from_os(config: dict) -> None:
        config["compile_config"]["loss"]["module"] = "os"

    edit_keras_archive(tmp_path / "k.keras", tmp_path / "bad.keras", loss_from_os)
    with pytest.raises(KerasFileError, match=r"loss .*'os'.*compile=False"):
        ck.models.load_model(tmp_path / "bad.keras")
    assert ck.models.load_model(tmp_path / "bad.keras", compile=False).compiled is False


def test_sequential_config_with_fixed_batch_and_aliases_is_keras(keras, ck, tmp_path: Path) -> None:
    """The whole config (every layer's build_config, canonical activation names, per-channel
    Rescaling) equals Keras's, and the .keras file loads back into Keras computing the same."""
    import json

    def build(K):
        return K.Sequential(
            [K.Input((6,), batch_size=4), K.layers.Dense(3, activation="swish"),
             K.layers.Activation("hard_swish"), K.layers.Rescaling([1.0, 2.0, 3.0], offset=0.5)]
        )  # fmt: skip

    k_model, c_model = build(keras), build(ck)
    assert json.loads(json.dumps(c_model.get_config())) == json.loads(
        json.dumps(k_model.get_config())
    )
    _randomise(k_model)
    c_model.set_weights(k_model.get_weights())
    x = np.random.default_rng(4).uniform(-1, 1, (4, 6)).astype("float32")
    c_model.save(tmp_path / "c.keras")
    back = keras.models.load_model(tmp_path / "c.keras")
    assert _close(back.predict(x, verbose=0), k_model.predict(x, verbose=0))
    assert _close(c_model.predict(x, verbose=0), k_model.predict(x, verbose=0))
