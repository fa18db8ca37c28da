"""Keras's own weight files for the applications: Keras's exact architecture, Keras's weights.

``keras.applications.ResNet50(weights=path)`` where ``path`` is an HDF5 file (or ``.keras``
archive) written by Keras — the ImageNet files Keras downloads into ``~/.keras/models/``
(``resnet50_weights_tf_dim_ordering_tf_kernels[_notop].h5``...), or a model's own weights —
builds the architecture Keras builds for that application (not compat's torch variant) from a
configuration recorded from real Keras 3.15.1 (``keras_configs/<Name>.json.gz``, written by
``scripts/record_keras_app_configs.py``), with Keras's rules for ``include_top``,
``input_shape``, ``pooling``, ``classes`` and ``classifier_activation`` (and the input-size
dependent ``correct_pad`` padding of MobileNetV2), then loads the file as Keras's
``load_weights`` does. No input map: these weights expect Keras's ``preprocess_input``.
``weights="imagenet"`` keeps compat's timm weights; :func:`cached_weights` gives the path of a
file in Keras's cache.
"""

from __future__ import annotations

import copy
import functools
import gzip
import inspect
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from compat.applications import _common

CONFIGS = Path(__file__).with_name("keras_configs")
# The files Keras's applications download (keras/src/applications/*.py), top and headless.
_RESNET = "{}_weights_tf_dim_ordering_tf_kernels{}.h5"
_FILES: dict[str, tuple[str, str]] = {
    **{
        name: (_RESNET.format(name.lower(), ""), _RESNET.format(name.lower(), "_notop"))
        for name in (
            "VGG16", "VGG19", "ResNet50", "ResNet101", "ResNet152", "ResNet50V2",
            "ResNet101V2", "ResNet152V2", "Xception", "DenseNet121", "DenseNet169",
            "DenseNet201",
        )
    },
    "InceptionResNetV2": (
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels.h5",
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "InceptionV3": (
        "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "MobileNet": ("mobilenet_1_0_224_tf.h5", "mobilenet_1_0_224_tf_no_top.h5"),
    "MobileNetV2": (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    ),
    # EfficientNetB0-B7 are not named here: Keras's weights="imagenet" adds a Rescaling
    # (1/sqrt(stddev)) after the Normalization that weights=<that file> does not, so that
    # file given as weights= predicts differently from Keras's "imagenet" (in Keras too).
    **{
        f"EfficientNetV2{v}": (f"efficientnetv2-{v.lower()}.h5",
                               f"efficientnetv2-{v.lower()}_notop.h5")
        for v in ("B0", "B1", "B2", "B3", "S", "M", "L")
    },
    **{
        f"MobileNetV3{v}": (f"weights_mobilenet_v3_{v.lower()}_224_1.0_float.h5",
                            f"weights_mobilenet_v3_{v.lower()}_224_1.0_float_no_top_v2.h5")
        for v in ("Small", "Large")
    },
    **{
        f"ConvNeXt{v}": (f"convnext_{v.lower()}.h5", f"convnext_{v.lower()}_notop.h5")
        for v in ("Tiny", "Small", "Base", "Large", "XLarge")
    },
}  # fmt: skip


def keras_home() -> str:
    """Keras's cache folder: ``$KERAS_HOME``, else ``~/.keras`` (Keras's own rule)."""
    if "KERAS_HOME" in os.environ:
        return os.environ["KERAS_HOME"]
    home = os.path.expanduser("~")
    return os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")


def _file_name(application: str, include_top: bool, alpha: float, rows: int) -> str:
    if application == "MobileNetV2":
        return (
            f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}"
            + ("" if include_top else "_no_top")
            + ".h5"
        )
    if application == "MobileNet":
        text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0"}.get(alpha, "2_5")  # Keras's own rule
        return f"mobilenet_{text}_{rows}_tf" + ("" if include_top else "_no_top") + ".h5"
    if application.startswith("MobileNetV3") and alpha in (0.75, 1.0) and rows == 224:
        kind = application[len("MobileNetV3") :].lower()
        return f"weights_mobilenet_v3_{kind}_224_{float(alpha)}_float" + (
            ".h5" if include_top else "_no_top_v2.h5"
        )
    if alpha != 1.0 or rows != 224:
        raise ValueError(f"{application} has no `alpha` or `rows` variants of its weights.")
    return _FILES[application][0 if include_top else 1]


def cached_weights(
    application: str, include_top: bool = True, *, alpha: float = 1.0, rows: int = 224
) -> str:
    """The path of Keras's ImageNet weights for ``application`` in Keras's cache
    (``<keras home>/models/<file>``, where ``keras.applications.<application>(
    weights="imagenet")`` downloads it), for ``weights=``; ``alpha`` and ``rows`` (the
    image size the weights were trained at) pick MobileNet/MobileNetV2/V3's files. An error
    when it is not there."""
    if application not in _FILES:
        raise ValueError(
            f"No Keras weight file name is known for {application!r}; known: {sorted(_FILES)}."
        )
    name = _file_name(application, include_top, alpha, rows)
    path = os.path.join(keras_home(), "models", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} is not there: real Keras downloads it with keras.applications."
            f"{application}(weights='imagenet', include_top={include_top}...); compat downloads "
            "no Keras files."
        )
    return path


