"""Red team, session 7b: the augmentation layers' factors, value_range and Keras files, with
argument forms the tutorials do not use, against real Keras (torch backend)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_keras_files import edit_keras_archive

from ftlight.files import UnreadableFileError


def _layer_entry(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("config.json"))["config"]["layers"][1]


@pytest.mark.parametrize(
    ("cls", "args", "kwargs"),
    [
        ("RandomRotation", ((0.3, 0.1),), {}),  # Keras sorts the pair
        ("RandomRotation", ([0.2, -0.4],), {"seed": 2}),
        ("RandomRotation", (1,), {}),
        ("RandomZoom", ((0.3, 0.1), [0.2, -0.1]), {}),
        ("RandomContrast", (0.5,), {"value_range": [-1, 1], "seed": 2}),  # a list stays one
    ],
)
def test_config_and_archive_equal_keras(keras, ck, tmp_path: Path, cls, args, kwargs) -> None:
    """compat kept RandomRotation((0.3, 0.1)) unsorted and turned value_range lists into
    tuples: get_config and the .keras archive differed from Keras's."""
    theirs = getattr(keras.layers, cls)(*args, name="aug", **kwargs)
    ours = getattr(ck.layers, cls)(*args, name="aug", **kwargs)
    assert ours.get_config() == theirs.get_config()
    keras.Sequential([keras.Input((8, 8, 3)), theirs]).save(tmp_path / "k.keras")
    model = ck.Sequential([ck.Input((8, 8, 3)), ours])
    model.save(tmp_path / "c.keras")
    assert _layer_entry(tmp_path / "c.keras") == _layer_entry(tmp_path / "k.keras")
    x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    back = keras.models.load_model(tmp_path / "c.keras")
    np.testing.assert_array_equal(back.predict(x, verbose=0), x)  # identity at inference
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)


@pytest.mark.parametrize(
    ("cls", "args"),
    [
        ("RandomRotation", (1.5,)),
        ("RandomRotation", ((2, 3),)),
        ("RandomZoom", (-1.5,)),
        ("RandomZoom", (1.5,)),
        ("RandomZoom", ((-1.0, 0.2),)),  # Keras's range is (-1, 1]
        ("RandomZoom", (0.1, (0.1, 1.2))),
        ("RandomTranslation", ("a", 0.1)),
        ("RandomTranslation", (0.1, None)),
    ],
)
def test_out_of_range_or_wrong_factors_raise_as_keras(keras, ck, cls, args) -> None:
    """compat built RandomZoom(-1.5) / RandomRotation(1.5) that Keras refuses, and
    RandomTranslation('a', ...) raised a bare TypeError ('<=' not supported ...)."""
    with pytest.raises(ValueError) as theirs:
        getattr(keras.layers, cls)(*args)
    with pytest.raises(ValueError) as ours:
        getattr(ck.layers, cls)(*args)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize(
    ("cls", "args", "key", "value"),
    [
        ("RandomRotation", (0.1,), "factor", 5),
        ("RandomZoom", (0.1,), "height_factor", -2),
        ("RandomZoom", (0.1,), "width_factor", [0.1, 3]),
        ("RandomTranslation", (0.1, 0.1), "width_factor", "x"),
    ],
)
def test_crafted_out_of_range_factor_is_refused(
    keras, ck, tmp_path: Path, cls, args, key, value
) -> None:
    """A crafted file Keras refuses to load: compat loaded RandomRotation(factor=5) and
    RandomZoom(height_factor=-2) silently."""
    keras.Sequential([keras.Input((8, 8, 3)), getattr(keras.layers, cls)(*args)]).save(
        tmp_path / "k.keras"
    )

    def set_option(config: dict) -> None:
        config["config"]["layers"][1]["config"][key] = value

    edit_keras_archive(tmp_path / "k.keras", tmp_path / "bad.keras", set_option)
    with pytest.raises(Exception):  # noqa: B017 - Keras wraps its ValueError in a TypeError
        keras.models.load_model(tmp_path / "bad.keras")
    with pytest.raises(UnreadableFileError, match=f"{cls}.*should be a number"):
        ck.models.load_model(tmp_path / "bad.keras")


def test_contrast_value_range_kept_as_given_loads_like_keras(keras, ck, tmp_path: Path) -> None:
    """Keras keeps value_range as given (a file with value_range=5 loads, and the layer is the
    identity at inference); compat failed with "'int' object is not iterable"."""
    keras.Sequential([keras.Input((8, 8, 3)), keras.layers.RandomContrast(0.1, 5)]).save(
        tmp_path / "k.keras"
    )
    x = np.random.default_rng(1).uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    loaded = ck.models.load_model(tmp_path / "k.keras")
    assert (
        loaded.layers[0].get_config()
        == keras.models.load_model(tmp_path / "k.keras").layers[0].get_config()
    )
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), x)
