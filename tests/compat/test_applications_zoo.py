"""Every application against a real Keras model built here with ``weights=None``: layer names,
classes, count, output shapes, parameter counts (documented deviations only), Keras's
initialisation, headless models of any size, and Keras's ``preprocess_input`` feeding timm
weights exactly as timm's own normalisation does."""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pytest

slow = pytest.mark.slow

# (Keras builder, keras.applications module, timm architecture, small input size). Deeper
# variants of a family (VGG19, ResNet101/152, DenseNet169/201, ...) share its code path and
# are checked against recorded Keras values below: building them costs seconds each.
APPS = [
    pytest.param("MobileNetV2", "mobilenet_v2", "mobilenetv2_100", 32, id="MobileNetV2"),
    pytest.param("VGG16", "vgg16", "vgg16", 32, id="VGG16"),
    pytest.param("ResNet50", "resnet50", "resnet50", 32, id="ResNet50"),
    pytest.param("InceptionV3", "inception_v3", "inception_v3", 75, id="InceptionV3"),
    pytest.param("EfficientNetB0", "efficientnet", "tf_efficientnet_b0", 32, id="EfficientNetB0"),
    pytest.param("Xception", "xception", "legacy_xception", 71, id="Xception"),
    pytest.param("DenseNet121", "densenet", "densenet121", 32, id="DenseNet121"),
    pytest.param("MobileNet", "mobilenet", "mobilenetv1_100", 32, id="MobileNet"),
    pytest.param("ResNet50V2", "resnet_v2", "resnetv2_50", 32, id="ResNet50V2"),
    pytest.param(
        "MobileNetV3Small", "mobilenet_v3", "tf_mobilenetv3_small_100", 32, id="MobileNetV3Small"
    ),
    pytest.param("ConvNeXtTiny", "convnext", "convnext_tiny.fb_in1k", 32, id="ConvNeXtTiny"),
    pytest.param(
        "EfficientNetV2B0",
        "efficientnet_v2",
        "tf_efficientnetv2_b0.in1k",
        33,
        id="EfficientNetV2B0",
    ),
    pytest.param(
        "InceptionResNetV2",
        "inception_resnet_v2",
        "inception_resnet_v2.tf_in1k",
        75,
        id="InceptionResNetV2",
    ),
]

# Applications whose headless end is not the feature map (Keras's ConvNeXt ends in the head's
# LayerNormalization, after the pooling): their preprocessing and pooling tests are their own.
HEAD_NORM = {"ConvNeXtTiny"}
FEATURE_MAP_APPS = [p for p in APPS if p.id not in HEAD_NORM]

# Keras 3.15.1's pooling layer (name, class) for each application of APPS, built with
# include_top=False, pooling=_pooling(fn) and an input_tensor in a fresh session (several
# applications leave the layer unnamed, so its name comes from the session's counter).
# Recorded: building a second Keras model per application cost ~80 s.
KERAS_POOLING = {
    "MobileNetV2": ("global_average_pooling2d", "GlobalAveragePooling2D"),
    "VGG16": ("global_average_pooling2d", "GlobalAveragePooling2D"),
    "VGG19": ("global_max_pooling2d", "GlobalMaxPooling2D"),
    "ResNet50": ("max_pool", "GlobalMaxPooling2D"),
    "ResNet101": ("avg_pool", "GlobalAveragePooling2D"),
    "ResNet152": ("avg_pool", "GlobalAveragePooling2D"),
    "InceptionV3": ("global_average_pooling2d", "GlobalAveragePooling2D"),
    "EfficientNetB0": ("avg_pool", "GlobalAveragePooling2D"),
    "Xception": ("global_average_pooling2d", "GlobalAveragePooling2D"),
    "DenseNet121": ("avg_pool", "GlobalAveragePooling2D"),
    "MobileNet": ("global_average_pooling2d", "GlobalAveragePooling2D"),
    "ResNet50V2": ("avg_pool", "GlobalAveragePooling2D"),
    "MobileNetV3Small": ("avg_pool", "GlobalAveragePooling2D"),
    "EfficientNetV2B0": ("avg_pool", "GlobalAveragePooling2D"),
    "InceptionResNetV2": ("global_average_pooling2d", "GlobalAveragePooling2D"),
}


def _pooling(fn: str) -> str:
    return "max" if fn in ("VGG19", "ResNet50") else "avg"


_KERAS: dict[str, object] = {}


def _keras_headless(fn: str):
    """Real Keras's headless application (any input size), built once per session in a fresh
    Keras session (auto-generated layer names depend on it)."""
    if fn not in _KERAS:
        import keras

        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        _KERAS[fn] = getattr(keras.applications, fn)(weights=None, include_top=False)
    return _KERAS[fn]


def _keras_layer_shapes(k_model, size: int) -> dict[str, list]:
    import keras

    probe = keras.Model(k_model.inputs, [la.output for la in k_model.layers[1:]])
    shapes = probe.compute_output_shape((None, size, size, 3))
    out = {k_model.layers[0].name: [None, size, size, 3]}
    for la, shape in zip(k_model.layers[1:], shapes, strict=True):
        out[la.name] = list(shape)
    return out


def _documented_param_deviation(fn: str, k_model) -> int:
    """compat minus Keras parameters, as each module's docstring documents."""
    if fn.startswith("ResNet"):  # torch ResNets' convolutions have no bias
        return -sum(
            la.filters for la in k_model.layers if type(la).__name__ == "Conv2D" and la.use_bias
        )
    if fn in ("InceptionV3", "InceptionResNetV2"):  # torch BatchNorm has a scale (Keras: none)
        return sum(
            la.gamma is None and la.moving_mean.shape[0]
            for la in k_model.layers
            if type(la).__name__ == "BatchNormalization"
        )
    return 0