def keras_weights_file(weights: Any) -> str | None:
    """``weights`` as a path when it names a file written by Keras (sniffed by content:
    HDF5 or a ``.keras`` archive), else None."""
    from compat.saving import _sniff_keras

    if not isinstance(weights, (str, os.PathLike)) or weights == "imagenet":
        return None
    path = os.fspath(weights)
    return path if _sniff_keras(path) is not None else None


@functools.lru_cache(maxsize=8)
def _record(application: str, alpha: float = 1.0) -> dict[str, Any]:
    variant = application if alpha == 1.0 else f"{application}_alpha{float(alpha)}"
    path = CONFIGS / f"{variant}.json.gz"
    if not path.is_file():
        unsupported = json.loads((CONFIGS / "_unsupported.json").read_text())
        if application in unsupported:
            missing = "; ".join(
                r if len(r) < 240 else r[:240] + "..." for r in unsupported[application]
            )
            raise NotImplementedError(
                f"{application} with a Keras weights file: Keras's {application} uses what "
                f"compat cannot build from a Keras config ({missing}). Use weights='imagenet' "
                "or a torch/timm weights file (compat's torch variant)."
            )
        if alpha != 1.0:
            recorded = sorted(
                [1.0]
                + [
                    float(p.name[: -len(".json.gz")].partition("_alpha")[2])
                    for p in CONFIGS.glob(f"{application}_alpha*.json.gz")
                ]
            )
            raise NotImplementedError(
                f"{application}(alpha={alpha}) with a Keras weights file: Keras's architecture "
                f"is recorded for the alphas Keras has ImageNet weights for: {recorded}."
            )
        raise NotImplementedError(
            f"{application} with a Keras weights file: no recorded Keras architecture "
            f"({path.name}); run scripts/record_keras_app_configs.py {variant}."
        )
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _set(entry: Any, path: list[Any], value: Any) -> None:
    for key in path[:-1]:
        entry = entry[key]
    entry[path[-1]] = value


def _activation(value: Any) -> str:
    """Keras's ``validate_activation`` with pretrained weights: softmax or none only."""
    name = value if isinstance(value, str) or value is None else getattr(value, "__name__", None)
    if name in ("softmax", None, "linear"):
        return "linear" if name is None else name
    raise ValueError(
        "Only `None` and `softmax` activations are allowed for the `classifier_activation` "
        "argument when using pretrained weights, with `include_top=True`; Received: "
        f"classifier_activation={value!r}"
    )


