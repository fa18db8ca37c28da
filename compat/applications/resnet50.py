"""``keras.applications.resnet50``: ResNet50, see :mod:`compat.applications.resnet`."""

from compat.applications.resnet import ResNet50, decode_predictions, preprocess_input

__all__ = ["ResNet50", "decode_predictions", "preprocess_input"]
