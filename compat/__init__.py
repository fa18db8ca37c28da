"""compat: the Keras 3 API on the ftlight engine (``import compat as keras``).

Layers are torch modules (NCHW inside, NHWC NumPy at the boundary); ``fit``/``evaluate``/
``predict`` run on the Lightning ``Trainer``. Unsupported Keras features raise
``NotImplementedError`` naming them.
"""

from compat import (
    activations,
    applications,
    backend,
    callbacks,
    distribution,
    keras_files,  # noqa: F401  (registers Keras's file formats: keras_format)
    layers,
    losses,
    metrics,
    mixed_precision,
    models,
    ops,
    optimizers,
    preprocessing,
    regularizers,
    utils,
)
from compat.graph import KerasTensor
from compat.layers import Input, Layer
from compat.models import Model, Sequential, load_model

__version__ = "3.15.1-compat"

__all__ = [
    "Input",
    "KerasTensor",
    "Layer",
    "Model",
    "Sequential",
    "activations",
    "applications",
    "backend",
    "callbacks",
    "distribution",
    "layers",
    "load_model",
    "losses",
    "metrics",
    "mixed_precision",
    "models",
    "ops",
    "optimizers",
    "preprocessing",
    "regularizers",
    "utils",
]