def _correct_pad(size: Any, half: int) -> list[int]:
    """``imagenet_utils.correct_pad`` along one axis (``half``: kernel_size // 2)."""
    adjust = 1 if size is None else 1 - size % 2
    return [half - adjust, half]


def _fix_pads(config: dict[str, Any], pads: dict[str, list[int]], where: str) -> None:
    """Set the padding Keras computes from each ``correct_pad`` layer's input size: build on
    the meta device, fix the first layer that differs, repeat (later sizes depend on it)."""
    from compat.keras_format import hook

    entries = {e["config"]["name"]: e for e in config["config"]["layers"]}
    order = [name for name in entries if name in pads]
    while True:
        with torch.device("meta"):
            model = hook("build")(config, where)
        for name in order:
            h, w = model.get_layer(name).input.shape[1:3]
            want = [_correct_pad(h, pads[name][0]), _correct_pad(w, pads[name][1])]
            if entries[name]["config"]["padding"] != want:
                entries[name]["config"]["padding"] = want
                break
        else:
            return


def _auto_names(config: dict[str, Any]) -> None:
    """Keras's automatic layer names (``input_layer``, ``conv2d_3``...) recorded in a fresh
    session become this session's next ones, in the order Keras made them, as Keras does."""
    from compat import backend

    found = []
    for entry in config["config"]["layers"]:
        prefix, name = backend.to_snake_case(entry["class_name"]), entry["config"]["name"]
        match = re.fullmatch(rf"{re.escape(prefix)}(?:_(\d+))?", name)
        if match:
            found.append((prefix, int(match.group(1) or 0), name))
    renames = {name: backend.unique_name(prefix) for prefix, _, name in sorted(found)}
    if any(old != new for old, new in renames.items()):
        _rename(config, renames)


def _rename(value: Any, renames: dict[str, str]) -> Any:
    """Layer names, and the tensor references ``[name, node, index]`` naming them."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "name" and isinstance(item, str) and "class_name" not in value:
                value[key] = renames.get(item, item)
            else:
                _rename(item, renames)
        if "class_name" in value and value.get("name") in renames:
            value["name"] = renames[value["name"]]
    elif isinstance(value, list):
        if len(value) == 3 and isinstance(value[0], str) and value[0] in renames:
            value[0] = renames[value[0]]
        for item in value:
            _rename(item, renames)
    return value


def keras_config(
    application: str,
    *,
    include_top: bool = True,
    input_shape: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str | None = None,
    weights: Any = "file",
    alpha: float = 1.0,
) -> dict[str, Any]:
    """Keras's serialised ``keras.applications.<application>(...)`` for these arguments."""
    record = _record(application, alpha)
    _common.check_pooling(pooling)
    if application.startswith("MobileNetV3"):
        shape = _mobilenet_v3_shape(input_shape)
    else:
        shape = _common.check_input_shape(
            None, input_shape, record["default_size"], record["min_size"], include_top, weights
        )
    config = copy.deepcopy(record["top" if include_top else "notop"])
    if include_top:
        for path in record["classes_paths"]:
            _set(config, path, classes)
        for path in record["activation_paths"]:
            _set(config, path, _activation(classifier_activation))
    elif pooling is not None:
        layer = copy.deepcopy(record["pooling"][pooling])
        inserted = record.get("pooling_inserted", {}).get(pooling)
        layers = config["config"]["layers"]
        if inserted is not None:  # ConvNeXt: pooled before its last LayerNormalization
            changed = {e["config"]["name"]: e for e in copy.deepcopy(inserted["changed"])}
            layers[:] = [changed.get(e["config"]["name"], e) for e in layers]
            layers.insert(inserted["index"], layer)
        else:
            layers.append(layer)
            outputs = config["config"]["output_layers"]
            ref = [layer["config"]["name"], 0, 0]
            config["config"]["output_layers"] = [ref] if isinstance(outputs[0], list) else ref
    _auto_names(config)
    first = config["config"]["layers"][0]
    first["config"]["batch_shape"] = [None, *shape]
    recorded = config["config"]["name"]
    if name is None and recorded.startswith("mobilenet"):  # f"mobilenetv2_1.00_{rows}"
        name = recorded.rsplit("_", 1)[0] + f"_{shape[0]}"
    config["config"]["name"] = name or recorded
    if record["correct_pad"] and shape[0] is not None:
        _fix_pads(config, record["correct_pad"], f"Keras's {application}")
    _fix_nested_inputs(config, f"Keras's {application}")
    return config


