"""VGG16 (``keras.applications.vgg16``) on timm's ``vgg16``; see :mod:`compat.applications._vgg`."""

from __future__ import annotations

import functools

from compat.applications import _common
from compat.applications._vgg import build_vgg
from compat.applications.imagenet_utils import convention
from compat.applications.imagenet_utils import decode_predictions as decode_predictions

VGG16 = _common.keras_application(
    functools.partial(build_vgg, "vgg16", (2, 2, 3, 3, 3)), "VGG16", "vgg16", "vgg16"
)
preprocess_input = convention("caffe", __name__)
