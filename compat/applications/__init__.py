"""``keras.applications`` with Keras's layer names and order, built on the ftlight engine's
timm modules and weights (see each module for differences). Models take Keras's
``preprocess_input`` convention; the map to the timm weights' normalisation is inside."""

from compat.applications import (
    convnext,
    densenet,
    efficientnet,
    efficientnet_v2,
    imagenet_utils,
    inception_resnet_v2,
    inception_v3,
    mobilenet,
    mobilenet_v2,
    mobilenet_v3,
    resnet,
    resnet50,
    resnet_v2,
    vgg16,
    vgg19,
    xception,
)
from compat.applications.convnext import (
    ConvNeXtBase,
    ConvNeXtLarge,
    ConvNeXtSmall,
    ConvNeXtTiny,
    ConvNeXtXLarge,
)
from compat.applications.densenet import DenseNet121, DenseNet169, DenseNet201
from compat.applications.efficientnet import (
    EfficientNetB0,
    EfficientNetB1,
    EfficientNetB2,
    EfficientNetB3,
    EfficientNetB4,
    EfficientNetB5,
    EfficientNetB6,
    EfficientNetB7,
)
from compat.applications.efficientnet_v2 import (
    EfficientNetV2B0,
    EfficientNetV2B1,
    EfficientNetV2B2,
    EfficientNetV2B3,
    EfficientNetV2L,
    EfficientNetV2M,
    EfficientNetV2S,
)
from compat.applications.inception_resnet_v2 import InceptionResNetV2
from compat.applications.inception_v3 import InceptionV3
from compat.applications.mobilenet import MobileNet
from compat.applications.mobilenet_v2 import MobileNetV2
from compat.applications.mobilenet_v3 import MobileNetV3Large, MobileNetV3Small
from compat.applications.resnet import ResNet50, ResNet101, ResNet152
from compat.applications.resnet_v2 import ResNet50V2, ResNet101V2, ResNet152V2
from compat.applications.vgg16 import VGG16
from compat.applications.vgg19 import VGG19
from compat.applications.xception import Xception

__all__ = [
    "VGG16",
    "VGG19",
    "ConvNeXtBase",
    "ConvNeXtLarge",
    "ConvNeXtSmall",
    "ConvNeXtTiny",
    "ConvNeXtXLarge",
    "DenseNet121",
    "DenseNet169",
    "DenseNet201",
    "EfficientNetB0",
    "EfficientNetB1",
    "EfficientNetB2",
    "EfficientNetB3",
    "EfficientNetB4",
    "EfficientNetB5",
    "EfficientNetB6",
    "EfficientNetB7",
    "EfficientNetV2B0",
    "EfficientNetV2B1",
    "EfficientNetV2B2",
    "EfficientNetV2B3",
    "EfficientNetV2L",
    "EfficientNetV2M",
    "EfficientNetV2S",
    "InceptionResNetV2",
    "InceptionV3",
    "MobileNet",
    "MobileNetV2",
    "MobileNetV3Large",
    "MobileNetV3Small",
    "ResNet50",
    "ResNet50V2",
    "ResNet101",
    "ResNet101V2",
    "ResNet152",
    "ResNet152V2",
    "Xception",
    "convnext",
    "densenet",
    "efficientnet",
    "efficientnet_v2",
    "imagenet_utils",
    "inception_resnet_v2",
    "inception_v3",
    "mobilenet",
    "mobilenet_v2",
    "mobilenet_v3",
    "resnet",
    "resnet50",
    "resnet_v2",
    "vgg16",
    "vgg19",
    "xception",
]

# weights=<a file written by Keras>: Keras's own architecture (see _keras_weights)
import sys

from compat.applications import _keras_weights

_keras_weights.install(
    sys.modules[__name__],
    [module for name, module in list(globals().items()) if name in __all__ and name.islower()],
    [name for name in __all__ if name[0].isupper()],
)
cached_weights = _keras_weights.cached_weights  # compat's: the file Keras's download cached
