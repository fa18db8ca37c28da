"""Keras's data tools (image files, folders, generators, PyDataset) against compat's."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def folder(tmp_path):
    """Two classes, odd sizes, a nested sub-folder and an RGBA file (Keras walks them all)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c in ("dogs", "cats"):
        (root / c / "sub").mkdir(parents=True)
        for i, name in enumerate(("z.png", "a.jpg", "m.png")):
            arr = rng.integers(0, 256, (20 + i, 17 + 2 * i, 3)).astype("uint8")
            Image.fromarray(arr).save(root / c / name)
        Image.fromarray(rng.integers(0, 256, (9, 11, 4)).astype("uint8")).save(
            root / c / "sub" / "q.png"
        )
    (root / "cats" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def legacy_generator():
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    return ImageDataGenerator


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "box"])
def test_load_img_resizes_like_keras(keras, ck, folder, interpolation):
    path = folder / "cats" / "m.png"
    k = keras.utils.img_to_array(
        keras.utils.load_img(path, target_size=(8, 13), interpolation=interpolation)
    )
    c = ck.utils.img_to_array(
        ck.utils.load_img(path, target_size=(8, 13), interpolation=interpolation)
    )
    np.testing.assert_array_equal(c, k)
    k_default = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(8, 8)))
    c_default = ck.utils.img_to_array(ck.utils.load_img(path, target_size=(8, 8)))
    np.testing.assert_array_equal(c_default, k_default)
    k_aspect = keras.utils.load_img(path, target_size=(6, 12), keep_aspect_ratio=True)
    c_aspect = ck.utils.load_img(path, target_size=(6, 12), keep_aspect_ratio=True)
    np.testing.assert_array_equal(np.asarray(c_aspect), np.asarray(k_aspect))
    gray = ck.utils.img_to_array(ck.utils.load_img(path, color_mode="grayscale"))
    k_gray = keras.utils.img_to_array(keras.utils.load_img(path, color_mode="grayscale"))
    np.testing.assert_array_equal(gray, k_gray)


def test_array_to_img_and_save_img_like_keras(keras, ck, tmp_path):
    x = np.random.default_rng(1).normal(size=(5, 7, 3)).astype("float32")
    np.testing.assert_array_equal(
        np.asarray(ck.utils.array_to_img(x)), np.asarray(keras.utils.array_to_img(x))
    )
    y = np.random.default_rng(1).uniform(0, 255, size=(5, 7, 1)).astype("float32")
    np.testing.assert_array_equal(
        np.asarray(ck.utils.array_to_img(y, scale=False)),
        np.asarray(keras.utils.array_to_img(y, scale=False)),
    )
    keras.utils.save_img(tmp_path / "k.png", x)
    ck.utils.save_img(tmp_path / "c.png", x)
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "c.png")), np.asarray(Image.open(tmp_path / "k.png"))
    )


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest", "bicubic"])
def test_image_dataset_from_directory_pixels_are_keras_resize(keras, ck, folder, interpolation):
    """Keras (torch backend) reads each file with PIL and resizes the float32 pixels with
    ``keras.ops.image.resize``; compat's batches hold exactly those pixels."""
    ds = ck.utils.image_dataset_from_directory(
        folder, image_size=(8, 10), batch_size=4, shuffle=False, interpolation=interpolation
    )
    assert ds.class_names == ["cats", "dogs"]
    paths = [p for p, _ in ds.files]
    expected = [
        folder / c / n for c in ("cats", "dogs") for n in ("a.jpg", "m.png", "z.png", "sub/q.png")
    ]
    assert paths == [str(p) for p in expected]
    images = np.concatenate([x for x, _ in ds])
    labels = np.concatenate([y for _, y in ds])
    for img, path in zip(images, expected, strict=True):
        pixels = np.array(Image.open(path).convert("RGB"), dtype="float32")
        want = keras.ops.image.resize(pixels, (8, 10), interpolation=interpolation)
        np.testing.assert_allclose(img, keras.ops.convert_to_numpy(want), atol=1e-4)
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1, 1, 1, 1])


