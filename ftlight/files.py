"""Files: writes that never lose the last good version, loads that never run code.

The bottom layer of ftlight: every module that writes a file the user keeps (checkpoints,
exports, reports, generated data) goes through :func:`atomic_path` or :func:`atomic_write`;
every load of a file the user gives goes through :func:`load_torch_file` (never runs code) or
:func:`load_safetensors_file`, whose errors say what the file is.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success, move it over ``path``.

    Write a file there (it is fsynced before the rename) or make a folder there (a folder
    replaces ``path`` whole: never a mix of old and new files). On an exception (or a kill)
    ``path`` keeps its previous content; the temporary file is removed on exceptions (a kill
    can leave it, named ``.<name>.tmp-<pid><suffix>``: ``.model.pt2.tmp-42.pt2``, so that
    writers which check the suffix, such as ``torch.export.save``, see the real one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if tmp.is_dir():
            _replace_dir(tmp, path)
        else:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_dir(new: Path, path: Path) -> None:
    """Swap a finished folder in: ``path`` is always the old folder, absent, or the new one."""
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write text or bytes to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
    return Path(path)


# ---- reading files that others wrote: never run code, always say what a bad file is --------
TRUST_HINT = "trust_pickle=True (command line: --trust-pickle)"
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save's pre-zip format


class UnreadableFileError(ValueError):
    """A file to load is not what it should be; the message names the file and what it is."""


class UntrustedFileError(UnreadableFileError):
    """A file holds pickled Python objects that loading would have to run as code."""


def sniff(path: str | os.PathLike) -> str:
    """What a file is, from its bytes: ``torch-zip``, ``torch-legacy``, ``safetensors``, or a
    phrase saying what else it is (``"empty (0 bytes)"``, ``"an HDF5 file ..."``)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(64)
    if size == 0:
        if head:  # /proc and /sys files: stat says 0 bytes, reading gives content
            return "not a regular file (stat gives 0 bytes but it has content, like /proc files)"
        return "empty (0 bytes)"
    if head.startswith(b"PK\x03\x04"):
        return _sniff_zip(path)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 file (the format of Keras .h5 models and weights)"
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 8 + header_len <= size:
            return "safetensors"
        return f"a truncated safetensors file (header of {header_len} bytes, file of {size})"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a plain Python pickle (not written by torch.save)"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer (a small text file), not the file itself (run `git lfs pull`)"
    if b"\x00" in head:
        return f"unrecognised binary data (starts with {head[:8].hex(' ')})"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a failed download?)"
    try:
        first_line = head.decode("utf-8").splitlines()[0][:40]
    except (UnicodeDecodeError, IndexError):
        return f"unrecognised binary data (starts with {head[:8].hex(' ')})"
    return f"a text file (starts with {first_line!r})"


def _sniff_zip(path: Path) -> str:

    if not zipfile.is_zipfile(path):
        return "a truncated or damaged zip archive (cut short by an interrupted copy or save?)"
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    names = [info.filename for info in infos]
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "a TorchScript program (torch.jit.save; load it with torch.jit.load)"
    if any(n.endswith("data.pkl") for n in names):
        folder = names[0].split("/", 1)[0] + "/"
        outside = [n for n in names if not n.startswith(folder)]
        if outside:
            return (
                f"a crafted or damaged zip archive (torch.save puts every entry under one "
                f"folder; {len(outside)} lie outside {folder}: {outside[:3]})"
            )
        pickles = [n for n in names if n.endswith(".pkl")]
        if pickles != [f"{folder}data.pkl"]:
            return (
                f"a crafted or damaged zip archive (torch.save writes one {folder}data.pkl; "
                f"this one holds {pickles[:4]})"
            )
        packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
        if packed or len(set(names)) != len(names):
            return (
                "a crafted or damaged zip archive (torch.save stores each entry once, "
                f"uncompressed; compressed: {packed[:3]}, repeated names: "
                f"{len(names) - len(set(names))})"
            )
        return "torch-zip"
    if {"config.json", "metadata.json"} <= set(names):
        return "a Keras 3 .keras archive (written by Keras itself)"
    if any(n.endswith(".json") and "archive_format" in n for n in names) or any(
        "/models/" in n for n in names
    ):
        return "a torch.export program archive (.pt2; load it with torch.export.load)"
    return f"a zip archive that is not a PyTorch file (holds {names[:3]})"