def _fix_nested_inputs(config: dict[str, Any], where: str) -> None:
    """The input shape of each nested model (ConvNeXt's stem and downsampling Sequentials),
    which Keras builds on the shape it is called on: the input size's own shapes, found by
    building on the meta device with the nested inputs left open."""
    from compat.keras_format import hook

    nested = [
        e for e in config["config"]["layers"] if e["class_name"] in ("Sequential", "Functional")
    ]
    if not nested:
        return
    first = config["config"]["layers"][0]["config"]["batch_shape"]
    if all(d is None for d in first[1:-1]):
        return  # recorded without a size: every nested input is open already
    for entry in nested:
        _set_nested_input(entry, None)
    with torch.device("meta"):
        model = hook("build")(config, where)
    for entry in nested:
        layer = model.get_layer(entry["config"]["name"])
        node = [n for n in layer._inbound_nodes if n.input_tensors][-1]
        _set_nested_input(entry, list(node.input_tensors[0].shape))


def _set_nested_input(entry: dict[str, Any], shape: list[Any] | None) -> None:
    """Set a nested model's input shape (``None``: its spatial sizes open)."""
    inner = entry["config"]
    old = inner["layers"][0]["config"]["batch_shape"]
    new = shape or [None, *[None] * (len(old) - 2), old[-1]]
    inner["layers"][0]["config"]["batch_shape"] = new
    if "build_input_shape" in inner:
        inner["build_input_shape"] = list(new)


def _mobilenet_v3_shape(input_shape: Any) -> tuple[Any, ...]:
    """Keras's MobileNetV3 input rule: any size, with or without the top (its top pools
    first), at least 32x32."""
    if input_shape is None:
        return (None, None, 3)
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(
            "`input_shape` must be a tuple of three integers (height, width, channels). "
            f"Received: input_shape={shape}"
        )
    rows, cols = shape[:2]
    if rows and cols and (rows < 32 or cols < 32):
        raise ValueError(f"Input size must be at least 32x32; Received `input_shape={shape}`")
    return shape


def _file_layers(path: str) -> list[tuple[str, list[tuple[int, ...]]]] | None:
    """A legacy HDF5 weights file's layers that hold weights, in order, with the shapes
    (None for other files, and for damaged ones: the loader's own checks name the damage)."""
    import h5py

    from compat.saving import _sniff_keras

    if _sniff_keras(path) != "h5":
        return None
    try:
        with h5py.File(path, "r") as f:
            root = f.get("model_weights", f)
            if "layer_names" not in root.attrs:
                return None
            out = []
            for raw in root.attrs["layer_names"]:
                layer = raw.decode() if isinstance(raw, bytes) else str(raw)
                group = root[layer]
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in
                         group.attrs.get("weight_names", [])]  # fmt: skip
                if names:
                    out.append((layer, [tuple(group[n].shape) for n in names]))
            return out
    except (KeyError, OSError, AttributeError, TypeError):
        return None