def test_image_dataset_split_holds_keras_files(ck, folder):
    """With a seed, the validation subset holds the files Keras's shuffle-then-split picks."""
    import keras.src.utils.dataset_utils as du

    paths, labels, _ = du.index_directory(
        str(folder), "inferred", formats=(".bmp", ".gif", ".jpeg", ".jpg", ".png"), seed=7
    )
    train, val = ck.utils.image_dataset_from_directory(
        folder, image_size=(8, 8), seed=7, validation_split=0.25, subset="both"
    )
    assert sorted(p for p, _ in val.files) == sorted(paths[-2:])
    assert sorted(p for p, _ in train.files) == sorted(paths[:-2])
    assert dict(val.files) == dict(zip(paths[-2:], labels[-2:].tolist(), strict=True))


@pytest.mark.parametrize("interpolation", [None, "bilinear"])
def test_flow_from_directory_matches_keras(ck, folder, legacy_generator, interpolation):
    kw = {} if interpolation is None else {"interpolation": interpolation}
    k_it = legacy_generator(rescale=1 / 255.0).flow_from_directory(
        folder, target_size=(8, 9), batch_size=3, shuffle=False, **kw
    )
    c_it = ck.preprocessing.image.ImageDataGenerator(rescale=1 / 255.0).flow_from_directory(
        folder, target_size=(8, 9), batch_size=3, shuffle=False, **kw
    )
    assert c_it.filenames == k_it.filenames
    assert c_it.samples == c_it.n == k_it.samples == 8
    np.testing.assert_array_equal(c_it.classes, k_it.classes)
    assert c_it.class_indices == k_it.class_indices
    assert len(c_it) == len(k_it) == 3
    for i in range(len(k_it)):
        (kx, ky), (cx, cy) = k_it[i], c_it[i]
        np.testing.assert_allclose(cx, kx, atol=1e-6)
        np.testing.assert_array_equal(cy, ky)
    k_it.reset()
    c_it.reset()
    np.testing.assert_allclose(next(c_it)[0], next(k_it)[0], atol=1e-6)


def test_flow_from_directory_subsets_like_keras(ck, folder, legacy_generator):
    for subset in ("training", "validation"):
        k_it = legacy_generator(validation_split=0.5).flow_from_directory(
            folder, target_size=(8, 8), subset=subset, class_mode="sparse", shuffle=False
        )
        c_it = ck.preprocessing.image.ImageDataGenerator(validation_split=0.5).flow_from_directory(
            folder, target_size=(8, 8), subset=subset, class_mode="sparse", shuffle=False
        )
        assert c_it.filenames == k_it.filenames
        np.testing.assert_array_equal(c_it[0][1], k_it[0][1])


TRANSFORMS = [
    {"theta": 30.0},
    {"tx": 2.5, "ty": -3.0},
    {"shear": 20.0},
    {"zx": 0.7, "zy": 1.3},
    {"theta": -15.0, "tx": 1.0, "shear": 10.0, "zx": 1.2, "zy": 0.9},
    {"channel_shift_intensity": 40.0},
    {"brightness": 0.6},
    {"flip_horizontal": True, "flip_vertical": True},
]


@pytest.mark.parametrize("fill_mode", ["nearest", "reflect", "constant"])
@pytest.mark.parametrize("params", TRANSFORMS, ids=lambda p: ",".join(p))
def test_image_data_generator_transforms_like_keras(ck, legacy_generator, params, fill_mode):
    x = np.random.default_rng(2).uniform(0, 255, (11, 14, 3)).astype("float32")
    kw = {"fill_mode": fill_mode, "cval": 7.0}
    k = legacy_generator(**kw).apply_transform(x, params)
    c = ck.preprocessing.image.ImageDataGenerator(**kw).apply_transform(x, params)
    np.testing.assert_allclose(c, k, atol=1e-3)


