"""VGG19 (``keras.applications.vgg19``) on timm's ``vgg19``; see :mod:`compat.applications._vgg`."""

from __future__ import annotations

import functools

from compat.applications import _common
from compat.applications._vgg import build_vgg
from compat.applications.imagenet_utils import convention
from compat.applications.imagenet_utils import decode_predictions as decode_predictions

VGG19 = _common.keras_application(
    functools.partial(build_vgg, "vgg19", (2, 2, 4, 4, 4)), "VGG19", "vgg19", "vgg19"
)
preprocess_input = convention("caffe", __name__)