def load_torch_file(
    path: str | os.PathLike,
    *,
    what: str = "a PyTorch file",
    trust_pickle: bool = False,
    allow: Any = None,
    opt_in: str = TRUST_HINT,
    mmap: bool = False,
    allow_legacy: bool = False,
) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and what it is.

    Args:
        what: what the caller expects (``"an ftlight checkpoint"``), for the messages.
        trust_pickle: unpickle anything (``weights_only=False``): only for trusted files.
        allow: ``name -> object or None``: Python classes and functions (named
            ``module.qualname`` in the file) that the caller trusts beyond torch's own
            allowlist (compat's layers, say); anything else is refused. A file may name
            these, and build classes the way pickle rebuilds a saved object (``__new__`` and
            ``__setstate__``), but never call them with arguments of its choosing.
        opt_in: how the caller's user says ``trust_pickle`` (named in the refusal).
        mmap: map the tensors' storage instead of reading it (large checkpoints).
        allow_legacy: the caller vouches for a file in torch's legacy (pre-zip) format, such
            as an installed package's own weights; it still loads with ``weights_only``.
            Otherwise a legacy file is refused unless ``trust_pickle``: torch's legacy loader
            allocates every storage at the size the file declares before anything checks it.

    Raises:
        FileNotFoundError, UnreadableFileError, UntrustedFileError.
    """
    import torch

    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, a device, a pipe (or links to them)
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise UnreadableFileError(f"{path} is {kind}, not {what}.")
    if not path.is_file():
        raise FileNotFoundError(
            f"{what[0].upper()}{what[1:]} was expected at {path}: no such file."
        )
    try:
        kind = sniff(path)
        if kind not in ("torch-zip", "torch-legacy"):
            raise UnreadableFileError(f"{path} is {kind}, not {what}.")
        if kind == "torch-legacy" and not (trust_pickle or allow_legacy):
            raise UntrustedFileError(
                f"Refusing to load {path}: it is in torch's legacy serialization format (not "
                "a zip; torch.save(..., _use_new_zipfile_serialization=False) or torch < 1.6), "
                "whose loader allocates the size each storage record declares before "
                "anything checks it against the file (a 49 KB file can ask for gigabytes). "
                f"If {path.name} comes from a source you trust, re-save it once in torch's "
                "default zip format (torch.save(torch.load(old), new), no other argument) or "
                f"pass {opt_in}."
            )
        allowed: list[Any] = []
        if not trust_pickle and kind == "torch-zip":
            refused = []
            for name in sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path)):
                obj = allow(name) if allow is not None else None
                if obj is None:
                    refused.append(name)
                else:
                    allowed.append((obj, name))
            if refused:
                raise _untrusted(path, what, refused, opt_in)
            calls = _called_globals(path)
            called = {n for n in calls if n.startswith(_NEW_WITH_ARGUMENTS)}
            called |= calls & {name for _, name in allowed}
            if called:
                raise _untrusted(path, what, sorted(called), opt_in, called=True)
    except UnreadableFileError:
        raise
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        LookupError,
        StopIteration,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ) as err:
        raise UnreadableFileError(
            f"{path} could not be read as {what}: it looks crafted, truncated or damaged "
            f"({type(err).__name__}: {_first_line(err)})."
        ) from None
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=mmap)
    except pickle.UnpicklingError as err:  # the legacy format's refusals land here (allow_legacy)
        names = re.findall(r"GLOBAL ([\w.]+)", str(err))
        if not trust_pickle and names:
            raise _untrusted(path, what, names[:3], opt_in) from None
        raise UnreadableFileError(
            f"{path} could not be read as {what}: damaged or not written by torch.save "
            f"({_first_line(err)})."
        ) from None
    except Exception as err:  # anything unpickling raises comes from the file's bytes
        raise UnreadableFileError(
            f"{path} could not be read as {what}: it looks crafted, truncated or damaged "
            f"({type(err).__name__}: {_first_line(err)})."
        ) from None


def load_safetensors_file(path: str | os.PathLike, *, what: str = "a weights file") -> Any:
    """A safetensors file's tensors (never runs code), with errors naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UnreadableFileError(
            f"{path} could not be read as {what}: a damaged or truncated safetensors file "
            f"({_first_line(err)})."
        ) from None


