"""compat's model and weights files: loading never runs code (Keras's ``safe_mode``), Keras's
own files load, and a save that fails half-way keeps the previous file."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ftlight.files import UnreadableFileError, UntrustedFileError
from tests.test_trust_files import crafted_pickle

REPO = Path(__file__).parents[2]


def doubled(x: torch.Tensor) -> torch.Tensor:
    """A user's own activation function: a model using it is code the file cannot carry."""
    return 2 * x


def _model(K, activation="softmax"):
    return K.Sequential(
        [
            K.Input((8, 8, 3)),
            K.layers.Conv2D(4, 3, activation="relu"),
            K.layers.BatchNormalization(),
            K.layers.GlobalAveragePooling2D(),
            K.layers.Dense(3, activation=activation),
        ]
    )


@pytest.mark.parametrize("kind", ["load_model", "load_weights"])
def test_a_crafted_pickle_is_refused(ck, tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "marker"
    if kind == "load_model":
        evil = crafted_pickle(tmp_path / "evil.keras.pt", marker, wrap="compat-model")
        with pytest.raises(UntrustedFileError, match=r"evil\.keras\.pt.*trust_pickle=True"):
            ck.models.load_model(evil)
    else:
        evil = crafted_pickle(tmp_path / "evil.weights.pt", marker, wrap="compat-weights")
        with pytest.raises(UntrustedFileError, match=r"evil\.weights\.pt"):
            _model(ck).load_weights(evil)
    assert not marker.exists()


def test_safe_mode_loads_compat_layers_and_asks_for_user_code(ck, images, tmp_path) -> None:
    x, y = images(8, 8)
    model = _model(ck)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "plain.model")
    loaded = ck.models.load_model(tmp_path / "plain.model")  # safe_mode=True by default
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))

    custom = _model(ck, activation=doubled)
    custom.save(tmp_path / "custom.model")
    with pytest.raises(UntrustedFileError, match=r"test_saving_trust\.doubled.*custom_objects"):
        ck.models.load_model(tmp_path / "custom.model")
    expected = custom.predict(x, verbose=0)
    for kwargs in ({"custom_objects": {"doubled": doubled}}, {"safe_mode": False}):
        again = ck.models.load_model(tmp_path / "custom.model", **kwargs)
        np.testing.assert_array_equal(again.predict(x, verbose=0), expected)


