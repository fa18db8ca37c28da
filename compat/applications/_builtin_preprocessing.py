"""Builders of the applications whose preprocessing Keras builds into the model
(``include_preprocessing=True``: ConvNeXt, EfficientNetV2)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from compat.applications import _common


def keras_application(
    build: Callable[[_common.Request, bool], Any],
    keras_name: str,
    default_name: str,
    timm: str,
    *,
    after: str,
) -> Callable[..., Any]:
    """:func:`compat.applications._common.keras_application`'s builder with Keras's
    ``include_preprocessing=True`` argument placed after ``after`` (where Keras has it);
    ``build(request, include_preprocessing)`` makes the model."""
    base = _common.keras_application(build, keras_name, default_name, timm)
    signature = inspect.signature(base)
    params = list(signature.parameters.values())
    at = [p.name for p in params].index(after) + 1
    flag = inspect.Parameter(
        "include_preprocessing", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=True
    )
    signature = signature.replace(parameters=[*params[:at], flag, *params[at:]])

    def builder(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        return build(_common.Request.of(arguments), bool(arguments["include_preprocessing"]))

    builder.__signature__ = signature  # type: ignore[attr-defined]
    for attr in ("__name__", "__qualname__", "__module__", "__doc__"):
        setattr(builder, attr, getattr(base, attr))
    return builder