def _documented_shape_mismatches(fn: str) -> set[str]:
    if fn in RESNET_V2_BLOCKS:  # stride in the first block of the next stage, not the last
        return _resnet_v2_shape_mismatches(RESNET_V2_BLOCKS[fn])
    if fn.startswith("ResNet"):  # stride on the 3x3 conv (v1.5)
        return {f"conv{s}_block1_1_{k}" for s in (3, 4, 5) for k in ("conv", "bn", "relu")}
    return set()


RESNET_V2_BLOCKS = {
    "ResNet50V2": (3, 4, 6, 3),
    "ResNet101V2": (3, 4, 23, 3),
    "ResNet152V2": (3, 8, 36, 3),
}


def _resnet_v2_shape_mismatches(blocks: tuple[int, ...]) -> set[str]:
    """The layers between Keras's stride (last block of conv2-4) and timm's (first block of
    conv3-5), as compat.applications.resnet_v2 documents."""
    out = set()
    for i, (stage, n) in enumerate(zip((2, 3, 4), blocks, strict=False)):
        last = f"conv{stage}_block{n}"
        out |= {f"{last}_{k}" for k in ("2_conv", "2_bn", "2_relu", "3_conv", "out")}
        out.add("max_pooling2d" + (f"_{i}" if i else ""))
        first = f"conv{stage + 1}_block1"
        out |= {f"{first}_{k}" for k in ("preact_bn", "preact_relu", "1_conv", "1_bn")}
        out |= {f"{first}_{k}" for k in ("1_relu", "2_pad")}
    return out


def _variance_scaling(init, shape: tuple) -> tuple[float, float]:
    """(largest magnitude, standard deviation) of what a Keras VarianceScaling initializer
    (glorot-uniform is one) draws for a kernel of ``shape``."""
    receptive = float(np.prod(shape[:-2]))
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[init.mode]
    scale = init.scale / max(1.0, n)
    # both draw with standard deviation sqrt(scale): uniform on +-sqrt(3 scale); a normal of
    # sqrt(scale) / 0.8796 cut at two of its deviations
    if init.distribution == "uniform":
        return float(np.sqrt(3.0 * scale)) * (1 + 1e-6), float(np.sqrt(scale))
    assert init.distribution == "truncated_normal", init.distribution
    return 2 * float(np.sqrt(scale)) / 0.87962566103423978 * (1 + 1e-6), float(np.sqrt(scale))


def _assert_keras_init(layers, kernel_inits) -> None:
    """Keras's ``weights=None`` initialisation, layer by layer: BatchNorms at identity,
    biases zero, every kernel within its Keras initializer's bound and (when large) at its
    standard deviation. ``kernel_inits(layer)`` gives the Keras initializers of a
    convolution's kernels."""
    checked = 0
    for layer in layers:
        kind = type(layer).__name__
        ours = layer.get_weights()
        if kind == "BatchNormalization":
            gamma, beta, mean, var = ours
            np.testing.assert_array_equal(gamma, 1.0)
            np.testing.assert_array_equal(beta, 0.0)
            np.testing.assert_array_equal(mean, 0.0)
            np.testing.assert_array_equal(var, 1.0)
        elif kind in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D"):
            inits = kernel_inits(layer)
            for kernel, init in zip(ours[: len(inits)], inits, strict=True):
                limit, std = _variance_scaling(init, kernel.shape)
                assert np.abs(kernel).max() <= limit, layer.name
                if kernel.size >= 2000:
                    assert abs(kernel.std() / std - 1) < 0.1, layer.name
            for bias in ours[len(inits) :]:
                np.testing.assert_array_equal(bias, 0.0)
            checked += 1
    assert checked > 0


def _keras_kernel_inits(k_layer) -> tuple:
    if type(k_layer).__name__ == "SeparableConv2D":
        return (k_layer.depthwise_initializer, k_layer.pointwise_initializer)
    return (getattr(k_layer, "depthwise_initializer", None) or k_layer.kernel_initializer,)


@pytest.mark.parametrize(("fn", "module", "timm_name", "size"), APPS)
def test_structure_and_init_match_keras(ck, fn, module, timm_name, size):
    k_model = _keras_headless(fn)
    model = getattr(ck.applications, fn)(
        weights=None, include_top=False, input_shape=(size, size, 3)
    )
    assert len(model.layers) == len(k_model.layers)
    assert [la.name for la in model.layers] == [la.name for la in k_model.layers]
    assert [type(la).__name__ for la in model.layers] == [
        type(la).__name__ for la in k_model.layers
    ]
    k_shapes = _keras_layer_shapes(k_model, size)
    mismatched = {la.name for la in model.layers if list(la.output.shape) != k_shapes[la.name]}
    assert mismatched == _documented_shape_mismatches(fn)
    deviation = _documented_param_deviation(fn, k_model)
    assert model.count_params() == k_model.count_params() + deviation

    k_layers = {la.name: la for la in k_model.layers}
    for layer in model.layers:  # Keras's kernel layouts
        if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D"):
            assert layer.get_weights()[0].shape == tuple(k_layers[layer.name].kernel.shape)
    _assert_keras_init(model.layers, lambda layer: _keras_kernel_inits(k_layers[layer.name]))


