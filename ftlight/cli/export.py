"""``ftlight export``: a ``torch.export`` program (``model.pt2``) and ONNX, with preprocessing.

The exported graph maps normalised images ``(B, 3, H, W)`` (float32, the checkpoint's
preprocessing already applied, any batch size) to class probabilities ``(B, C)``.
``model.json`` alongside holds the class names, the preprocessing (input size, interpolation,
crop, mean/std), the task and the backbone. Each export is checked against the checkpoint on
another batch size before it replaces a previous file (writes are atomic). ONNX needs the
``[export]`` extra (``onnx``, ``onnxscript``, ``onnxruntime``: pip install 'ftlight[export]').
``--format torchscript`` (``model.ts``, for LibTorch C++) uses ``torch.jit.trace``, which torch
deprecates: only when asked.
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

from ftlight.cli.errors import debug_enabled, print_error
from ftlight.files import atomic_path, atomic_write
from ftlight.finetuner import FineTuner

FORMATS = ("pt2", "onnx", "torchscript")
DEFAULT_FORMATS = ("pt2", "onnx")
FILE_NAMES = {"pt2": "model.pt2", "onnx": "model.onnx", "torchscript": "model.ts"}


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


class ExportCheckError(RuntimeError):
    """An exported program's outputs deviate from the checkpoint's by more than ``atol``."""


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


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1)


def export_pt2(wrapper: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """A ``torch.export`` program with a dynamic batch axis (``torch.export.load(path)``)."""
    program = torch.export.export(wrapper, (example,), dynamic_shapes=({0: _batch_dim()},))
    torch.export.save(program, str(path))
    return path


def export_torchscript(wrapper: nn.Module, example: torch.Tensor, path: Path) -> Path:
    traced = torch.jit.trace(wrapper, example, check_trace=False)
    traced.save(str(path))
    return path


def export_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """ONNX with a dynamic batch axis (torch's ``torch.export``-based exporter), one file."""
    program = torch.onnx.export(
        wrapper,
        (example,),
        input_names=["images"],
        output_names=["probabilities"],
        dynamic_shapes=({0: _batch_dim()},),
        dynamo=True,
        verbose=False,
    )
    program.save(str(path), external_data=False)
    return path


def run_pt2(path: str | os.PathLike, images: torch.Tensor) -> torch.Tensor:
    module = torch.export.load(str(path)).module()
    with torch.no_grad():
        return module(images)


def run_torchscript(path: str | os.PathLike, images: torch.Tensor) -> torch.Tensor:
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(images)


def run_onnx(path: str | os.PathLike, images: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["probabilities"], {"images": images.numpy()})
    return torch.from_numpy(out)


WRITERS = {"pt2": export_pt2, "onnx": export_onnx, "torchscript": export_torchscript}
RUNNERS = {"pt2": run_pt2, "onnx": run_onnx, "torchscript": run_torchscript}


def _missing_for(fmt: str) -> str | None:
    """What a format needs that is not installed (``None``: nothing)."""
    if fmt != "onnx":
        return None
    missing = [
        m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None
    ]
    if missing:
        return f"{', '.join(missing)} not installed (pip install 'ftlight[export]')"
    return None


def export(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    formats: Sequence[str] = DEFAULT_FORMATS,
    batch_size: int = 2,
    atol: float = 1e-4,
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """Export a checkpoint; return the files written and each format's max abs deviation.

    Each file is written to a temporary name, run on another batch size and compared with the
    checkpoint, and only then moved over a previous export: a failure (or a deviation above
    ``atol``, which raises) leaves the previous file in place. ONNX is skipped (and reported)
    when the ``[export]`` extra is not installed. Once all is written, the model files of an
    earlier export into the folder that this one did not write are removed (``"removed"``), so
    the folder holds one checkpoint's export, as its ``model.json`` says.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"Unknown export format(s) {unknown}. Expected some of {FORMATS}.")
    model = FineTuner.from_checkpoint(checkpoint, trust_pickle=trust_pickle).float()
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
        missing = _missing_for(fmt)
        if missing:
            result["skipped"][fmt] = missing
            continue
        path = out_dir / FILE_NAMES[fmt]
        with atomic_path(path) as tmp:
            WRITERS[fmt](wrapper, example, tmp)
            diff = float((RUNNERS[fmt](tmp, check) - expected).abs().max())
            if diff > atol:
                raise ExportCheckError(
                    f"{fmt} export deviates from the checkpoint by {diff:.2e} (> atol={atol}); "
                    f"{path} was not written."
                )
        result["files"][fmt] = str(path)
        result["max_abs_diff"][fmt] = diff
    meta = metadata(model)
    meta["files"] = {k: Path(v).name for k, v in result["files"].items()}
    stale = _previous_export_files(out_dir) - set(meta["files"].values())
    meta_path = atomic_write(out_dir / "model.json", json.dumps(meta, indent=2))
    result["files"]["metadata"] = str(meta_path)
    result["removed"] = []
    for name in sorted(stale):  # an earlier export's model, not of this checkpoint
        (out_dir / name).unlink(missing_ok=True)
        result["removed"].append(str(out_dir / name))
    return result


def _previous_export_files(out_dir: Path) -> set[str]:
    """The model files an earlier ``ftlight export`` into ``out_dir`` listed in its
    ``model.json`` (only names ftlight writes, so nothing else in the folder is touched)."""
    try:
        files = json.loads((out_dir / "model.json").read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return set()
    if not isinstance(files, dict):
        return set()
    return {name for name in files.values() if name in FILE_NAMES.values()}


def main(argv: Sequence[str] | None = None) -> int:
    """``ftlight export CHECKPOINT [-o DIR] [--format torchscript onnx]``."""
    parser = argparse.ArgumentParser(prog="ftlight export", description=__doc__)
    parser.add_argument("checkpoint", help="a .ckpt written by `ftlight fit`")
    parser.add_argument("-o", "--output", default="export", help="output folder")
    parser.add_argument(
        "--format",
        nargs="+",
        choices=FORMATS,
        default=list(DEFAULT_FORMATS),
        help="pt2 (torch.export), onnx (needs the [export] extra), torchscript (deprecated by "
        "torch; for LibTorch C++)",
    )
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="unpickle a checkpoint holding Python objects besides tensors (trusted files only)",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        result = export(
            args.checkpoint,
            args.output,
            formats=args.format,
            atol=args.atol,
            trust_pickle=args.trust_pickle,
        )
    except (OSError, ValueError, ExportCheckError) as err:  # known: one line (or FTLIGHT_DEBUG)
        if debug_enabled():
            raise
        return print_error(err)
    for fmt, path in result["files"].items():
        diff = result["max_abs_diff"].get(fmt)
        note = f" (max |diff| vs checkpoint {diff:.1e})" if diff is not None else ""
        print(f"ftlight export: {fmt}: {path}{note}")
    for what, why in result["skipped"].items():
        print(f"ftlight export: skipped {what}: {why}")
    for path in result["removed"]:
        print(f"ftlight export: removed {path} (an earlier export's, not of this checkpoint)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