def _check_file(model: Any, path: str, application: str, include_top: bool) -> None:
    """Keras's order-matching checks of a legacy file, as one error naming the application."""
    from compat import keras_files

    stored = _file_layers(path)
    if stored is None:
        return
    # as Keras's legacy layout has them: a nested model (ConvNeXt's stem) is one layer
    wanted = [
        (layer.name, [tuple(v.shape) for v in keras_files._legacy_variables(layer)])
        for layer in keras_files._keras_order(model)
        if keras_files._legacy_variables(layer)
    ]
    what = f"Keras's {application}(include_top={include_top})"
    if len(stored) != len(wanted):
        hint = "; the file of another application" + (
            ", or of the model with its top (include_top=True)?"
            if len(stored) > len(wanted)
            else ", or a headless ('_notop') file (include_top=False)?"
        )
        raise ValueError(
            f"{path} holds weights for {len(stored)} layers ('{stored[0][0]}' ... "
            f"'{stored[-1][0]}'); {what} has {len(wanted)} ('{wanted[0][0]}' ... "
            f"'{wanted[-1][0]}'){hint}"
        )
    for i, ((s_name, s_shapes), (w_name, w_shapes)) in enumerate(zip(stored, wanted, strict=True)):
        if s_shapes != w_shapes:
            raise ValueError(
                f"{path}: layer #{i} '{s_name}' holds weights of shapes {s_shapes}; layer "
                f"'{w_name}' of {what} has {w_shapes}: the file of another application, or "
                "another input_shape or classes than it was saved with?"
            )


def build(application: str, path: str, arguments: dict[str, Any]) -> Any:
    """Keras's ``application`` built as Keras builds it, with the Keras file ``path`` loaded."""
    from compat.keras_format import hook

    if arguments.get("input_tensor") is not None:
        raise NotImplementedError(
            f"{application}(weights={path!r}, input_tensor=...): a Keras weights file builds "
            "Keras's own graph from its recorded config, which starts at its own Input; "
            "pass input_shape=... and call the model on your tensor."
        )
    include_top = bool(arguments.get("include_top", True))
    config = keras_config(
        application,
        include_top=include_top,
        input_shape=arguments.get("input_shape"),
        pooling=arguments.get("pooling"),
        classes=arguments.get("classes", 1000),
        classifier_activation=arguments.get("classifier_activation", "softmax"),
        name=arguments.get("name"),
        weights=path,
        alpha=arguments.get("alpha", 1.0),
    )
    model = hook("build")(config, f"Keras's {application}")
    _check_file(model, path, application, include_top)
    model.load_weights(path)
    model.eval()
    return model


_REQUEST = {
    "include_top",
    "weights",
    "input_tensor",
    "input_shape",
    "pooling",
    "classes",
    "classifier_activation",
    "name",
}


def with_keras_weights(builder: Callable[..., Any], application: str) -> Callable[..., Any]:
    """``builder`` that builds Keras's own architecture when ``weights`` is a Keras file."""
    signature = inspect.signature(builder)

    @functools.wraps(builder)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        path = keras_weights_file(bound.arguments.get("weights"))
        if path is None:
            return builder(*args, **kwargs)
        extra = {
            k: v
            for k, v in bound.arguments.items()
            if k not in _REQUEST and k != "alpha" and v != signature.parameters[k].default
        }
        if extra:
            raise NotImplementedError(
                f"{application}(weights={path!r}) with {extra}: Keras's architecture is "
                f"recorded with the default {sorted(extra)} only."
            )
        return build(application, path, bound.arguments)

    wrapped.__signature__ = signature  # type: ignore[attr-defined]
    wrapped._keras_weights = application  # type: ignore[attr-defined]
    return wrapped


def install(package: ModuleType, modules: list[ModuleType], names: list[str]) -> None:
    """Wrap each application builder ``names`` wherever ``package`` and ``modules`` hold it."""
    for name in names:
        builder = getattr(package, name)
        if getattr(builder, "_keras_weights", None):
            continue
        wrapped = with_keras_weights(builder, name)
        for module in (package, *modules):
            if getattr(module, name, None) is builder:
                setattr(module, name, wrapped)