def test_model_checkpoint_files_load_in_safe_mode(ck, images, tmp_path) -> None:
    x, y = images(8, 8)
    model = _model(ck)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    callback = ck.callbacks.ModelCheckpoint(str(tmp_path / "m{epoch:02d}.model"))
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    loaded = ck.models.load_model(tmp_path / "m01.model")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_keras_files_load_and_a_mismatch_is_named(keras, ck, tmp_path: Path) -> None:
    """Real files written by Keras 3 load (``.keras``, legacy ``.h5``, ``.weights.h5``: see
    test_keras_files.py); weights into a model of another architecture are one error naming
    the file and the layer, whatever the suffix."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save(tmp_path / "model.keras")
    model.save(tmp_path / "model.h5")
    model.save_weights(tmp_path / "model.weights.h5")
    for name in ("model.keras", "model.h5"):
        assert ck.models.load_model(tmp_path / name).count_params() == 10
    for name in ("model.keras", "model.h5", "model.weights.h5"):
        with pytest.raises(UnreadableFileError) as err:
            _model(ck).load_weights(tmp_path / name)
        message = str(err.value)
        assert str(tmp_path / name) in message and "conv2d" in message, message
    (tmp_path / "empty.model").write_bytes(b"")
    with pytest.raises(UnreadableFileError, match=r"empty\.model is empty \(0 bytes\)"):
        ck.models.load_model(tmp_path / "empty.model")


FAIL_HALF_WAY = """
import os, resource, signal, sys
os.environ["KERAS_BACKEND"] = "torch"
import compat as keras
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full disk: writes fail with EFBIG
kind, path = sys.argv[1], sys.argv[2]
model = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Conv2D(256, 3)])
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
model.save(path) if kind == "save" else model.save_weights(path)
"""


@pytest.mark.parametrize("kind", ["save", "save_weights"])
def test_a_save_that_fails_half_way_keeps_the_previous_file(ck, tmp_path, kind) -> None:
    path = tmp_path / "previous.pt"
    small = ck.Sequential([ck.Input((8, 8, 3)), ck.layers.Conv2D(2, 3)])
    getattr(small, kind)(path)
    before = path.read_bytes()
    (tmp_path / "fail.py").write_text(FAIL_HALF_WAY)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "fail.py"), kind, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    # The write really failed half-way: torch's zip writer reports (or aborts on) the short write.
    assert proc.returncode != 0 and "unexpected pos" in proc.stderr, proc.stderr[-2000:]
    assert path.read_bytes() == before
    if kind == "save":
        assert ck.models.load_model(path).count_params() == small.count_params()
    else:
        ck.Sequential([ck.Input((8, 8, 3)), ck.layers.Conv2D(2, 3)]).load_weights(path)


class _CallsWithArguments:
    """Pickles as ``cls(*args)``: what a crafted file does to allocate or act at load time."""

    def __init__(self, cls: type, *args) -> None:
        self.cls, self.args = cls, args

    def __reduce__(self):
        return (self.cls, self.args)


@pytest.mark.parametrize("target", ["torch.nn.Linear", "compat.layers.Dense"])
def test_allowed_classes_are_never_called_with_the_files_arguments(ck, tmp_path, target) -> None:
    """Red team: nn.Linear(100_000, 100_000) named in a 1.4 KB file allocated 40 GB at load.
    Loading may rebuild these classes (``__new__`` + ``__setstate__``), never call them."""
    cls, args = (
        (torch.nn.Linear, (3, 5)) if target == "torch.nn.Linear" else (ck.layers.Dense, (7,))
    )
    payload = {
        "format": "compat-model-v1",
        "model": _CallsWithArguments(cls, *args),
        "compile": None,
        "optimizer_state": None,
    }
    path = tmp_path / "crafted.model"
    torch.save(payload, path)
    name = re.escape(f"{cls.__module__}.{cls.__qualname__}")
    with pytest.raises(
        UntrustedFileError, match=rf"calls {name} with arguments.*trust_pickle=True"
    ):
        ck.models.load_model(path)


def test_a_compat_file_holding_something_else_than_a_model_is_refused(ck, tmp_path) -> None:
    path = tmp_path / "linear.model"
    torch.save(
        {
            "format": "compat-model-v1",
            "model": torch.nn.Linear(2, 2),
            "compile": None,
            "optimizer_state": None,
        },
        path,
    )
    with pytest.raises(ValueError, match=r"linear\.model .* holds a Linear, not a compat Model"):
        ck.models.load_model(path)


def _crafted_model_file(ck, path: Path, *, on: str, name: str, value, compiled=None) -> Path:
    """A real compat model file whose pickled state gives the model (``on="model"``) or its
    Dense layer (``on="layer"``) an instance attribute ``name``: what a crafted BUILD does."""
    model = ck.Sequential([ck.Input((4,)), ck.layers.Dense(3)])
    target = model if on == "model" else model.layers[-1]
    target.__dict__[name] = value  # bypasses nn.Module.__setattr__, as unpickling does
    payload = {"format": "compat-model-v1", "model": model, "compile": compiled}
    torch.save({**payload, "optimizer_state": None}, path)
    return path


@pytest.mark.parametrize(
    ("on", "name", "compiled"),
    [
        # Red team (a2): load_model's compile(**entry) called nn.Linear(in_features=N, ...).
        ("model", "compile", {"in_features": 3, "out_features": 3}),
        ("model", "compile", {"optimizer": "adam", "loss": "mse"}),
        ("model", "fit", None),
        ("model", "__call__", None),
        ("layer", "forward", None),
        ("layer", "__call__", None),
        ("model", "predict", None),
    ],
)
def test_an_attribute_hiding_a_method_is_refused(ck, tmp_path, on, name, compiled) -> None:
    path = _crafted_model_file(
        ck,
        tmp_path / "hides.model",
        on=on,
        name=name,
        value=torch.nn.Linear(2, 2),
        compiled=compiled,
    )
    for kwargs in ({}, {"compile": False}):
        with pytest.raises(UnreadableFileError) as err:
            ck.models.load_model(path, **kwargs)
        message = str(err.value)
        assert str(path) in message and f"attribute '{name}' that hides" in message, message
        assert "\n" not in message


def test_an_activation_function_hiding_a_layer_method_is_refused(ck, tmp_path) -> None:
    """Allowed functions are no better than allowed classes in a method's place."""
    path = _crafted_model_file(
        ck, tmp_path / "fn.model", on="layer", name="build", value=ck.activations.get("relu")
    )
    with pytest.raises(UnreadableFileError, match=r"fn\.model .*'build' that hides Dense\.build"):
        ck.models.load_model(path)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"bogus": 1}, "hold ['bogus']"),  # red team a7: compile() got an unexpected kwarg
        ({"optimizer": torch.nn.Linear(2, 2)}, "optimizer=Linear"),
        ({"optimizer": "adam", "loss": torch.nn.MSELoss()}, "loss=MSELoss"),
        ({"optimizer": "adam", "metrics": "accuracy"}, "metrics that are not a list"),
        ({"optimizer": "adam", "cache_features": 1}, "cache_features=int"),
        ([("optimizer", "adam")], "are a list, not a dict"),
    ],
)
def test_a_compile_entry_of_other_types_is_refused(ck, tmp_path, entry, says) -> None:
    path = _crafted_model_file(ck, tmp_path / "entry.model", on="model", name="x", value=1)
    payload = torch.load(path, weights_only=False)
    payload["compile"] = entry
    torch.save(payload, path)
    with pytest.raises(UnreadableFileError) as err:
        ck.models.load_model(path)
    message = str(err.value)
    assert str(path) in message and says in message and "\n" not in message, message