def _shape_digest(shapes: dict[str, list], skip: set[str]) -> str:
    text = "\n".join(
        f"{name}:" + ",".join("?" if d is None else str(int(d)) for d in shape)
        for name, shape in shapes.items()
        if name not in skip
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Keras 3.15.1's headless applications (weights=None, include_top=False) whose family's code
# is checked against live Keras and timm in APPS, as (layer count, parameter count,
# _layers_digest, _shape_digest of the output shapes at 32x32 but for the documented v1.5
# stride layers), with the module whose preprocess_input theirs equals.
RECORDED_KERAS = {
    "ResNet101": (345, 42658176, "17031faa594384ec", "f50fb027eff0f4c8", "resnet", "resnet50"),
    "ResNet152": (515, 58370944, "7bced78a00f4d834", "32cb0e995daa174d", "resnet", "resnet50"),
    "VGG19": (22, 20024384, "155a5018eb0752ae", "01c24185cf4d9856", "vgg19", "vgg16"),
}


@pytest.mark.parametrize("fn", list(RECORDED_KERAS))
def test_deeper_variants_match_recorded_keras(ck, fn):
    """ResNet101/152 and VGG19 share ResNet50's and VGG16's code (checked against live Keras
    and timm above): their layers, shapes, parameters, Keras initialisation, input_tensor
    and pooling against recorded Keras values, and their family's ``preprocess_input``."""
    import keras

    count, params, digest, shape_digest, module, same_as = RECORDED_KERAS[fn]
    tensor = ck.Input(shape=(32, 32, 3))
    pooled = getattr(ck.applications, fn)(
        weights=None, include_top=False, input_tensor=tensor, pooling=_pooling(fn)
    )
    assert pooled.inputs[0] is tensor
    assert (pooled.layers[-1].name, type(pooled.layers[-1]).__name__) == KERAS_POOLING[fn]
    layers = pooled.layers[:-1]  # the headless application
    assert (len(layers), _layers_digest(layers)) == (count, digest)
    assert tuple(pooled.output.shape) == (None, layers[-1].output.shape[-1])
    shapes = {la.name: list(la.output.shape) for la in layers}
    documented = _documented_shape_mismatches(fn)
    assert _shape_digest(shapes, documented) == shape_digest
    for name in documented:  # ResNets: Keras's stride is one conv earlier, so these have
        stage = int(name[4])  # twice Keras's 4, 2 and 1
        assert shapes[name][1:3] == [32 // 2 ** (stage - 1)] * 2, name
    convs = [la for la in layers if type(la).__name__ == "Conv2D"]
    if fn.startswith("ResNet"):  # documented: no conv biases (Keras's convolutions have them)
        params -= sum(la.filters for la in convs)
    assert pooled.count_params() == params
    glorot = keras.initializers.GlorotUniform()  # both families keep Conv2D's default
    _assert_keras_init(layers, lambda layer: (glorot,))
    x = np.random.default_rng(0).uniform(0, 255, size=(1, 4, 4, 3)).astype("float32")
    np.testing.assert_array_equal(
        getattr(ck.applications, module).preprocess_input(x.copy()),
        getattr(ck.applications, same_as).preprocess_input(x.copy()),
    )


_TIMM: dict[str, tuple] = {}


def _timm_model(timm_name: str, folder):
    """A timm model with non-trivial BatchNorms (timm zero-inits some gammas) and its headless
    weights file (no fc/head/pre_logits), built once per session."""
    if timm_name not in _TIMM:
        import timm
        import torch

        torch.manual_seed(0)
        # VGG's 7x7 pre_logits convolution (103M parameters, seconds to draw) is left out of
        # the headless file anyway: a one-channel one
        kwargs = {"mlp_ratio": 1 / 4096} if timm_name.startswith("vgg") else {}
        tm = timm.create_model(timm_name, pretrained=False, **kwargs).eval()
        with torch.no_grad():
            for m in tm.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
        path = folder / f"{timm_name}.pth"
        top = ("fc.", "head.", "pre_logits.")
        torch.save({k: v for k, v in tm.state_dict().items() if not k.startswith(top)}, path)
        _TIMM[timm_name] = tm, path
    return _TIMM[timm_name]


def _timm_input(tm, img: np.ndarray):
    """``img`` (0-255, NHWC) under timm's own normalisation, as an NCHW tensor."""
    import timm
    import torch

    cfg = timm.data.resolve_data_config({}, model=tm)
    mean, std = np.array(cfg["mean"], "float32"), np.array(cfg["std"], "float32")
    return torch.from_numpy((img / 255.0 - mean) / std).permute(0, 3, 1, 2)


@pytest.mark.parametrize(("fn", "module", "timm_name", "size"), FEATURE_MAP_APPS)
def test_keras_preprocessing_gives_timm_predictions(
    ck, tmp_path_factory, fn, module, timm_name, size
):
    """``preprocess_input`` (Keras's convention) into compat loaded from a timm weights file
    equals the timm model fed its own normalisation; headless models take any size."""
    import torch

    tm, path = _timm_model(timm_name, tmp_path_factory.getbasetemp())
    model = getattr(ck.applications, fn)(weights=str(path), include_top=False)
    assert tuple(model.input.shape) == (None, None, None, 3)
    app = getattr(ck.applications, module)
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, size=(2, size, size, 3)).astype("float32")
    ours = model.predict_on_batch(app.preprocess_input(img.copy()))  # it overwrites
    with torch.no_grad():
        ref = tm.forward_features(_timm_input(tm, img)).permute(0, 2, 3, 1).numpy()
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * scale)

    # where padding follows the actual size (TensorFlow 'same'), a second size; Keras
    # MobileNetV2 of unknown size pads as for even sizes: keep it even
    if fn in ("EfficientNetB0", "MobileNetV2"):
        other = 2 * size
        bigger = rng.uniform(0, 255, size=(1, other, other, 3)).astype("float32")
        out = model.predict_on_batch(app.preprocess_input(bigger))
        expected = _keras_headless(fn).compute_output_shape((1, other, other, 3))
        assert out.shape == tuple(expected)