def test_random_parameters_and_featurewise_fit_like_keras(ck, legacy_generator):
    kw = {
        "rotation_range": 20,
        "width_shift_range": 0.1,
        "height_shift_range": [1, 2],
        "shear_range": 5.0,
        "zoom_range": 0.2,
        "channel_shift_range": 10.0,
        "brightness_range": (0.8, 1.2),
        "horizontal_flip": True,
        "featurewise_center": True,
        "featurewise_std_normalization": True,
        "rescale": 1 / 255.0,
    }
    k_gen, c_gen = legacy_generator(**kw), ck.preprocessing.image.ImageDataGenerator(**kw)
    assert c_gen.get_random_transform((10, 12, 3), seed=3) == k_gen.get_random_transform(
        (10, 12, 3), seed=3
    )
    x = np.random.default_rng(4).uniform(0, 255, (6, 10, 12, 3)).astype("float32")
    y = np.arange(6) % 2
    k_gen.fit(x)
    c_gen.fit(x)
    np.testing.assert_allclose(c_gen.mean, k_gen.mean, rtol=1e-6)
    np.testing.assert_allclose(c_gen.std, k_gen.std, rtol=1e-6)
    np.testing.assert_allclose(
        c_gen.standardize(x[0].copy()), k_gen.standardize(x[0].copy()), atol=1e-5
    )
    k_x, k_y = legacy_generator(**kw).flow(x, y, batch_size=4, shuffle=False)[1]
    plain = ck.preprocessing.image.ImageDataGenerator(rescale=1 / 255.0)
    c_x, c_y = plain.flow(x, y, batch_size=4, shuffle=False)[1]
    assert c_x.shape == k_x.shape == (2, 10, 12, 3)
    np.testing.assert_array_equal(c_y, k_y)
    np.testing.assert_allclose(c_x, x[4:] / 255.0, atol=1e-6)


def test_flow_validation_subset_is_the_head_like_keras(ck, legacy_generator):
    x = np.random.default_rng(5).uniform(0, 1, (10, 4, 4, 3)).astype("float32")
    y = np.arange(10) % 2
    for subset in ("training", "validation"):
        k_it = legacy_generator(validation_split=0.2).flow(x, y, shuffle=False, subset=subset)
        c_it = ck.preprocessing.image.ImageDataGenerator(validation_split=0.2).flow(
            x, y, shuffle=False, subset=subset
        )
        np.testing.assert_array_equal(c_it[0][1], k_it[0][1])
        np.testing.assert_allclose(c_it[0][0], k_it[0][0], atol=1e-6)


class _Batches:
    """A Keras ``PyDataset`` subclass body, shared by both runs."""

    def __init__(self, x, y, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.epochs_ended = x, y, 0

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return self.x[i * 4 : (i + 1) * 4], self.y[i * 4 : (i + 1) * 4]

    def on_epoch_end(self):
        self.epochs_ended += 1


def test_pydataset_trains_like_keras(keras, ck):
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(12, 5)).astype("float32"), rng.normal(size=(12, 2)).astype("float32")
    results = []
    start = None
    for K in (keras, ck):
        data = type("Batches", (_Batches, K.utils.PyDataset), {})(x, y)
        model = K.Sequential([K.Input((5,)), K.layers.Dense(2)])
        if start is None:
            start = model.get_weights()
        model.set_weights(start)
        model.compile(optimizer=K.optimizers.SGD(0.1), loss="mse")
        model.fit(data, epochs=2, verbose=0, shuffle=False)
        ended = data.epochs_ended  # Keras: once per epoch (and once more, at its own pace)
        results.append((model.get_weights(), ended, model.predict(data, verbose=0)))
    (kw, ke, kp), (cw, ce, cp) = results
    for a, b in zip(kw, cw, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-6)
    assert ke >= 2 and ce >= 2
    np.testing.assert_allclose(cp, kp, atol=1e-6)
    assert ck.utils.Sequence is ck.utils.PyDataset


def test_set_random_seed_exists_like_keras(keras, ck):
    for K in (keras, ck):
        K.utils.set_random_seed(3)
        a = np.random.random()
        K.utils.set_random_seed(3)
        assert np.random.random() == a