@pytest.mark.parametrize(
    ("entry", "state", "says"),
    [
        ({"optimizer": "no_such_optimizer"}, None, "NotImplementedError: Optimizer"),
        ({"optimizer": "adam", "loss": "no_such_loss"}, None, "NotImplementedError: Loss"),
        ({"optimizer": "adam"}, {"state": {}, "param_groups": []}, "ValueError"),
    ],
)
def test_a_compile_entry_that_fails_to_compile_is_one_line(ck, tmp_path, entry, state, says):
    path = _crafted_model_file(ck, tmp_path / "fails.model", on="model", name="x", value=1)
    payload = torch.load(path, weights_only=False)
    payload["compile"], payload["optimizer_state"] = entry, state
    torch.save(payload, path)
    with pytest.raises(UnreadableFileError) as err:
        ck.models.load_model(path)
    message = str(err.value)
    assert str(path) in message and "compiling the model from its saved" in message
    assert says in message and "compile=False" in message and "\n" not in message, message
    assert ck.models.load_model(path, compile=False).count_params() == 15


def test_a_model_rebuilt_without_a_modules_state_is_one_line(ck, tmp_path) -> None:
    """Red team (a2, a7): a Sequential rebuilt from an empty state raised AttributeError
    (``_input_layer``) with a traceback from inside torch.load."""
    model = ck.Sequential([ck.Input((4,)), ck.layers.Dense(3)])
    model.save(tmp_path / "real.model")
    with zipfile.ZipFile(tmp_path / "real.model") as src:
        folder = src.namelist()[0].split("/")[0]
    # {"format": ..., "model": Sequential.__new__(Sequential) with state {}, ...}: NEWOBJ, BUILD
    empty = b"".join(
        [
            b"\x80\x02}(",
            pickle.dumps("format", protocol=2)[2:-1],
            pickle.dumps("compat-model-v1", protocol=2)[2:-1],
            pickle.dumps("model", protocol=2)[2:-1],
            b"ccompat.models\nSequential\n)\x81}b",
            pickle.dumps("compile", protocol=2)[2:-1],
            b"N",
            pickle.dumps("optimizer_state", protocol=2)[2:-1],
            b"Nu.",
        ]
    )
    path = tmp_path / "empty_state.model"
    with zipfile.ZipFile(path, "w") as dst:
        dst.writestr(f"{folder}/data.pkl", empty)
        dst.writestr(f"{folder}/version", "3\n")
    with pytest.raises(UnreadableFileError) as err:
        ck.models.load_model(path)
    message = str(err.value)
    assert str(path) in message and "crafted" in message and "\n" not in message, message


def test_compat_writes_zip_files_only(ck, tmp_path) -> None:
    """torch's legacy format is refused on load: compat's own writers never produce it."""
    from ftlight.files import sniff

    model = _model(ck)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.save(tmp_path / "m.model")
    model.save_weights(tmp_path / "m.weights.pt")
    assert sniff(tmp_path / "m.model") == sniff(tmp_path / "m.weights.pt") == "torch-zip"
    assert ck.models.load_model(tmp_path / "m.model").compiled


def test_loading_never_builds_layers_the_file_declares(ck, tmp_path: Path) -> None:
    """A file may say a layer is unbuilt and wide; unpickling must not allocate that width.
    The layer builds on the first call, as any model does, and never runs as an identity."""
    model = ck.Sequential([ck.Input((4,)), ck.layers.Dense(3)])
    dense = model.layers[-1]
    del model.__dict__["_plan"]  # the shape of a file written before Sequential held a graph
    dense.built = False
    dense.units = 50_000_000  # 800 MB of kernel if loading built it
    payload = {"format": "compat-model-v1", "model": model, "compile": None}
    path = tmp_path / "wide.keras.pt"
    torch.save(payload, path)
    assert path.stat().st_size < 20_000
    loaded = ck.models.load_model(path)
    assert [tuple(w.shape) for w in loaded.weights] == [(4, 3), (3,)]  # nothing was built
    # and the graph-less model still runs its layers (never the input passed through)
    dense = loaded.layers[-1]
    dense.units = 2
    out = loaded.predict(np.ones((1, 4), "float32"), verbose=0)
    assert out.shape == (1, 2)


