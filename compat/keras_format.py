"""The seam between compat's models and Keras's own file formats.

:mod:`compat.keras_files` reads Keras files into compat models, so it imports
:mod:`compat.models`; the models, in turn, must write and read those files (``save``,
``get_config``, ``load_model``). Rather than import each other, the models call the
functions registered here, and :mod:`compat.keras_files` registers them when it is imported
(``import compat`` does so). This module imports nothing of compat.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Keras's float32 dtype policy, as every layer's get_config() holds it.
DTYPE_POLICY = {
    "module": "keras",
    "class_name": "DTypePolicy",
    "config": {"name": "float32"},
    "registered_name": None,
}

_HOOKS: dict[str, Callable[..., Any]] = {}
NAMES = (
    "functional_config",
    "sequential_config",
    "build",
    "save_keras",
    "save_legacy_h5",
    "save_weights_h5",
    "load_keras",
    "load_legacy_h5",
    "load_weights",
)


class NotWritableError(ValueError):
    """A compat model that Keras's file formats cannot describe (a layer, initializer or
    activation without a Keras config in compat)."""


def register(**hooks: Callable[..., Any]) -> None:
    """Called once by :mod:`compat.keras_files`: the functions named in ``NAMES``."""
    unknown = sorted(set(hooks) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown Keras-format hooks {unknown}; expected names from {NAMES}")
    _HOOKS.update(hooks)


def hook(name: str) -> Callable[..., Any]:
    """The registered function ``name`` (an error naming the missing module otherwise)."""
    try:
        return _HOOKS[name]
    except KeyError:
        raise RuntimeError(
            f"Keras's file formats are not loaded (no {name!r}): compat.keras_files registers "
            "them when `import compat` runs; import compat before compat's submodules."
        ) from None
