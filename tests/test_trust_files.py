"""Files ftlight reads and writes: loading never runs code, a partial load is an error, a bad
file is named in one line, and a write that fails half-way keeps the previous file.

All real: checkpoints from real ``Trainer`` runs, crafted files in tmp_path, ``ftlight``
subprocesses for the command line.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import timm
import torch

import ftlight
from ftlight import FineTuner, ImageDataModule
from ftlight.cli import predict
from ftlight.cli.demo import DIGITS_MARKER, prepare_digits_folder, write_digits_folder
from ftlight.files import UnreadableFileError, UntrustedFileError, load_torch_file
from ftlight.models.weights import WeightsMismatchError, load_state_dict_file
from tests.conftest import make_image_folder, quiet_trainer

REPO = Path(__file__).parents[1]


class _RunsCode:
    """Unpickling this creates ``marker``: what a malicious file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def crafted_pickle(
    path: Path, marker: Path, *, wrap: str = "checkpoint", legacy: bool = False
) -> Path:
    """A torch.save file (zip, or the legacy format) that would create ``marker`` if it
    were unpickled."""
    payload = {"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {}, "x": _RunsCode(marker)}
    if wrap == "compat-model":
        payload = {"format": "compat-model-v1", "model": _RunsCode(marker)}
    elif wrap == "compat-weights":
        payload = {"format": "compat-weights-v1", "weights": [("w", _RunsCode(marker))]}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


def ftlight_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FTLIGHT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "ftlight.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A tiny real checkpoint (resnet18, 32 px, cat/dog) and its image folder."""
    work = tmp_path_factory.mktemp("trust")
    images = make_image_folder(work / "imgs", classes=("cat", "dog"), per_class=4, size=32)
    dm = ImageDataModule.from_folder(images, batch_size=4, val_split=0.25, num_workers=0)
    model = FineTuner("resnet18", 2, None, image_size=32)
    trainer = quiet_trainer(work, max_steps=1, num_sanity_val_steps=None)
    trainer.fit(model, dm)
    ckpt = work / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    return {"work": work, "ckpt": ckpt, "images": images}


# ---- 1. loading never runs code ------------------------------------------------------------
@pytest.mark.slow
def test_cli_predict_and_export_refuse_a_crafted_pickle(run, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = crafted_pickle(tmp_path / "evil.ckpt", marker)
    for command in (["predict", str(evil), str(run["images"])], ["export", str(evil)]):
        proc = ftlight_cli(*command, "-o", str(tmp_path / "out"), cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert "Refusing to load" in proc.stderr and "--trust-pickle" in proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_resuming_from_a_crafted_pickle_names_what_it_holds(run, tmp_path: Path) -> None:
    """Red team: --ckpt_path was read with a bare torch.load, whose refusal advised
    ``weights_only=False`` (that is: run the file's code)."""
    marker = tmp_path / "marker"
    evil = crafted_pickle(tmp_path / "evil.ckpt", marker)
    proc = ftlight_cli(
        "fit", "--data.root", str(run["images"]), "--ckpt_path", str(evil), cwd=tmp_path
    )
    assert proc.returncode == 1, proc.stderr  # fit's exit status for a known error
    (line,) = proc.stderr.strip().splitlines()
    assert "Refusing to load" in line and "pathlib.Path" in line, line
    assert "weights_only" not in line and "--model.weights" in line, line
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_weights_file_with_a_crafted_pickle_is_refused(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "marker"
    evil = crafted_pickle(tmp_path / "evil.pth", marker, legacy=legacy)
    with pytest.raises(UntrustedFileError, match=r"evil\.pth.*trust_pickle=True") as err:
        ftlight.create_backbone("resnet18", weights=str(evil))
    # A legacy file is refused for its format before its pickle is read (see below).
    assert ("legacy serialization format" in str(err.value)) == legacy
    with pytest.raises(UntrustedFileError):
        FineTuner("resnet18", 2, str(evil))
    if legacy:  # a caller vouching for the format still never runs the file's code
        with pytest.raises(UntrustedFileError, match=r"evil\.pth.*\(getattr\)"):
            load_torch_file(evil, allow_legacy=True)
    assert not marker.exists()


def _legacy_file_declaring(path: Path, numel: int) -> Path:
    """Red team (a5): a legacy torch file whose storage record declares ``numel`` float32
    elements while the file holds 12345; torch allocated the declared size (8.6 GB for a
    49 KB file) before reading anything."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(12345)}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    declared = pickle.dumps(12345, protocol=2)[2:-1]
    assert data.count(declared) == 2  # the storage record's size, then the tensor's shape
    path.write_bytes(data.replace(declared, b"J" + numel.to_bytes(4, "little"), 1))
    return path


def test_a_legacy_torch_file_is_refused_unless_trusted(tmp_path: Path) -> None:
    huge = _legacy_file_declaring(tmp_path / "huge.pt", 2**31 - 1)
    with pytest.raises(UntrustedFileError) as err:
        load_torch_file(huge)
    message = str(err.value)
    assert str(huge) in message and "\n" not in message
    for says in ("legacy serialization format", "allocates", "default zip format", "--trust"):
        assert says in message, message
    assert "allocate memory" not in message  # refused before torch tried to allocate it
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(3)}, plain, _use_new_zipfile_serialization=False)
    with pytest.raises(UntrustedFileError, match="legacy serialization format"):
        load_torch_file(plain)
    torch.testing.assert_close(load_torch_file(plain, trust_pickle=True)["w"], torch.ones(3))
    resaved = tmp_path / "resaved.pt"  # what the message tells the user to do
    torch.save(load_torch_file(plain, trust_pickle=True), resaved)
    torch.testing.assert_close(load_torch_file(resaved)["w"], torch.ones(3))


def test_ftlight_writes_zip_checkpoints_only(run, tmp_path: Path) -> None:
    """Legacy files are refused: ftlight's own writers never produce one."""
    from ftlight.callbacks.guards import AtomicCheckpointIO
    from ftlight.files import sniff

    assert sniff(run["ckpt"]) == "torch-zip"  # Lightning's Trainer.save_checkpoint
    checkpoint = torch.load(run["ckpt"], weights_only=True)
    AtomicCheckpointIO().save_checkpoint(checkpoint, tmp_path / "atomic.ckpt")
    assert sniff(tmp_path / "atomic.ckpt") == "torch-zip"
    assert FineTuner.from_checkpoint(tmp_path / "atomic.ckpt").class_names == ["cat", "dog"]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_a_proc_file_is_named_as_not_a_regular_file() -> None:
    """Red team (a10): /proc files stat as 0 bytes but have content; they were called empty."""
    with pytest.raises(UnreadableFileError) as err:
        load_torch_file("/proc/self/status", what="an ftlight checkpoint")
    message = str(err.value)
    assert "/proc/self/status is not a regular file" in message, message
    assert "empty" not in message


def test_atomic_temporary_names_keep_the_suffix(tmp_path: Path) -> None:
    """torch.export.save warns unless a name ends in .pt2: the temporary name keeps it, is
    recognisable as a leftover, and a failure still keeps the previous file."""
    from ftlight.files import atomic_path

    target = tmp_path / "model.pt2"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.name.startswith(".model.pt2.tmp-") and tmp.suffix == ".pt2", tmp.name
        assert tmp.parent == tmp_path
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"previous" and sorted(tmp_path.iterdir()) == [target]
    with atomic_path(tmp_path / "folder") as tmp:
        assert tmp.name.startswith(".folder.tmp-")
        tmp.mkdir()


def test_a_pt2_export_gives_torch_export_a_pt2_name(run, tmp_path: Path, caplog) -> None:
    """torch.export.save/load log 'Expect archive file to be a file ending in .pt2' for the
    temporary name atomic_path gave them."""
    from ftlight.cli.export import export

    with caplog.at_level(logging.WARNING):
        result = export(run["ckpt"], tmp_path / "out", formats=["pt2"])
    assert result["max_abs_diff"]["pt2"] <= 1e-5
    said = [r.getMessage() for r in caplog.records if ".pt2" in r.getMessage()]
    assert not said, said
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.json", "model.pt2"]


def test_trust_pickle_is_the_explicit_opt_in(run, tmp_path: Path) -> None:
    """A trusted checkpoint holding a Python object besides tensors: refused, then loaded."""
    checkpoint = torch.load(run["ckpt"], weights_only=True)
    checkpoint["legacy_args"] = argparse.Namespace(lr=0.1)  # as old training scripts stored
    legacy = tmp_path / "legacy.ckpt"
    torch.save(checkpoint, legacy)
    with pytest.raises(UntrustedFileError, match=r"argparse\.Namespace"):
        FineTuner.from_checkpoint(legacy)
    model = FineTuner.from_checkpoint(legacy, trust_pickle=True)
    assert model.class_names == ["cat", "dog"]
    out = tmp_path / "p.csv"
    assert predict.main([str(legacy), str(run["images"]), "-o", str(out)]) == 1
    assert predict.main([str(legacy), str(run["images"]), "-o", str(out), "--trust-pickle"]) == 0
    assert out.is_file()


def test_own_checkpoints_load_with_weights_only_also_for_lightning_resume(tmp_path: Path) -> None:
    """NumPy class names and sizes in the hyper-parameters are stored as plain Python types."""
    x = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    y = np.repeat([0, 1], 4)
    names = np.array(["no", "yes"])
    dm = ImageDataModule.from_arrays(x, y, class_names=list(names), batch_size=4, val_split=0)
    model = FineTuner("resnet18", 2, None, image_size=np.int64(32), class_names=list(names))
    common = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    }
    trainer = L.Trainer(max_steps=1, **common)
    trainer.fit(model, dm)
    path = tmp_path / "np.ckpt"
    trainer.save_checkpoint(path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    assert FineTuner.from_checkpoint(path).class_names == ["no", "yes"]
    resumed = FineTuner("resnet18", 2, None, image_size=32, class_names=["no", "yes"])
    trainer = L.Trainer(max_steps=2, **common)
    trainer.fit(resumed, dm, ckpt_path=path, weights_only=True)
    assert trainer.global_step == 2


# ---- 4. no partial weights in silence ------------------------------------------------------
def test_weights_of_another_depth_are_an_error_listing_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(WeightsMismatchError) as err:
        ftlight.create_backbone("resnet34", weights=str(path))
    message = str(err.value)
    assert "missing from the file" in message and "layer1.2.conv1.weight" in message
    assert "of another shape" not in message  # same shapes where the names match
    assert "--model.weights_strict false" in message and "strict=False" in message
    partial = ftlight.create_backbone("resnet34", weights=str(path), weights_strict=False)
    assert "layer1.2.conv1.weight" in partial.weights_info.missing_keys
    model = FineTuner("resnet34", 2, str(path), weights_strict=False)
    assert model.hparams.weights_strict is False
    with pytest.raises(WeightsMismatchError):
        FineTuner("resnet34", 2, str(path))


def test_a_file_with_every_weight_and_more_is_said_to_hold_more(tmp_path: Path) -> None:
    """Red team: a superset file was said to hold "only part" of the model's weights."""
    state = dict(timm.create_model("resnet18").state_dict(), **{"extra.weight": torch.ones(3)})
    torch.save(state, tmp_path / "more.pth")
    with pytest.raises(WeightsMismatchError) as err:
        ftlight.create_backbone("resnet18", weights=str(tmp_path / "more.pth"))
    message = str(err.value)
    assert "holds all of this model's weights" in message and "and more" in message
    assert "extra.weight" in message and "only part" not in message


def test_a_renamed_or_reshaped_layer_is_an_error_but_a_replaced_classifier_is_not(
    tmp_path: Path,
) -> None:
    state = timm.create_model("resnet18", num_classes=5).state_dict()
    path = tmp_path / "five_classes.pth"
    torch.save(state, path)
    backbone = ftlight.create_backbone("resnet18", weights=str(path))  # classifier: replaced
    assert backbone.weights_info.dropped_keys == ["fc.weight", "fc.bias"]
    renamed = {k.replace("layer4.", "stage4."): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(WeightsMismatchError, match=r"in the file but not in the model.*stage4"):
        ftlight.create_backbone("resnet18", weights=str(tmp_path / "renamed.pth"))
    reshaped = dict(state, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    torch.save(reshaped, tmp_path / "reshaped.pth")
    with pytest.raises(WeightsMismatchError, match=r"conv1.weight \(64, 3, 3, 3\)"):
        ftlight.create_backbone("resnet18", weights=str(tmp_path / "reshaped.pth"))
    full = timm.create_model("resnet18")  # keeps its classifier: the file must provide it
    with pytest.raises(WeightsMismatchError, match=r"fc\.weight"):
        load_state_dict_file(full, path, classifier_optional=False)


def test_weights_strict_is_a_command_line_flag(capsys) -> None:
    from ftlight.cli.main import main

    with pytest.raises(SystemExit):
        main(["fit", "--model.backbone=resnet18", "--model.weights_strict=false", "--print_config"])
    assert "weights_strict: false" in capsys.readouterr().out


# ---- 6. unreadable files get one clear line ------------------------------------------------
def _torchscript(path: Path) -> None:
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))


def _keras_archive(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:  # what Keras 3 writes for model.save(".keras")
        archive.writestr("metadata.json", '{"keras_version": "3.15.1"}')
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n")


BAD_FILES = {
    "empty": (lambda p, ok: p.write_bytes(b""), "empty (0 bytes)"),
    "garbage": (
        lambda p, ok: p.write_bytes(np.random.default_rng(0).bytes(256)),
        "unrecognised binary data",
    ),
    "truncated": (
        lambda p, ok: p.write_bytes(ok.read_bytes()[: ok.stat().st_size // 2]),
        "truncated or damaged zip archive",
    ),
    "html": (lambda p, ok: p.write_text("<!DOCTYPE html><html>404</html>"), "an HTML page"),
    "lfs": (
        lambda p, ok: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\n"),
        "Git LFS pointer",
    ),
    "torchscript": (lambda p, ok: _torchscript(p), "TorchScript program"),
    "keras": (lambda p, ok: _keras_archive(p), "Keras 3 .keras archive"),
    "hdf5": (lambda p, ok: p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100)), "HDF5 file"),
    "pickle": (
        lambda p, ok: p.write_bytes(__import__("pickle").dumps({"a": 1}, protocol=4)),
        "plain Python pickle",
    ),
    "entry_outside": (lambda p, ok: _entry_outside_the_archive(p, ok), "crafted or damaged zip"),
}


def _entry_outside_the_archive(path: Path, good: Path) -> None:
    """A real checkpoint plus one zip entry outside its folder (red team: torch then raised
    ``RuntimeError: [enforce fail at inline_container.cc]`` with a traceback)."""
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("elsewhere/x", b"hello")


@pytest.mark.parametrize("suffix", [".ckpt", ".PTH", ".safetensors"])
@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_bad_file_is_named_with_what_it_is(run, tmp_path: Path, kind: str, suffix: str) -> None:
    make, description = BAD_FILES[kind]
    path = tmp_path / f"bad_{kind}{suffix}"
    make(path, run["ckpt"])
    loaders = [lambda: ftlight.create_backbone("resnet18", weights=str(path))]
    if suffix == ".ckpt":
        loaders.append(lambda: FineTuner.from_checkpoint(path))
    for load in loaders:
        with pytest.raises(UnreadableFileError) as err:
            load()
        message = str(err.value)
        assert str(path) in message and description in message
        assert "invalid load key" not in message and "inline_container" not in message


def test_a_truncated_safetensors_file_is_named(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UnreadableFileError, match=r"w\.safetensors.*safetensors"):
        ftlight.create_backbone("resnet18", weights=str(path))


def test_upper_case_suffix_and_content_decide_how_a_weights_file_is_read(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}
    save_file(state, str(tmp_path / "W.PTH"))  # safetensors bytes behind a .PTH name
    loaded = ftlight.create_backbone("resnet18", weights=str(tmp_path / "W.PTH"))
    torch.testing.assert_close(loaded.model.conv1.weight, state["conv1.weight"])


def test_a_state_dict_given_as_a_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "weights.ckpt"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(UnreadableFileError, match=r"--model.weights PATH"):
        FineTuner.from_checkpoint(path)
    with pytest.raises(FileNotFoundError, match=r"no_such\.ckpt"):
        load_torch_file(tmp_path / "no_such.ckpt")


def test_cli_names_a_bad_checkpoint_in_one_line(run, tmp_path: Path) -> None:
    (tmp_path / "model.ckpt").write_bytes(b"")
    proc = ftlight_cli("export", "model.ckpt", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "ftlight: error: model.ckpt is empty (0 bytes), not an ftlight checkpoint "
        "(a .ckpt written by `ftlight fit` or Trainer.save_checkpoint)."
    )
    _entry_outside_the_archive(tmp_path / "crafted.ckpt", run["ckpt"])
    make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=1)
    proc = ftlight_cli("predict", "crafted.ckpt", "imgs", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("ftlight: error: crafted.ckpt is a") and (
        "crafted or damaged zip archive" in line
    ), line


# ---- 3. writes never lose the previous good file -------------------------------------------
FAIL_HALF_WAY = """
import resource, signal, sys
from ftlight.cli.export import export
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full disk: writes fail with EFBIG
checkpoint, out = sys.argv[1], sys.argv[2]
from ftlight import FineTuner
FineTuner.from_checkpoint(checkpoint)  # imports and reads done before the limit
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
export(checkpoint, out, formats=["pt2"])
"""


@pytest.mark.slow
def test_an_export_that_fails_half_way_keeps_the_previous_export(run, tmp_path: Path) -> None:
    from ftlight.cli.export import export, run_pt2

    out = tmp_path / "exp"
    first = export(run["ckpt"], out, formats=["pt2"])
    before = (out / "model.pt2").read_bytes()
    script = tmp_path / "fail.py"
    script.write_text(FAIL_HALF_WAY)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(script), str(run["ckpt"]), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    # torch's zip writer fails (an OSError) or aborts the process (SIGABRT) on the full disk.
    # The write really failed half-way: torch's zip writer reports (or aborts on) the short write.
    assert proc.returncode != 0 and "unexpected pos" in proc.stderr, proc.stderr[-2000:]
    assert (out / "model.pt2").read_bytes() == before
    assert run_pt2(out / "model.pt2", torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == ["model.json", "model.pt2"]
    assert first["max_abs_diff"]["pt2"] <= 1e-5


@pytest.mark.slow
def test_predict_output_refuses_a_checkpoint_warns_on_a_csv_and_writes_stdout(
    run, tmp_path: Path, capsys
) -> None:
    ckpt, images = run["ckpt"], str(run["images"])
    victim = tmp_path / "precious.ckpt"
    victim.write_bytes(ckpt.read_bytes())
    proc = ftlight_cli("predict", str(ckpt), images, "-o", str(victim), cwd=tmp_path)
    assert proc.returncode == 1 and "Refusing to overwrite" in proc.stderr
    assert victim.read_bytes() == ckpt.read_bytes()

    proc = ftlight_cli("predict", str(ckpt), images, "-o", "-", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == 8 and rows[0]["pred_1"] in ("cat", "dog")
    assert "accuracy on 8 labelled images" in proc.stderr

    out = tmp_path / "p.csv"
    assert predict.main([str(ckpt), images, "-o", str(out)]) == 0
    assert predict.main([str(ckpt), images, "-o", str(out), "-k", "1"]) == 0
    assert "replacing the previous predictions" in capsys.readouterr().err
    assert "pred_2" not in out.read_text()


def test_predict_strict_refuses_before_writing_and_k0_is_refused(run, tmp_path: Path) -> None:
    other = make_image_folder(tmp_path / "other", classes=("cat", "bird"), per_class=2, size=32)
    out = tmp_path / "p.csv"
    assert predict.main([str(run["ckpt"]), str(other), "-o", str(out), "--strict"]) == 3
    assert not out.exists()
    with pytest.raises(SystemExit) as exc:
        predict.main([str(run["ckpt"]), str(other), "-k", "0"])
    assert exc.value.code == 2


def test_predict_skip_corrupt(run, tmp_path: Path, capsys) -> None:
    folder = make_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=2, size=32)
    (folder / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "p.csv"
    assert predict.main([str(run["ckpt"]), str(folder), "-o", str(out)]) == 1
    assert "broken.png" in capsys.readouterr().err and not out.exists()
    assert predict.main([str(run["ckpt"]), str(folder), "-o", str(out), "--skip-corrupt"]) == 0
    assert "skipped 1 unreadable image" in capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and not any("broken" in r["path"] for r in rows)


@pytest.mark.slow
def test_demo_data_folder_is_never_a_mix_of_two_seeds(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_digits_folder(root, seed=0, size=8)
    first = {p.name: p.parts[-3] for p in root.rglob("*.png")}
    prepare_digits_folder(root, seed=1, size=8)
    second = {p.name: p.parts[-3] for p in root.rglob("*.png")}
    assert len(second) == len(list(root.rglob("*.png"))) == 1797  # each digit in one split
    assert second != first  # another seed, other splits, nothing left of the first
    assert not [p for p in tmp_path.iterdir() if p.name != "data"]  # no temporary folders
    mtime = (root / DIGITS_MARKER).stat().st_mtime_ns
    prepare_digits_folder(root, seed=1, size=8)  # same seed: reused as it is
    assert (root / DIGITS_MARKER).stat().st_mtime_ns == mtime
    # `ftlight demo --out DIR` refusing (and leaving alone) a DIR/data it did not write:
    # the "demo" case of tests/test_cli_errors.py (same command, same checks).


# ---- issue 10: no network means one quick, clear answer ------------------------------------
HUB_CODE = """
import ftlight, torch
try:
    backbone = ftlight.create_backbone("resnet18", weights="imagenet")
except ftlight.WeightsUnavailableError as err:
    print("ERROR", err)
else:
    print("LOADED", backbone.weights_info.file, float(backbone.model.conv1.weight.sum()))
"""


def _hub_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    # A hub that refuses connections: what a machine without network sees, in any CI.
    return {**env, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}


def test_no_network_is_said_at_the_first_failure_naming_hf_hub_offline(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", HUB_CODE],
        env=_hub_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.stdout.startswith("ERROR"), proc.stdout + proc.stderr[-2000:]
    assert "no network" in proc.stdout and "HF_HUB_OFFLINE=1" in proc.stdout
    assert "--model.weights PATH" in proc.stdout
    assert "Retrying" not in proc.stderr  # today: 5 retries per file, about a minute


def test_no_network_uses_the_cached_hub_file_at_once(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    hub_id = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    repo = tmp_path / "hf" / "hub" / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    state = timm.create_model("resnet18").state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    proc = subprocess.run(
        [sys.executable, "-c", HUB_CODE],
        env=_hub_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.stdout.startswith("LOADED"), proc.stdout + proc.stderr[-2000:]
    assert "model.safetensors" in proc.stdout and "Retrying" not in proc.stderr
    assert float(proc.stdout.split()[-1]) == pytest.approx(float(state["conv1.weight"].sum()))


def _rewrite_zip(good: Path, path: Path, *, extra: tuple[str, bytes] | None = None, **kw) -> None:
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w", **kw) as dst:
        if extra is not None:
            dst.writestr(f"{src.namelist()[0].split('/')[0]}/{extra[0]}", extra[1])
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))


def test_the_scanned_pickle_is_the_one_torch_loads_and_zips_never_inflate(run, tmp_path) -> None:
    """Red team: a harmless ``adata.pkl`` placed first hid the real ``data.pkl`` from the
    scan; a compressed ``data.pkl`` inflated 1000:1 (twice) in memory."""
    decoy = tmp_path / "decoy.ckpt"
    _rewrite_zip(run["ckpt"], decoy, extra=("adata.pkl", pickle.dumps({"a": 1}, protocol=2)))
    compressed = tmp_path / "compressed.ckpt"
    _rewrite_zip(run["ckpt"], compressed, compression=zipfile.ZIP_DEFLATED)
    for path, says in ((decoy, "adata.pkl"), (compressed, "compressed: [")):
        with pytest.raises(UnreadableFileError, match="crafted or damaged zip archive") as err:
            FineTuner.from_checkpoint(path)
        assert says in str(err.value) and str(path) in str(err.value)
    folder = tmp_path / "folder.ckpt"
    folder.mkdir()
    with pytest.raises(UnreadableFileError, match=r"folder\.ckpt is a folder"):
        FineTuner.from_checkpoint(folder)


def test_checkpoint_hyperparameters_cannot_ask_for_a_model_its_tensors_do_not_fill(
    run, tmp_path: Path
) -> None:
    """Red team: ``hidden=[16000, 16000]`` in a 1.3 KB file allocated 1.8 GB before failing
    with a multi-thousand-character traceback; ``weights`` in the file was followed."""
    checkpoint = torch.load(run["ckpt"], weights_only=True)
    checkpoint["hyper_parameters"]["hidden"] = [16000, 16000]
    checkpoint["hyper_parameters"]["weights"] = str(tmp_path / "elsewhere.pt")
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)
    with pytest.raises(UnreadableFileError) as err:
        FineTuner.from_checkpoint(crafted)
    message = str(err.value)
    assert "do not fit the model its hyperparameters describe" in message
    assert "missing" in message and "\n" not in message and len(message) < 1000
    checkpoint["hyper_parameters"]["hidden"] = torch.load(run["ckpt"], weights_only=True)[
        "hyper_parameters"
    ]["hidden"]
    torch.save(checkpoint, crafted)  # only the weights path changed: never followed
    assert FineTuner.from_checkpoint(crafted).class_names == ["cat", "dog"]