@pytest.mark.parametrize("name", ["EfficientNetB0", "MobileNetV3Small"])
def test_saved_applications_load_back_in_safe_mode(ck, tmp_path: Path, name) -> None:
    """Keras's everyday loop, fit -> save -> load_model, with the default safe_mode: the
    applications built on timm modules (BatchNormAct2d, ...) were refused as untrusted.
    EfficientNetB0 holds both timm's BatchNormAct2d and sigmoid-gated convolutions,
    MobileNetV3 hard_swish (the other applications were checked by hand, slower)."""
    size = 32
    model = getattr(ck.applications, name)(
        weights=None, include_top=False, input_shape=(size, size, 3), pooling="avg"
    )
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = ck.models.load_model(path)
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "softmax", "relu", "hard_sigmoid"])
def test_a_saved_head_with_any_activation_loads_back(ck, tmp_path: Path, activation) -> None:
    """Dense(1, activation="sigmoid") is the binary head of every cats-vs-dogs tutorial;
    torch.sigmoid pickled as getattr on torch's C class and safe loading refused the file."""
    model = ck.Sequential([ck.Input((4,)), ck.layers.Dense(3, activation=activation)])
    path = tmp_path / "head.keras"
    model.save(path)
    x = np.linspace(-2, 2, 8, dtype="float32").reshape(2, 4)
    loaded = ck.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


class _NewWithArguments:
    """Pickles as ``cls.__new__(cls, *args)`` (NEWOBJ), as a crafted file can."""

    def __init__(self, cls: type, args: tuple) -> None:
        self.cls, self.args = cls, args

    @property  # pickle checks that args[0] is the object's class
    def __class__(self) -> type:  # type: ignore[override]
        return self.cls

    def __reduce_ex__(self, protocol: int) -> tuple:
        import copyreg

        return (copyreg.__newobj__, (self.cls, *self.args))


@pytest.mark.parametrize(
    "cls,args", [(np.ndarray, ((3 * 2**30,), "f4")), (torch.Tensor, (3 * 2**30,))]
)
def test_new_with_the_files_arguments_is_refused(ck, tmp_path: Path, cls, args) -> None:
    """A 5 KB file loaded as a 12.9 GB array: ndarray/Tensor ``__new__`` take a shape."""
    model = ck.Sequential([ck.Input((4,)), ck.layers.Dense(1)])
    model.layers[0].note = _NewWithArguments(cls, args)
    path = tmp_path / "new.pt"
    model.save(path)
    assert path.stat().st_size < 20_000
    with pytest.raises(UntrustedFileError, match=r"calls __new__ of .* with arguments of its own"):
        ck.models.load_model(path)


def test_module_classes_that_run_code_on_their_state_are_refused(ck, tmp_path: Path) -> None:
    """torch.nn.quantized.Conv2d is torch.ao's class under a torch.nn name, and its
    __setstate__ prepacks the file's stride/padding: only plain module rebuilds are allowed."""
    from torch.ao.nn.quantized.modules.conv import Conv2d as QuantizedConv2d

    model = ck.Sequential([ck.Input((4,)), ck.layers.Dense(1)])
    model.layers[0].__dict__["extra"] = QuantizedConv2d(2, 4, 3)
    path = tmp_path / "quantized.pt"
    model.save(path)
    with pytest.raises(UntrustedFileError, match=r"quantized"):
        ck.models.load_model(path)


def test_a_model_compiled_with_metric_objects_loads_and_allocates_nothing(ck, tmp_path) -> None:
    """compile(metrics=[AUC()]) saved and loaded (refused before: torchmetrics sets an
    instance ``update``); a file's thresholds never size a metric while it is read."""
    model = ck.Sequential([ck.Input((4,)), ck.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=[ck.metrics.AUC()])
    x = np.linspace(-1, 1, 32, dtype="float32").reshape(8, 4)
    y = (x.sum(1, keepdims=True) > 0).astype("float32")
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "auc.pt"
    model.save(path)
    loaded = ck.models.load_model(path)
    metric = loaded._compile_config.metrics[0]
    assert isinstance(metric, ck.metrics.AUC) and metric._tm is None  # made on first use
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6
    )
