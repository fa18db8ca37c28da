"""``ftlight export``: TorchScript (and ONNX when ``onnx`` is installed) with preprocessing.

The exported graph maps normalised images ``(B, 3, H, W)`` (float32, the checkpoint's
preprocessing already applied) to class probabilities ``(B, C)``. ``model.json`` alongside
holds the class names, the preprocessing (input size, interpolation, crop, mean/std), the
task and the backbone. Each export is checked against the checkpoint on the same input.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftlight.finetuner import FineTuner

FORMATS = ("torchscript", "onnx")


class ProbabilityModel(nn.Module):
    """A :class:`FineTuner` as images -> class probabilities (binary gives two columns)."""

    def __init__(self, model: FineTuner) -> None:
        super().__init__()
        self.features = model.backbone.model.eval()  # not the LightningModule: it won't trace
        self.head = model.head.eval()
        self.task = str(model.hparams.task)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(images))
        if self.task == "multiclass":
            return logits.softmax(-1)
        probs = logits.sigmoid()
        if self.task == "binary":
            return torch.cat([1 - probs, probs], dim=1)
        return probs


def metadata(model: FineTuner) -> dict[str, Any]:
    """Class names, preprocessing and provenance to store next to an export."""
    n = model.num_outputs if model.hparams.task != "binary" else 2
    return {
        "format_version": 1,
        "backbone": model.backbone.name,
        "task": model.hparams.task,
        "class_names": list(model.class_names or [str(i) for i in range(n)]),
        "preprocessing": model.data_config.to_dict(),
        "weights": model.weights_info.to_dict(),
        "input": "float32 (batch, 3, H, W), RGB in [0, 1], resized/cropped, then (x - mean) / std",
        "output": "class probabilities (batch, num_classes)",
    }


def export_torchscript(wrapper: nn.Module, example: torch.Tensor, path: Path) -> Path:
    traced = torch.jit.trace(wrapper, example, check_trace=False)
    traced.save(str(path))
    return path


def export_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """ONNX with a dynamic batch axis (TorchScript-based exporter; no onnxscript needed)."""
    torch.onnx.export(
        wrapper,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["probabilities"],
        dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def run_torchscript(path: str | os.PathLike, images: torch.Tensor) -> torch.Tensor:
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(images)


def run_onnx(path: str | os.PathLike, images: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["probabilities"], {"images": images.numpy()})
    return torch.from_numpy(out)


def export(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    formats: Sequence[str] = FORMATS,
    batch_size: int = 2,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export a checkpoint; return the files written and each format's max abs deviation.

    ONNX is skipped (and reported) when ``onnx`` is not installed; the check against the
    checkpoint uses onnxruntime when it is. A deviation above ``atol`` raises.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"Unknown export format(s) {unknown}. Expected some of {FORMATS}.")
    model = FineTuner.from_checkpoint(checkpoint).float()
    wrapper = ProbabilityModel(model).eval()
    size = model.data_config.input_size
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(batch_size, *size, generator=generator)
    check = torch.randn(batch_size + 1, *size, generator=generator)  # another batch size
    with torch.no_grad():
        expected = wrapper(check)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"files": {}, "max_abs_diff": {}, "skipped": {}}
    for fmt in formats:
        if fmt == "torchscript":
            path = export_torchscript(wrapper, example, out_dir / "model.ts")
            got = run_torchscript(path, check)
        else:
            if importlib.util.find_spec("onnx") is None:
                result["skipped"]["onnx"] = "the `onnx` package is not installed"
                continue
            path = export_onnx(wrapper, example, out_dir / "model.onnx")
            if importlib.util.find_spec("onnxruntime") is None:
                result["files"][fmt] = str(path)
                result["skipped"]["onnx check"] = "onnxruntime is not installed"
                continue
            got = run_onnx(path, check)
        diff = float((got - expected).abs().max())
        if diff > atol:
            raise RuntimeError(
                f"{fmt} export deviates from the checkpoint by {diff:.2e} (> atol={atol})."
            )
        result["files"][fmt] = str(path)
        result["max_abs_diff"][fmt] = diff
    meta = metadata(model)
    meta["files"] = {k: Path(v).name for k, v in result["files"].items()}
    meta_path = out_dir / "model.json"
    meta_path.write_text(json.dumps(meta, indent=2))
    result["files"]["metadata"] = str(meta_path)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``ftlight export CHECKPOINT [-o DIR] [--format torchscript onnx]``."""
    parser = argparse.ArgumentParser(prog="ftlight export", description=__doc__)
    parser.add_argument("checkpoint", help="a .ckpt written by `ftlight fit`")
    parser.add_argument("-o", "--output", default="export", help="output folder")
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args(list(argv) if argv is not None else None)
    result = export(args.checkpoint, args.output, formats=args.format, atol=args.atol)
    for fmt, path in result["files"].items():
        diff = result["max_abs_diff"].get(fmt)
        note = f" (max |diff| vs checkpoint {diff:.1e})" if diff is not None else ""
        print(f"ftlight export: {fmt}: {path}{note}")
    for what, why in result["skipped"].items():
        print(f"ftlight export: skipped {what}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
