"""``keras.applications``: VGG16, ResNet50, InceptionV3 with Keras's layer names and order,
built on the ftlight engine's timm modules and weights (see each module for differences)."""

from compat.applications import imagenet_utils, inception_v3, resnet50, vgg16
from compat.applications.inception_v3 import InceptionV3
from compat.applications.resnet50 import ResNet50
from compat.applications.vgg16 import VGG16

__all__ = [
    "VGG16",
    "InceptionV3",
    "ResNet50",
    "imagenet_utils",
    "inception_v3",
    "resnet50",
    "vgg16",
]
