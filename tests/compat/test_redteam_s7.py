"""Red team, session 7: keras.ops.pad operation nodes and Input(batch_size=...) in symbolic
shapes, against real Keras (torch backend)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_keras_files import edit_keras_archive


def _keras_file_config(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("config.json"))["config"]


def _pad_model(K, pad_width, constant_values=None):
    inputs = K.Input((3,), name="x")
    dense = K.layers.Dense(3, name="d")(inputs)
    return K.Model(inputs, K.ops.pad(dense, pad_width, constant_values=constant_values))


@pytest.mark.parametrize(
    ("pad_width", "constant_values"),
    [([[0, 0], [1, 2]], True), ([[1], [2]], 3), ([[2, 1], [0, 0]], float("nan"))],
)
def test_keras_pad_nodes_load_with_their_constants(
    keras, ck, tmp_path: Path, pad_width, constant_values
) -> None:
    """A bool constant (Keras writes ``True``), (n,) pairs and batch-axis padding: compat
    refused ``constant_values=True`` ('must be a number')."""
    source = _pad_model(keras, pad_width, constant_values)
    source.save(tmp_path / "k.keras")
    x = np.random.default_rng(0).normal(size=(2, 3)).astype("float32")
    loaded = ck.models.load_model(tmp_path / "k.keras")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), source.predict(x, verbose=0), rtol=1e-6, equal_nan=True
    )
    loaded.save(tmp_path / "c.keras")
    assert _keras_file_config(tmp_path / "c.keras") == _keras_file_config(tmp_path / "k.keras")


@pytest.mark.parametrize("pad_width", [1, [1, 2]])
def test_keras_single_pair_pad_nodes_load(keras, ck, tmp_path: Path, pad_width) -> None:
    """Keras writes ``pad(x, 1)``'s pad_width as ``1``: compat refused the file ('expected
    pad_width as (before, after) pairs'). One pair pads every axis, as Keras's docstring, its
    symbolic shape and NumPy say; Keras's torch backend pads the last axis only (Keras's bug:
    this test says so, and fails once Keras pads every axis)."""
    source = _pad_model(keras, pad_width)
    source.save(tmp_path / "k.keras")
    x = np.random.default_rng(0).normal(size=(2, 3)).astype("float32")
    loaded = ck.models.load_model(tmp_path / "k.keras")
    assert loaded.output_shape == source.output_shape
    dense = ck.ops.convert_to_numpy(loaded.get_layer("d")(x)).copy()
    both = [[pad_width] * 2 if isinstance(pad_width, int) else pad_width] * 2
    np.testing.assert_allclose(loaded.predict(x, verbose=0), np.pad(dense, both), rtol=1e-6)
    keras_out = source.predict(x, verbose=0)
    assert keras_out.shape[0] == 2  # Keras's torch backend: the batch axis is not padded
    loaded.save(tmp_path / "c.keras")
    assert _keras_file_config(tmp_path / "c.keras") == _keras_file_config(tmp_path / "k.keras")


def test_eager_pad_keeps_dtypes_and_takes_keras_constants(keras, ck) -> None:
    """compat.ops.pad turned float64 into float32 and refused a NumPy scalar or a bool
    constant, (n,) pairs and NumPy integers in pad_width, all of which keras.ops.pad takes."""
    x = np.arange(6.0).reshape(2, 3)
    cases = [
        (x, [[1, 0], [0, 1]], np.nan),
        (torch.tensor(x), [[1, 0], [0, 1]], 2.0),
        (x.astype("float32"), [[1, 0], [0, 1]], np.float32(2.5)),
        (x.astype(bool), [[1, 0], [0, 1]], True),
        (x.astype("int32"), [[1], [2]], 7),
        (x.astype("float32"), [[np.int64(1), 0], [0, 1]], None),
    ]
    for array, pad_width, value in cases:
        want = keras.ops.convert_to_numpy(keras.ops.pad(array, pad_width, constant_values=value))
        got = np.asarray(ck.ops.pad(array, pad_width, constant_values=value))
        assert got.dtype == want.dtype, (array.dtype, value)
        np.testing.assert_array_equal(got, want)


def test_pad_node_called_with_two_constants_is_refused(keras, ck, tmp_path: Path) -> None:
    """A crafted file calling one Pad node twice with different constants: compat padded
    both with the last one."""
    _pad_model(keras, [[0, 0], [1, 2]], 1.5).save(tmp_path / "k.keras")

    def call_twice(config: dict) -> None:
        node = next(e for e in config["config"]["layers"] if e["class_name"] == "Pad")
        second = json.loads(json.dumps(node["inbound_nodes"][0]))
        second["kwargs"]["constant_values"] = 2.0
        node["inbound_nodes"].append(second)

    edit_keras_archive(tmp_path / "k.keras", tmp_path / "bad.keras", call_twice)
    with pytest.raises(Exception, match=r"constant_values=2.0 after 1.5"):
        ck.models.load_model(tmp_path / "bad.keras")


def test_concatenate_refuses_known_batches_that_differ(keras, ck) -> None:
    """Keras refuses Concatenate on batches 2 and 3 (axis -1); compat gave (2, 6)."""
    for K in (keras, ck):
        with pytest.raises(ValueError, match="matching shapes except for the concatenation"):
            K.layers.Concatenate()([K.Input((3,), batch_size=2), K.Input((3,), batch_size=3)])
        ok = K.layers.Concatenate(axis=0)(
            [K.Input((3,), batch_size=2), K.Input((3,), batch_size=3)]
        )
        assert tuple(ok.shape) == (5, 3)
        mixed = K.layers.Concatenate()([K.Input((3,), batch_size=2), K.Input((3,))])
        assert tuple(mixed.shape) == (2, 6)


def test_summary_trainable_column_is_keras_s(keras, ck) -> None:
    """``summary(show_trainable=True)``: Y / N for layers with weights, '-' for the others."""

    def column(K) -> list[str]:
        m = K.Sequential(
            [
                K.Input((4,)),
                K.layers.Dense(3, name="d1"),
                K.layers.Dropout(0.1, name="drop"),
                K.layers.Dense(2, name="d2"),
            ]
        )
        m.get_layer("d1").trainable = False
        lines: list[str] = []
        m.summary(show_trainable=True, print_fn=lambda s, **kw: lines.append(s))
        rows = "\n".join(lines).splitlines()
        cells = [next(r for r in rows if f"{n} (" in r) for n in ("d1", "drop", "d2")]
        return [r.replace("│", " ").replace("|", " ").split()[-1] for r in cells]

    assert column(ck) == column(keras) == ["N", "-", "Y"]
