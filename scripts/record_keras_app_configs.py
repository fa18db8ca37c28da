"""Record Keras's own application architectures as compat package data.

Run offline with real Keras 3.15.1 (a dev dependency) on the torch backend::

    PYTHONPATH=. KERAS_BACKEND=torch python scripts/record_keras_app_configs.py

For each application it writes ``compat/applications/keras_configs/<Name>.json.gz``
(``<Name>_alpha<a>.json.gz`` for MobileNet/MobileNetV2's other widths): Keras's
serialised model (``weights=None``) with the top at the default size, the headless model for
any size, and what Keras changes with the builder's arguments, found by building again and
diffing: the JSON paths holding ``classes`` and ``classifier_activation``, the pooling layer
for ``pooling="avg"|"max"``, and the ``ZeroPadding2D`` layers whose padding Keras computes from
their input size (``imagenet_utils.correct_pad``). Applications whose configs hold layers
compat cannot build from a config are listed, with what is missing, in ``_unsupported.json``.
``compat.applications._keras_weights`` reads these files.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import torch

import compat  # noqa: F401  (registers Keras's file formats)
from compat import keras_files

OUT = Path(__file__).parents[1] / "compat" / "applications" / "keras_configs"
# Keras's default and minimum input sizes (keras/src/applications/*.py).
SIZES = {
    "VGG16": (224, 32),
    "VGG19": (224, 32),
    "ResNet50": (224, 32),
    "ResNet101": (224, 32),
    "ResNet152": (224, 32),
    "ResNet50V2": (224, 32),
    "ResNet101V2": (224, 32),
    "ResNet152V2": (224, 32),
    "MobileNet": (224, 32),
    "MobileNetV2": (224, 32),
    "InceptionV3": (299, 75),
    "Xception": (299, 71),
    "DenseNet121": (224, 32),
    "DenseNet169": (224, 32),
    "DenseNet201": (224, 32),
    "InceptionResNetV2": (299, 75),
    "MobileNetV3Small": (224, 32),
    "MobileNetV3Large": (224, 32),
    **{f"EfficientNetB{i}": (s, 32)
       for i, s in enumerate((224, 240, 260, 300, 380, 456, 528, 600))},
    **{f"EfficientNetV2{v}": (s, 32) for v, s in
       (("B0", 224), ("B1", 240), ("B2", 260), ("B3", 300), ("S", 384), ("M", 480), ("L", 480))},
    **{f"ConvNeXt{v}": (224, 32) for v in ("Tiny", "Small", "Base", "Large", "XLarge")},
}  # fmt: skip


def _serialize(model: Any) -> dict[str, Any]:
    entry = keras.saving.serialize_keras_object(model)
    entry = json.loads(json.dumps(entry))
    entry.pop("build_config", None)
    entry.pop("compile_config", None)
    for layer in entry["config"]["layers"]:
        layer.pop("build_config", None)  # compat builds from the graph, not from these
    return entry


# The widths Keras has ImageNet weights for besides alpha=1.0, recorded as <Name>_alpha<a>.
ALPHAS = {
    "MobileNet": (0.25, 0.5, 0.75),
    "MobileNetV2": (0.35, 0.5, 0.75, 1.3, 1.4),
    "MobileNetV3Small": (0.75,),
    "MobileNetV3Large": (0.75,),
}
VARIANTS = [f"{app}_alpha{alpha}" for app, alphas in ALPHAS.items() for alpha in alphas]


def _application(name: str) -> tuple[str, dict[str, Any]]:
    """``MobileNetV2_alpha0.35`` -> ``("MobileNetV2", {"alpha": 0.35})``."""
    app, _, alpha = name.partition("_alpha")
    return app, ({"alpha": float(alpha)} if alpha else {})


def _make(name: str, **kwargs: Any) -> dict[str, Any]:
    keras.backend.clear_session()  # Keras's automatic names as in a fresh session
    app, variant = _application(name)
    with torch.device("meta"):
        return _serialize(getattr(keras.applications, app)(weights=None, **variant, **kwargs))


def _diff(a: Any, b: Any, path: tuple = ()) -> list[tuple[tuple, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return [d for k in a for d in _diff(a[k], b[k], (*path, k))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _diff(x, y, (*path, i))
        ]
    return [] if a == b else [(path, a, b)]


def _classes(entry: dict[str, Any]) -> set[str]:
    return {layer["class_name"] for layer in entry["config"]["layers"]}


def _unsupported(entry: dict[str, Any]) -> list[str]:
    missing = sorted(
        _classes(entry) - set(keras_files.LAYERS) - {"InputLayer", *keras_files._MODELS}
    )
    if missing:
        return missing
    try:
        with torch.device("meta"):
            keras_files.build(entry, "recorded config")
    except Exception as err:  # recorded as the reason
        return [_reason(str(err))]
    return []


def _reason(message: str) -> str:
    """compat's build error, short: what in Keras's config it cannot build."""
    where = re.search(r"(\w+ '[^']+'): initializer .*?\"class_name\": \"(\w+)\"", message)
    if where:
        return f"{where.group(1)} has a {where.group(2)} initializer, not built from a config"
    where = re.search(r"layer '([^']+)' is called with", message)
    if where:
        return f"layer '{where.group(1)}' is called with a constant operand (a Keras op node)"
    return message


def _pads(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        layer["config"]["name"]: layer["config"]["padding"]
        for layer in entry["config"]["layers"]
        if layer["class_name"] == "ZeroPadding2D"
    }


def record(name: str) -> dict[str, Any] | list[str]:
    top = _make(name)
    missing = _unsupported(top)
    if missing:
        return missing
    record: dict[str, Any] = {"application": name, "keras_version": keras.__version__}
    record["default_size"], record["min_size"] = SIZES[_application(name)[0]]
    record["top"] = top
    diff = _diff(top, _make(name, classes=7))
    bad = [d for d in diff if (d[1], d[2]) != (1000, 7)]
    if bad:
        raise SystemExit(f"{name}: classes=7 changes more than the classes: {bad[:3]}")
    record["classes_paths"] = [list(p) for p, _, _ in diff]
    diff = _diff(top, _make(name, classifier_activation=None))
    if any(b != "linear" for _, _, b in diff):
        raise SystemExit(f"{name}: classifier_activation=None changes {diff[:3]}")
    record["activation_paths"] = [list(p) for p, _, _ in diff]
    notop = _make(name, include_top=False)
    record["notop"] = notop
    record["pooling"] = {}
    for pooling in ("avg", "max"):
        pooled = _make(name, include_top=False, pooling=pooling)
        if len(pooled["config"]["layers"]) != len(notop["config"]["layers"]) + 1:
            raise SystemExit(f"{name}: pooling={pooling} adds more than one layer")
        before = {layer["config"]["name"]: layer for layer in notop["config"]["layers"]}
        added = [
            (i, layer)
            for i, layer in enumerate(pooled["config"]["layers"])
            if layer["config"]["name"] not in before
        ]
        changed = [
            layer
            for layer in pooled["config"]["layers"]
            if layer["config"]["name"] in before and layer != before[layer["config"]["name"]]
        ]
        record["pooling"][pooling] = added[0][1]
        if changed or added[0][0] != len(notop["config"]["layers"]):
            # ConvNeXt pools before its last LayerNormalization: the pooling layer goes in
            # at this index and the layers it feeds take these recorded entries
            if pooled["config"]["output_layers"] != notop["config"]["output_layers"]:
                raise SystemExit(f"{name}: pooling={pooling} inserts a layer and moves the output")
            record.setdefault("pooling_inserted", {})[pooling] = {
                "index": added[0][0],
                "changed": changed,
            }
    # sizes 2**n + 1 stay odd down the network: every correct_pad layer pads differently
    odd = _pads(_make(name, include_top=False, input_shape=(257, 257, 3)))
    record["correct_pad"] = {
        layer: [padding[0][1], padding[1][1]]
        for layer, padding in _pads(notop).items()
        if odd[layer] != padding
    }
    return record


def main(names: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    unsupported_file = OUT / "_unsupported.json"
    unsupported = json.loads(unsupported_file.read_text()) if unsupported_file.exists() else {}
    for name in names:
        result = record(name)
        target = OUT / f"{name}.json.gz"
        if isinstance(result, list):
            unsupported[name] = result
            target.unlink(missing_ok=True)
            print(f"{name}: not buildable by compat: {result}")
            continue
        unsupported.pop(name, None)
        data = json.dumps(result, separators=(",", ":"), sort_keys=True).encode()
        # mtime=0: the same Keras gives byte-identical files
        target.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
        print(f"{name}: {target.stat().st_size} bytes, correct_pad={len(result['correct_pad'])}")
    unsupported_file.write_text(json.dumps(dict(sorted(unsupported.items())), indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or [*SIZES, *VARIANTS])