def _untrusted(
    path: Path, what: str, names: list[str], opt_in: str, called: bool = False
) -> UntrustedFileError:
    holds = (
        f"it calls {', '.join(names[:5])} with arguments of its own, which a saved object "
        "never needs"
        if called
        else f"besides tensors it holds pickled Python objects ({', '.join(names[:5])}) that "
        "loading would have to run as code"
    )
    return UntrustedFileError(
        f"Refusing to load {path}: {holds} (loading never runs code from a file). If "
        f"{path.name} comes from a source you trust, pass {opt_in}."
    )


class _Global(str):
    """A ``module.name`` that a pickle pushed with GLOBAL / STACK_GLOBAL."""


_NO_ARGUMENTS = object()  # an EMPTY_TUPLE on the symbolic stack
_NEW_WITH_ARGUMENTS = "__new__ of "  # marks a class whose __new__ gets the file's arguments


def _called_globals(path: Path) -> set[str]:
    """Names in a torch zip's pickle that are called with pickled arguments (REDUCE, OBJ,
    INST, NEWOBJ_EX, and NEWOBJ with a non-empty tuple), found by running pickle's stack
    machine symbolically (nothing is built). Rebuilding a saved object never calls its class
    so: it is ``cls.__new__(cls)`` with no arguments (NEWOBJ on an empty tuple), then BUILD
    (``__setstate__``); ``__new__`` with arguments is a call (``ndarray.__new__(cls, shape)``
    allocates the file's shape)."""
    import pickletools

    with zipfile.ZipFile(path) as archive:  # the one record torch reads (see _sniff_zip)
        folder = archive.namelist()[0].split("/", 1)[0]
        data = archive.read(f"{folder}/data.pkl")
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[Any, Any] = {}
    called: set[str] = set()
    for op, arg, _ in pickletools.genops(data):
        kind = op.name
        if kind == "MARK":
            marks.append(len(stack))
            continue
        if kind == "GLOBAL":
            stack.append(_Global(str(arg).replace(" ", ".")))
            continue
        if kind == "INST":
            called.add(str(arg).replace(" ", "."))
        if kind in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            stack.append(str(arg))
            continue
        if kind == "STACK_GLOBAL":
            attr, module = stack.pop(), stack.pop()
            stack.append(_Global(f"{module}.{attr}"))
            continue
        if kind in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
            continue
        if kind == "MEMOIZE":
            memo[len(memo)] = stack[-1]
            continue
        if kind in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg))
            continue
        if kind == "EMPTY_TUPLE":
            stack.append(_NO_ARGUMENTS)
            continue
        if kind == "REDUCE" and isinstance(stack[-2], _Global):
            called.add(stack[-2])
        if kind == "NEWOBJ" and isinstance(stack[-2], _Global) and stack[-1] is not _NO_ARGUMENTS:
            # cls.__new__(cls, *args): ndarray/Tensor take a shape; no saved object needs it
            called.add(_Global(_NEW_WITH_ARGUMENTS + stack[-2]))
        if kind == "NEWOBJ_EX" and isinstance(stack[-3], _Global):
            called.add(stack[-3])
        before = op.stack_before
        if pickletools.markobject in before:
            start = marks.pop()
            if kind == "OBJ" and start < len(stack) and isinstance(stack[start], _Global):
                called.add(stack[start])
            del stack[start:]
            below = before.index(pickletools.markobject)
        else:
            below = len(before)
        del stack[len(stack) - below :]
        stack.extend([None] * len(op.stack_after))
    return called


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