@pytest.mark.parametrize(
    ("fn", "module", "timm_name"),
    [
        pytest.param("ResNet50", "resnet50", "resnet50", id="ResNet50"),
        pytest.param("MobileNet", "mobilenet", "mobilenetv1_100", id="MobileNet"),
    ],
)
def test_top_logits_equal_timm_with_keras_preprocessing(
    ck, tmp_path_factory, fn, module, timm_name
):
    """With the top at its default size: timm's classifier in Keras's ``predictions`` (the
    shared loader of every application's classifier) and Keras's ``decode_predictions``."""
    import timm
    import torch

    tm, _ = _timm_model(timm_name, tmp_path_factory.getbasetemp())
    path = tmp_path_factory.mktemp("top") / f"{timm_name}.pth"
    torch.save(tm.state_dict(), path)
    model = getattr(ck.applications, fn)(weights=str(path), classifier_activation=None)
    size = model.input.shape[1]
    img = np.random.default_rng(1).uniform(0, 255, size=(1, size, size, 3)).astype("float32")
    preprocess = getattr(ck.applications, module).preprocess_input
    ours = model.predict_on_batch(preprocess(img.copy()))
    with torch.no_grad():
        ref = tm(_timm_input(tm, img)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    top = ck.applications.imagenet_utils.decode_predictions(ours, top=3)[0]
    assert [t[0] for t in top] == [
        timm.data.ImageNetInfo().index_to_label_name(int(i)) for i in np.argsort(-ref[0])[:3]
    ]


@pytest.mark.parametrize(("fn", "module", "timm_name", "size"), FEATURE_MAP_APPS)
def test_input_tensor_and_pooling_as_keras(ck, fn, module, timm_name, size):
    """The application wires itself onto a given tensor and ends in Keras's pooling layer
    (recorded, KERAS_POOLING) after Keras's last headless layer, with Keras's output shape."""
    k_model = _keras_headless(fn)
    tensor = ck.Input(shape=(size, size, 3))
    model = getattr(ck.applications, fn)(
        weights=None, include_top=False, pooling=_pooling(fn), input_tensor=tensor
    )
    assert model.inputs[0] is tensor
    assert len(model.layers) == len(k_model.layers) + 1
    assert [(la.name, type(la).__name__) for la in model.layers[-2:]] == [
        (k_model.layers[-1].name, type(k_model.layers[-1]).__name__),
        KERAS_POOLING[fn],
    ]
    channels = k_model.output.shape[-1]
    assert tuple(model.output.shape) == (None, channels)
    x = np.random.default_rng(0).uniform(0, 255, size=(1, size, size, 3)).astype("float32")
    assert model.predict_on_batch(x).shape == (1, channels)


def test_depthwise_conv_and_relu_layers_equal_keras(keras, ck):
    """The two layers MobileNetV2 adds to compat.layers compute what Keras's compute."""
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 9, 9, 4)).astype("float32")
    k_dw = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2)
    expected = keras.ops.convert_to_numpy(k_dw(x))
    c_dw = ck.layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2)
    c_dw(x)
    c_dw.set_weights([keras.ops.convert_to_numpy(w) for w in k_dw.weights])
    assert [w.shape for w in c_dw.get_weights()] == [(3, 3, 4, 2), (8,)]
    np.testing.assert_allclose(c_dw(x).detach().numpy(), expected, atol=1e-6)
    z = 5 * x
    for kwargs in ({"max_value": 6.0}, {"max_value": 6.0, "negative_slope": 0.1, "threshold": 0.5}):
        ours = ck.layers.ReLU(**kwargs)(z).detach().numpy()
        np.testing.assert_allclose(ours, keras.ops.convert_to_numpy(keras.layers.ReLU(**kwargs)(z)))


def _layers_digest(layers) -> str:
    text = "\n".join(f"{la.name}:{type(la).__name__}" for la in layers)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _layer_digest(model) -> str:
    return _layers_digest(model.layers)


def _structure(model) -> tuple[int, int, str, int]:
    """(layer count, parameter count, _layer_digest, input size), as the recorded tables
    below hold them; the input is a square RGB image."""
    size = model.input.shape[1]
    assert tuple(model.input.shape) == (None, size, size, 3)
    return len(model.layers), model.count_params(), _layer_digest(model), size


def test_efficientnet_b1_structure_matches_keras(keras, ck):
    """B1 against real Keras, with the top: names, classes, count, parameters, dropout rates."""
    k_model = keras.applications.EfficientNetB1(weights=None)
    model = ck.applications.EfficientNetB1(weights=None)
    assert model.name == k_model.name
    assert [(la.name, type(la).__name__) for la in model.layers] == [
        (la.name, type(la).__name__) for la in k_model.layers
    ]
    # B1 and B2 have the same layers (only widths differ): checks the recorded digest below
    assert _layer_digest(k_model) == EFFICIENTNET_KERAS[2][2]
    assert tuple(model.input.shape) == tuple(k_model.input.shape)
    assert model.count_params() == k_model.count_params()
    rates = {la.name: la.rate for la in k_model.layers if type(la).__name__ == "Dropout"}
    ours = {la.name: la.rate for la in model.layers if type(la).__name__ == "Dropout"}
    assert ours == pytest.approx(rates)


