"""Red-team of session 6's compat changes, each against real Keras 3.15.1: Keras's
CustomScaleLayer read from a Keras file broadcasts as Keras does (its inputs are in Keras's
layout, not compat's NCHW), and the channels-last InputMap equals the contiguous path on
inputs its tests did not try."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest


def _scale_model(keras, first: tuple, second: tuple, batch_size: int | None, scale: float):
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    a = keras.Input(first, batch_size=batch_size)
    b = keras.Input(second, batch_size=batch_size)
    return keras.Model([a, b], CustomScaleLayer(scale, name="cs")([a, b]))


@pytest.mark.parametrize(
    ("first", "second", "batch"),
    [
        # an image plus a per-channel vector (Keras broadcasts over the trailing axis: the
        # channels); with W == C compat's NCHW layout broadcast it over W instead, silently
        ((4, 4, 4), (4,), 1),
        ((4, 4, 3), (3,), 1),  # W != C: compat raised a shape error
        ((3, 3, 1), (3, 3, 8), None),  # the smaller input first: Keras's output is 8 wide
    ],
    ids=["rank4-plus-vector-square", "rank4-plus-vector", "smaller-first"],
)
def test_custom_scale_layer_broadcasts_as_keras(keras, ck, tmp_path, first, second, batch):
    rng = np.random.default_rng(0)
    n = batch or 2
    xs = [rng.random((n, *first)).astype("float32"), rng.random((n, *second)).astype("float32")]
    theirs = _scale_model(keras, first, second, batch, 0.5)
    path = tmp_path / "cs.keras"
    theirs.save(path)
    want = theirs.predict(xs, verbose=0)
    ours = ck.models.load_model(path)
    assert ours.output_shape[1:] == theirs.output_shape[1:]
    np.testing.assert_allclose(ours.predict(xs, verbose=0), want, rtol=1e-6, atol=1e-6)


def test_custom_scale_layer_output_feeds_a_dense_as_in_keras(keras, ck, tmp_path) -> None:
    """The output's shape is the broadcast one: a Dense after it is built 8 wide, as the
    weights file says (compat built it 1 wide from the first input and refused the file)."""
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    a, b = keras.Input((3, 3, 1)), keras.Input((3, 3, 8))
    out = keras.layers.Dense(2, name="d")(CustomScaleLayer(2.0, name="cs")([a, b]))
    theirs = keras.Model([a, b], out)
    theirs.save(tmp_path / "cs_dense.keras")
    rng = np.random.default_rng(1)
    xs = [rng.random((2, 3, 3, 1)).astype("float32"), rng.random((2, 3, 3, 8)).astype("float32")]
    ours = ck.models.load_model(tmp_path / "cs_dense.keras")
    np.testing.assert_allclose(
        ours.predict(xs, verbose=0), theirs.predict(xs, verbose=0), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("convention", ["caffe", "tf", "torch"])
def test_input_map_channels_last_branch_equals_the_contiguous_path(convention) -> None:
    """Batch 1, 1x1 images (where every layout is contiguous), float16/float64, a strided
    NHWC view (not channels-last contiguous) and gradients: the channels-last branch gives
    exactly what the NCHW-contiguous path gives."""
    import torch

    from compat.applications._common import InputMap

    mapping = InputMap(convention, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for shape in [(1, 7, 5, 3), (3, 1, 1, 3), (1, 1, 1, 3)]:
        for dtype in (torch.float16, torch.float32, torch.float64):
            view = (torch.rand(*shape) * 255).to(dtype).permute(0, 3, 1, 2)
            out, ref = mapping(view), mapping(view.contiguous())
            assert out.dtype == ref.dtype and torch.equal(out, ref)
    strided = (torch.rand(2, 6, 6, 3) * 255)[:, ::2, ::2, :].permute(0, 3, 1, 2)
    assert torch.equal(mapping(strided), mapping(strided.contiguous()))
    nhwc = torch.rand(2, 4, 5, 3) * 255
    cl = nhwc.permute(0, 3, 1, 2).requires_grad_()
    dense = nhwc.permute(0, 3, 1, 2).contiguous().requires_grad_()
    (mapping(cl) ** 2).sum().backward()
    (mapping(dense) ** 2).sum().backward()
    assert torch.equal(cl.grad, dense.grad)


@pytest.mark.parametrize("constant", [True, False])
def test_a_boolean_operand_of_an_operation_node_reads_as_keras_reads_it(
    keras, ck, tmp_path, constant
) -> None:
    """Keras writes ``x + True`` as an Add node whose second argument is ``true`` and reads
    it back as the number 1; compat refused the file, calling ``True`` a tensor reference."""
    x = np.array([[1.0, 2.0, 3.0]], "float32")
    inp = keras.Input((3,))
    theirs = keras.Model(inp, keras.ops.multiply(keras.ops.add(inp, constant), 2.0))
    theirs.save(tmp_path / "bool.keras")
    want = theirs.predict(x, verbose=0)
    np.testing.assert_array_equal(want, (x + constant) * 2.0)
    ours = ck.models.load_model(tmp_path / "bool.keras")
    np.testing.assert_array_equal(ours.predict(x, verbose=0), want)
    ours.save(tmp_path / "back.keras")  # and written back as Keras reads it
    again = keras.models.load_model(tmp_path / "back.keras")
    np.testing.assert_array_equal(again.predict(x, verbose=0), want)


def _fixed_batch(mod, path: Path) -> dict:
    """What a model built on ``Input(batch_size=2)`` says of its shapes, before and after a
    save and load, and what it computes for a batch of 3 (Keras does not refuse it)."""
    inp = mod.Input((4, 4, 3), batch_size=2)
    conv = mod.layers.Conv2D(5, 3, name="conv")(inp)
    out = mod.layers.GlobalAveragePooling2D(name="pool")(conv)
    free = mod.Input((5,))  # merged with an input of unknown batch size
    summed = mod.layers.Add(name="add")([free, out])
    model = mod.Model([inp, free], [out, summed, mod.layers.Concatenate()([free, out])])
    lines: list[str] = []
    model.summary(print_fn=lambda s, **kw: lines.append(s))
    # every shape the summary prints, in order (Keras wraps long names; shapes stay whole)
    rows = re.findall(r"\((?:\d+|None)(?:, (?:\d+|None))*,?\)", "\n".join(lines))
    model.save(path)
    loaded = mod.models.load_model(path)
    seq = mod.Sequential([mod.Input((4,), batch_size=2), mod.layers.Dense(3)])
    rng = np.random.default_rng(0)
    xs = [rng.random((3, 4, 4, 3)).astype("float32"), rng.random((3, 5)).astype("float32")]
    return {
        "tensors": (tuple(inp.shape), tuple(conv.shape), tuple(out.shape), tuple(summed.shape)),
        "model": (model.input_shape, model.output_shape),
        "summary": rows,
        "loaded": (loaded.input_shape, loaded.output_shape),
        "layer_call": tuple(mod.layers.Dense(2)(inp).shape),
        "compute_output_shape": mod.layers.Dense(2).compute_output_shape((2, 7)),
        "sequential": (seq.input_shape, seq.output_shape),
        "batch_of_3": [tuple(np.shape(o)) for o in model.predict(xs, verbose=0)],
    }


def test_a_fixed_batch_size_shows_in_symbolic_shapes_as_in_keras(keras, ck, tmp_path) -> None:
    """``Input(batch_size=2)``: compat's KerasTensors, model and summary shapes said None
    where Keras says 2 (the file kept the 2); merges with an input of unknown batch size
    broadcast it (Add) or take the first input's (Concatenate), as Keras does."""
    theirs = _fixed_batch(keras, tmp_path / "k.keras")
    assert theirs["tensors"] == ((2, 4, 4, 3), (2, 2, 2, 5), (2, 5), (2, 5))
    assert theirs["model"] == ([(2, 4, 4, 3), (None, 5)], [(2, 5), (2, 5), (None, 10)])
    assert theirs["batch_of_3"] == [(3, 5), (3, 5), (3, 10)]
    assert "(2, 2, 2, 5)" in theirs["summary"]
    ours = _fixed_batch(ck, tmp_path / "c.keras")
    assert ours == theirs
    # compat's file, read by Keras, keeps it too
    back = keras.models.load_model(tmp_path / "c.keras")
    assert (back.input_shape, back.output_shape) == theirs["model"]
