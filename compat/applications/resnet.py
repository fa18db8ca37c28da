"""ResNet50/101/152 (``keras.applications.resnet``) on timm's ``resnet50/101/152`` modules.

Same layers (ResNet50: 177, 175 without the top; ResNet101: 347; ResNet152: 517), names and
order as Keras. Inputs follow Keras's ``caffe`` convention (BGR, ImageNet mean subtracted);
the map to the torch weights' normalisation is folded into ``conv1_pad``. Differences from Keras's
architecture, kept because they belong to the torch weights: convolutions have no bias
(Keras's do: ResNet50 has 25,610,152 parameters here, counting BN moving statistics as Keras
does, against Keras's 25,636,712; ResNet101/152 lack the same per-conv biases), BatchNorm epsilon is
1e-5 (Keras 1.001e-5), and the stride of each down-sampling block sits on the 3x3
convolution (``*_2_conv``, ResNet v1.5) rather than on the first 1x1 (``*_1_conv``), so the
``*_1_*`` layers of ``conv3_block1``/``conv4_block1``/``conv5_block1`` output the larger
spatial size. The stem's 7x7 convolution and max-pool padding are moved into Keras's
``conv1_pad``/``pool1_pad`` ZeroPadding2D layers (same result after the ReLU).
"""

from __future__ import annotations

from typing import Any

from compat import layers
from compat.applications import _common
from compat.applications.imagenet_utils import convention
from compat.applications.imagenet_utils import decode_predictions as decode_predictions
from compat.models import Model


def _block(x: Any, block: Any, name: str) -> Any:
    if block.downsample is not None:
        shortcut = layers.Conv2D.from_torch(
            block.downsample[0], name=f"{name}_0_conv", padding="valid"
        )(x)
        shortcut = layers.BatchNormalization.from_torch(block.downsample[1], name=f"{name}_0_bn")(
            shortcut
        )
    else:
        shortcut = x
    y = layers.Conv2D.from_torch(block.conv1, name=f"{name}_1_conv", padding="valid")(x)
    y = layers.BatchNormalization.from_torch(block.bn1, name=f"{name}_1_bn")(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.Conv2D.from_torch(block.conv2, name=f"{name}_2_conv", padding="same")(y)
    y = layers.BatchNormalization.from_torch(block.bn2, name=f"{name}_2_bn")(y)
    y = layers.Activation("relu", name=f"{name}_2_relu")(y)
    y = layers.Conv2D.from_torch(block.conv3, name=f"{name}_3_conv", padding="valid")(y)
    y = layers.BatchNormalization.from_torch(block.bn3, name=f"{name}_3_bn")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def build_resnet(depth: int, request: _common.Request) -> Model:
    with _common.keras_graph(request, f"resnet{depth}", 224, 32) as (tm, inputs):
        pad = layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")
        x = _common.map_input(pad, _common.input_map("caffe", tm))(inputs)
        tm.conv1.padding = (0, 0)
        x = layers.Conv2D.from_torch(tm.conv1, name="conv1_conv", padding="valid")(x)
        x = layers.BatchNormalization.from_torch(tm.bn1, name="conv1_bn")(x)
        x = layers.Activation("relu", name="conv1_relu")(x)
        x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
        for stage, stack in enumerate((tm.layer1, tm.layer2, tm.layer3, tm.layer4), start=2):
            for b, block in enumerate(stack, start=1):
                x = _block(x, block, f"conv{stage}_block{b}")
        return _common.keras_model(inputs, x, request, tm.fc)


ResNet50, ResNet101, ResNet152 = _common.keras_applications(
    build_resnet, (50, 101, 152), "ResNet{}", "resnet{}", "resnet{}"
)
preprocess_input = convention("caffe", __name__)