# Keras 3.15.1's EfficientNetB2-B7 (weights=None, with the top), recorded as (layer count,
# parameter count, _layer_digest, input size): building them in Keras takes ~70 s, beyond
# this suite's budget. Regenerate with the loop of test_efficientnet_b1_structure_matches_keras.
EFFICIENTNET_KERAS = {
    2: (342, 9177569, "7a3cf2c502198933", 260),
    3: (387, 12320535, "c70d3834775f84d7", 300),
    4: (477, 19466823, "6bb40b4a061dd75e", 380),
    5: (579, 30562527, "a1368e59a74566da", 456),
    6: (669, 43265143, "fc43e9f20a82b19c", 528),
    7: (816, 66658687, "909a9dd2b44b0572", 600),
}


@pytest.mark.parametrize(
    "b", [pytest.param(b, id=f"B{b}", marks=slow if b > 4 else ()) for b in range(2, 8)]
)
def test_efficientnet_b2_to_b7_structure_matches_recorded_keras(ck, b):
    model = getattr(ck.applications, f"EfficientNetB{b}")(weights=None)
    assert _structure(model) == EFFICIENTNET_KERAS[b]


def test_efficientnet_pads_odd_sizes_as_keras_built_for_them(keras, ck):
    """TensorFlow 'same' padding from the actual size: an odd-sized input gives the shapes of
    the Keras model built for that size (whatever size the compat model was built for)."""
    k_model = keras.applications.EfficientNetB0(
        weights=None, include_top=False, input_shape=(33, 33, 3)
    )
    model = ck.applications.EfficientNetB0(weights=None, include_top=False)
    x = np.random.default_rng(0).uniform(0, 255, size=(1, 33, 33, 3)).astype("float32")
    assert model.predict(x, verbose=0).shape == (1, *k_model.output.shape[1:])
    pads = {la.name: la.padding for la in k_model.layers if type(la).__name__ == "ZeroPadding2D"}
    fixed = ck.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(33, 33, 3))
    ours = {la.name: la.padding for la in fixed.layers if type(la).__name__ == "ZeroPadding2D"}
    assert ours == {k: tuple(tuple(p) for p in v) for k, v in pads.items()}
    assert [tuple(la.output.shape) for la in fixed.layers] == [
        tuple(la.output.shape) for la in k_model.layers
    ]


def test_efficientnet_imagenet_normalization_layers_as_keras(ck):
    """With ``weights="imagenet"`` Keras adds ``rescaling_1`` after ``normalization`` (its
    stored variance is the std); the three layers compute timm's normalisation."""
    import timm

    from compat.applications import efficientnet

    tm = timm.create_model("tf_efficientnet_b0", pretrained=False)
    with ck.backend.canonical_names():
        inputs = ck.Input((8, 8, 3))
        model = ck.Model(inputs, efficientnet._normalization(inputs, tm, "imagenet"))
    assert [(la.name, type(la).__name__) for la in model.layers] == [
        ("input_layer", "InputLayer"),
        ("rescaling", "Rescaling"),
        ("normalization", "Normalization"),
        ("rescaling_1", "Rescaling"),
    ]
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype("float32")
    mean, std = np.array(tm.pretrained_cfg["mean"]), np.array(tm.pretrained_cfg["std"])
    np.testing.assert_allclose(model.predict(x, verbose=0), (x / 255 - mean) / std, atol=1e-5)


def test_reshape_multiply_and_drop_connect_as_keras(keras, ck):
    """The layers EfficientNet adds: Reshape and Multiply compute Keras's results; its
    ``Dropout(noise_shape=(None, 1, 1, 1))`` keeps or drops whole samples, scaled."""
    from compat.applications import efficientnet

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2, 5, 4, 3)).astype("float32")
    gate = rng.uniform(0, 1, size=(2, 1, 1, 3)).astype("float32")
    for target in ((4, 15), (-1,), (1, 1, 60)):
        ours = ck.layers.Reshape(target)(x).detach().numpy()
        theirs = keras.ops.convert_to_numpy(keras.layers.Reshape(target)(x))
        np.testing.assert_array_equal(ours, theirs)
    ours = ck.layers.Multiply()([x, gate]).detach().numpy()
    np.testing.assert_allclose(ours, keras.ops.convert_to_numpy(keras.layers.Multiply()([x, gate])))
    drop = efficientnet.Dropout(0.5, name="drop")
    ones = np.ones((64, 2, 2, 3), "float32")
    out = drop(ones, training=True).detach().numpy()
    per_sample = out.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all() and 0 < per_sample[:, 0].mean() < 2
    np.testing.assert_array_equal(drop(ones).detach().numpy(), ones)


