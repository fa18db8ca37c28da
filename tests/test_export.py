"""Export and predict in process: a binary model, TorchScript reload, CSV, format errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ftlight import FineTuner, ImageDataModule
from ftlight.cli.export import export
from ftlight.cli.predict import class_name_mismatch, predict_probabilities, write_predictions
from ftlight.data import load_rgb
from ftlight.data.transforms import eval_transform
from tests.conftest import quiet_trainer


@pytest.fixture(scope="module")
def binary_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    y = np.repeat([0, 1], 8)
    dm = ImageDataModule.from_arrays(x, y, class_names=["no", "yes"], batch_size=8, val_split=0)
    model = FineTuner("resnet18", 1, None, task="binary", image_size=32, class_names=["no", "yes"])
    trainer = quiet_trainer(tmp, max_steps=1)  # no validation data: no sanity check either
    trainer.fit(model, dm)
    path = tmp / "binary.ckpt"
    trainer.save_checkpoint(path)
    images = []
    for i in range(3):
        p = tmp / f"img{i}.png"
        Image.fromarray(x[i * 5]).save(p)
        images.append(str(p))
    return tmp, path, images


def test_binary_export_gives_two_columns_matching_predict(binary_checkpoint) -> None:
    tmp, path, images = binary_checkpoint
    result = export(path, tmp / "out", formats=["torchscript"])
    assert result["max_abs_diff"]["torchscript"] <= 1e-5
    meta = json.loads((tmp / "out" / "model.json").read_text())
    assert meta["class_names"] == ["no", "yes"] and meta["task"] == "binary"
    model = FineTuner.from_checkpoint(path)
    probs = predict_probabilities(model, images)
    assert probs.shape == (3, 2)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    batch = torch.stack([eval_transform(model.data_config)(load_rgb(p)) for p in images])
    scripted = torch.jit.load(str(tmp / "out" / "model.ts"))
    torch.testing.assert_close(scripted(batch), probs, atol=1e-5, rtol=1e-4)

    csv_path = write_predictions(tmp / "p.csv", images, probs, ["no", "yes"], top_k=5)
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and "pred_2" in rows[0] and "pred_3" not in rows[0]


def test_default_export_is_a_torch_export_program_without_jit_trace(binary_checkpoint) -> None:
    """torch.export (not the deprecated torch.jit.trace) by default; any batch size runs."""
    import warnings

    from ftlight.cli.export import run_pt2

    tmp, path, images = binary_checkpoint
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = export(path, tmp / "pt2", formats=["pt2"])
    assert not [w for w in caught if "torch.jit" in str(w.message)]
    assert result["max_abs_diff"]["pt2"] <= 1e-5
    model = FineTuner.from_checkpoint(path)
    batch = torch.stack([eval_transform(model.data_config)(load_rgb(p)) for p in images])
    torch.testing.assert_close(
        run_pt2(tmp / "pt2" / "model.pt2", batch),
        predict_probabilities(model, images),
        atol=1e-5,
        rtol=1e-4,
    )
    assert json.loads((tmp / "pt2" / "model.json").read_text())["files"] == {"pt2": "model.pt2"}


def test_onnx_export_uses_the_dynamo_exporter(binary_checkpoint) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from ftlight.cli.export import run_onnx

    tmp, path, images = binary_checkpoint
    result = export(path, tmp / "onnx", formats=["onnx"])
    assert result["max_abs_diff"]["onnx"] <= 1e-4
    assert sorted(p.name for p in (tmp / "onnx").iterdir()) == ["model.json", "model.onnx"]
    model = FineTuner.from_checkpoint(path)
    batch = torch.stack([eval_transform(model.data_config)(load_rgb(p)) for p in images])
    got = run_onnx(tmp / "onnx" / "model.onnx", batch)
    torch.testing.assert_close(got, predict_probabilities(model, images), atol=1e-4, rtol=1e-4)


def test_export_rejects_unknown_format_and_mismatch_messages(binary_checkpoint) -> None:
    tmp, path, _ = binary_checkpoint
    with pytest.raises(ValueError, match="tflite"):
        export(path, tmp / "bad", formats=["tflite"])
    assert class_name_mismatch(["a", "b"], ["a", "b"]) is None
    assert class_name_mismatch(["a", "b"], []) is None
    msg = class_name_mismatch(["a", "b"], ["a", "c"])
    assert "['c']" in msg and "['b']" in msg
    assert "order" in class_name_mismatch(["a", "b"], ["b", "a"])


def test_export_into_a_used_folder_leaves_one_checkpoints_files(binary_checkpoint) -> None:
    """A second export with other formats removes the first export's model files (they were
    of another checkpoint, and model.json would not list them), and nothing else."""
    tmp, path, _ = binary_checkpoint
    out = tmp / "reused"
    export(path, out, formats=["pt2"])
    (out / "notes.txt").write_text("mine")
    result = export(path, out, formats=["torchscript"])
    assert result["removed"] == [str(out / "model.pt2")]
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.ts", "notes.txt"]
    assert json.loads((out / "model.json").read_text())["files"] == {"torchscript": "model.ts"}