# Keras 3.15.1's deeper variants (weights=None, with the top) as (layer count, parameter
# count, _layer_digest, model name); each family's first model (DenseNet121, ResNet50V2,
# MobileNetV3Small) is compared with live Keras in APPS.
WITH_TOP_KERAS = {
    "DenseNet169": (597, 14307880, "e2001af42d862c0f", "densenet169"),
    "DenseNet201": (709, 20242984, "d67dc72b9737ad0d", "densenet201"),
    "ResNet101V2": (379, 44675560, "517e5473fff33784", "resnet101v2"),
    "ResNet152V2": (566, 60380648, "bc57a854f6c73c90", "resnet152v2"),
    "MobileNetV3Large": (194, 5507432, "ffb32e30d88b2273", "MobileNetV3Large"),
}


def _documented_missing_parameters(fn: str, model) -> int:
    """ResNetV2 has no conv biases (Keras's conv1_conv, *_0_conv and *_3_conv have them)."""
    if not fn.startswith("ResNet"):
        return 0
    biased = [la for la in model.layers if la.name.endswith(("conv1_conv", "_0_conv", "_3_conv"))]
    return sum(la.filters for la in biased)


@pytest.mark.parametrize("fn", list(WITH_TOP_KERAS))
def test_deeper_variants_with_top_match_recorded_keras(ck, fn):
    model = getattr(ck.applications, fn)(weights=None)
    count, params, digest, name = WITH_TOP_KERAS[fn]
    assert (len(model.layers), _layer_digest(model), model.name) == (count, digest, name)
    assert model.count_params() == params - _documented_missing_parameters(fn, model)


def test_separable_conv2d_equals_keras(keras, ck):
    """The layer Xception adds to compat.layers: Keras's weights layout and results."""
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 9, 9, 4)).astype("float32")
    for kwargs in ({"strides": 2, "padding": "same", "depth_multiplier": 2}, {}):
        k_layer = keras.layers.SeparableConv2D(5, 3, **kwargs)
        expected = keras.ops.convert_to_numpy(k_layer(x))
        layer = ck.layers.SeparableConv2D(5, 3, **kwargs)
        layer(x)
        assert [w.shape for w in layer.get_weights()] == [tuple(w.shape) for w in k_layer.weights]
        layer.set_weights([keras.ops.convert_to_numpy(w) for w in k_layer.weights])
        np.testing.assert_allclose(layer(x).detach().numpy(), expected, atol=1e-6)


def test_mobilenet_v3_top_takes_any_size_and_hard_activations_equal_keras(keras, ck):
    """As Keras's, MobileNetV3 with its top takes any image size; its hard-sigmoid ``re_lu``
    layer computes Keras's ``ReLU(6.0)(x + 3.0) * (1 / 6)`` and its ``Activation`` layers
    Keras's ``hard_swish``."""
    from compat.applications import mobilenet_v3

    model = ck.applications.MobileNetV3Small(weights=None, classes=7)
    assert tuple(model.input.shape) == (None, None, None, 3)
    rng = np.random.default_rng(0)
    for size in (32, 48):
        x = rng.uniform(0, 255, size=(1, size, size, 3)).astype("float32")
        out = model.predict(mobilenet_v3.preprocess_input(x), verbose=0)
        assert out.shape == (1, 7)
        np.testing.assert_allclose(out.sum(), 1.0, rtol=1e-5)
    z = rng.uniform(-8, 8, size=(2, 3, 3, 4)).astype("float32")
    theirs = keras.ops.convert_to_numpy(keras.layers.ReLU(6.0)(z + 3.0) * (1.0 / 6.0))
    np.testing.assert_allclose(mobilenet_v3.ReLU()(z).detach().numpy(), theirs, atol=1e-6)
    theirs = keras.ops.convert_to_numpy(keras.layers.Activation("hard_swish")(z))
    np.testing.assert_allclose(mobilenet_v3.Activation()(z).detach().numpy(), theirs, atol=1e-6)


def test_preprocess_input_and_decode_predictions_are_typed(ck):
    """Every application module's wrappers declare what they return (an array, tensor or
    graph node like their input; Keras's ``(wnid, short_name, score)`` lists)."""
    import typing

    from compat.applications import imagenet_utils

    modules = [m for m in ck.applications.__all__ if m.islower() and m != "imagenet_utils"]
    assert len(modules) >= 12
    for name in modules:
        module = getattr(ck.applications, name)
        for fn, expected in (
            (module.preprocess_input, imagenet_utils.Preprocessed),
            (module.decode_predictions, imagenet_utils.Decoded),
        ):
            assert typing.get_type_hints(fn)["return"] == expected, (name, fn.__name__)


def test_layer_normalization_equals_keras(keras, ck):
    """The layer ConvNeXt adds to compat.layers: Keras's weights (``gamma``, ``beta``),
    results on feature maps and vectors, and configuration."""
    rng = np.random.default_rng(0)
    for shape in ((2, 5, 4, 6), (3, 6)):
        x = rng.uniform(-3, 3, size=shape).astype("float32")
        k_layer = keras.layers.LayerNormalization(epsilon=1e-6, name="ln")
        k_layer.build(shape)
        k_layer.set_weights([rng.uniform(0.5, 1.5, 6), rng.uniform(-1, 1, 6)])
        layer = ck.layers.LayerNormalization(epsilon=1e-6, name="ln")
        layer(x)
        assert [w.path for w in layer.weights] == ["ln/gamma", "ln/beta"]
        layer.set_weights([keras.ops.convert_to_numpy(w) for w in k_layer.weights])
        expected = keras.ops.convert_to_numpy(k_layer(x))
        np.testing.assert_allclose(layer(x).detach().numpy(), expected, atol=1e-5)
        config, k_config = layer.get_config(), k_layer.get_config()
        assert {k: config[k] for k in config} == {k: k_config[k] for k in config}
    with pytest.raises(NotImplementedError, match="axis"):
        ck.layers.LayerNormalization(axis=1)


def test_convnext_layer_scale_equals_keras(keras, ck):
    """ConvNeXt's ``LayerScale`` (Keras's class in keras.applications.convnext): its result,
    configuration and initial value."""
    from keras.src.applications.convnext import LayerScale as KerasLayerScale

    from compat.applications.convnext import LayerScale

    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 3, 3, 4)).astype("float32")
    k_layer, layer = KerasLayerScale(1e-6, 4, name="ls"), LayerScale(1e-6, 4, name="ls")
    k_layer(x)
    layer(x)
    np.testing.assert_array_equal(layer.get_weights()[0], np.full(4, 1e-6, "float32"))
    gamma = np.arange(1, 5, dtype="float32")
    k_layer.set_weights([gamma])
    layer.set_weights([gamma])
    expected = keras.ops.convert_to_numpy(k_layer(x))
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-6)
    assert layer.get_config() == k_layer.get_config()  # its DTypePolicy too


def test_convnext_keras_input_gives_timm_predictions(ck, tmp_path):
    """ConvNeXt from a timm weights file (non-trivial LayerNorms and layer scales): raw
    [0, 255] pixels (Keras's built-in preprocessing; ``preprocess_input`` passes them
    through) give timm's pooled, normalised features at two sizes, ``pooling`` and
    ``input_tensor`` ending as Keras's (recorded: Keras 3.15.1's layer names); with the top
    and ``include_preprocessing=False``, Keras's normalised input gives timm's logits."""
    import timm
    import torch

    from compat.applications import convnext

    torch.manual_seed(0)
    tm = timm.create_model("convnext_tiny.fb_in1k", pretrained=False).eval()
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if "norm" in name or name.endswith("gamma"):
                p.uniform_(0.5, 1.5) if name.endswith(("weight", "gamma")) else p.uniform_(-1, 1)
    path = tmp_path / "convnext_tiny.pth"
    torch.save(tm.state_dict(), path)
    cfg = timm.data.resolve_data_config({}, model=tm)
    mean, std = np.array(cfg["mean"], "float32"), np.array(cfg["std"], "float32")

    tensor = ck.Input(shape=(None, None, 3))
    model = ck.applications.ConvNeXtTiny(
        weights=str(path), include_top=False, pooling="avg", input_tensor=tensor
    )
    assert model.inputs[0] is tensor
    assert [(la.name, type(la).__name__) for la in model.layers[-3:]] == [
        ("convnext_tiny_stage_3_block_2_identity", "Activation"),
        ("global_average_pooling2d", "GlobalAveragePooling2D"),
        ("layer_normalization", "LayerNormalization"),
    ]
    rng = np.random.default_rng(0)
    for size in (32, 48):
        img = rng.uniform(0, 255, size=(2, size, size, 3)).astype("float32")
        with torch.no_grad():
            x = torch.from_numpy((img / 255.0 - mean) / std).permute(0, 3, 1, 2)
            ref = tm.forward_head(tm.forward_features(x), pre_logits=True).numpy()
        ours = model.predict_on_batch(convnext.preprocess_input(img))
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))

    top = ck.applications.ConvNeXtTiny(
        weights=str(path),
        include_preprocessing=False,
        input_shape=(32, 32, 3),
        classifier_activation=None,
    )
    assert top.layers[1].name == "convnext_tiny_stem"  # no prestem normalization
    assert [la.name for la in top.layers[-3:]] == [
        "convnext_tiny_head_gap",
        "convnext_tiny_head_layernorm",
        "convnext_tiny_head_dense",
    ]
    normalised = (rng.uniform(0, 255, size=(2, 32, 32, 3)).astype("float32") / 255 - mean) / std
    with torch.no_grad():
        ref = tm(torch.from_numpy(normalised).permute(0, 3, 1, 2)).numpy()
    ours = top.predict_on_batch(normalised)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def _meta_build(builder):
    """An application built on torch's meta device: its graph, layers and parameter shapes,
    no weights drawn (a second for ConvNeXtXLarge's 350M parameters; Keras's initialisation
    is checked on each family's smallest model against live Keras in APPS)."""
    import torch

    with torch.device("meta"):
        return builder(weights=None)


def test_efficientnet_v2_preprocessing_and_drop_connect_as_keras(ck, tmp_path):
    """EfficientNetV2B0's built-in preprocessing layers and drop-connect rates are Keras's
    (live Keras model of APPS); S/M/L's ``rescaling`` is Keras's ``x / 128 - 1`` without
    weights and the weights' ``x / 127.5 - 1`` with them (raw pixels give timm's features)."""
    import torch

    from compat.applications import _common

    k_model = _keras_headless("EfficientNetV2B0")
    model = ck.applications.EfficientNetV2B0(weights=None, include_top=False)

    def rates(layers):
        return {la.name: la.rate for la in layers if type(la).__name__ == "Dropout"}

    assert rates(model.layers) == pytest.approx(rates(k_model.layers))
    assert len(rates(model.layers)) > 5
    k_norm, norm = k_model.get_layer("normalization"), model.get_layer("normalization")
    x = np.random.default_rng(0).uniform(0, 1, size=(1, 2, 2, 3)).astype("float32")
    np.testing.assert_allclose(norm(x).detach().numpy(), np.asarray(k_norm(x)), rtol=1e-5)

    tiny = {"input_shape": (32, 32, 3), "include_top": False}
    untrained = _meta_build(functools.partial(ck.applications.EfficientNetV2S, **tiny))
    assert (untrained.layers[1].scale, untrained.layers[1].offset) == (1 / 128, -1.0)
    tm = _common.timm_model("tf_efficientnetv2_s.in1k", None, False, 1000)
    path = tmp_path / "s.pth"
    torch.save(tm.state_dict(), path)
    model = ck.applications.EfficientNetV2S(weights=str(path), **tiny)
    assert model.layers[1].scale == pytest.approx(1 / 127.5)
    img = np.random.default_rng(0).uniform(0, 255, size=(1, 32, 32, 3)).astype("float32")
    with torch.no_grad():
        ref = tm.eval().forward_features(torch.from_numpy(img / 127.5 - 1).permute(0, 3, 1, 2))
    ref = ref.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(model.predict_on_batch(img), ref, atol=1e-5)


# Keras 3.15.1's ConvNeXtSmall..XLarge and EfficientNetV2B1..L (weights=None, with the top)
# as (layer count, parameter count, _layer_digest, input size, model name): building them
# in Keras takes 12-50 s each. ConvNeXtTiny and EfficientNetV2B0 are compared with live
# Keras in APPS.
META_BUILT_KERAS = {
    "ConvNeXtSmall": (261, 50223688, "24c35375617ef96c", 224, "convnext_small"),
    "ConvNeXtBase": (261, 88591464, "e49c3bee07b95cab", 224, "convnext_base"),
    "ConvNeXtLarge": (261, 197767336, "2dc982c1684233bd", 224, "convnext_large"),
    "ConvNeXtXLarge": (261, 350196968, "dcf41b5b308cf84a", 224, "convnext_xlarge"),
    "EfficientNetV2B1": (337, 8212124, "718e306798223046", 240, "efficientnetv2-b1"),
    "EfficientNetV2B2": (352, 10178374, "702d9d715986654d", 260, "efficientnetv2-b2"),
    "EfficientNetV2B3": (412, 14467622, "ae2dd61fad87bb94", 300, "efficientnetv2-b3"),
    "EfficientNetV2S": (516, 21612360, "6cb0efe558cf011f", 384, "efficientnetv2-s"),
    "EfficientNetV2M": (743, 54431388, "47585e0a007df5af", 480, "efficientnetv2-m"),
    "EfficientNetV2L": (1031, 119027848, "d35abc30e6bd88d0", 480, "efficientnetv2-l"),
}


@pytest.mark.parametrize("fn", list(META_BUILT_KERAS))
def test_large_variants_match_recorded_keras(ck, fn):
    model = _meta_build(getattr(ck.applications, fn))
    assert (*_structure(model), model.name) == META_BUILT_KERAS[fn]


def test_headless_vgg_does_not_allocate_the_unused_top(ck):
    """VGG16 without its top builds timm's module without the 103M-parameter ``pre_logits``
    (fc1/fc2: 480 MiB of float32, never used): what the build allocates (torch's profiler,
    leaf operations) stays far below that (71 MiB; 1.4 GiB with the top, whose fc1/fc2 Keras
    builds; 528 MiB headless before this was fixed)."""
    from torch.profiler import ProfilerActivity, profile

    def allocated_mib(**kwargs) -> tuple:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model = ck.applications.VGG16(weights=None, **kwargs)
        leaves = [e for e in prof.events() if not e.cpu_children and e.cpu_memory_usage > 0]
        return model, sum(e.cpu_memory_usage for e in leaves) / 2**20

    model, headless = allocated_mib(include_top=False)
    assert model.count_params() == 14714688  # Keras's VGG16 without the top
    assert headless < 250


@pytest.mark.parametrize(
    "fn", ["ConvNeXtTiny", "ConvNeXtXLarge", "EfficientNetV2B0", "EfficientNetV2L"]
)
def test_builtin_preprocessing_builders_take_keras_arguments(keras, ck, fn):
    """ConvNeXt and EfficientNetV2 take Keras's ``include_preprocessing`` where Keras has it
    (positionally too), with Keras's defaults, name and module."""
    import inspect

    ours, theirs = getattr(ck.applications, fn), getattr(keras.applications, fn)
    params = inspect.signature(ours).parameters
    k_params = inspect.signature(theirs).parameters
    assert list(params) == list(k_params)
    assert {k: p.default for k, p in params.items()} == {k: p.default for k, p in k_params.items()}
    assert ours.__name__ == fn
    assert ours.__module__ == f"compat.applications.{theirs.__module__.rsplit('.', 1)[-1]}"
    with pytest.raises(TypeError, match="include_preprocesing"):
        ours(include_preprocesing=False)


@pytest.mark.parametrize("convention", ["caffe", "tf", "torch"])
def test_input_map_keeps_channels_last_batches_channels_last(convention):
    """compat's batches are NHWC arrays viewed as NCHW (channels-last strides); the map into
    the weights' normalisation must keep them so, or every conv and batch norm after it takes
    torch's slower NCHW CPU kernels (issue 13's 5-8% compat fit slowdown). Same numbers
    either way."""
    import torch

    from compat.applications._common import InputMap

    mapping = InputMap(convention, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    nhwc = torch.rand(2, 5, 7, 3) * 255
    channels_last = nhwc.permute(0, 3, 1, 2)
    out = mapping(channels_last)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, mapping(channels_last.contiguous()), rtol=0, atol=0)
