"""compile/fit/evaluate/predict on the Lightning Trainer, callbacks, saving, data utilities."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image


def _model(K, classes=3, activation="softmax"):
    return K.Sequential(
        [
            K.Input((8, 8, 3)),
            K.layers.Conv2D(4, 3, activation="relu"),
            K.layers.BatchNormalization(),
            K.layers.GlobalAveragePooling2D(),
            K.layers.Dense(classes, activation=activation),
        ]
    )


def test_history_keys_and_evaluate_forms_match_keras(keras, ck, images):
    x, y = images(12, 8)
    results = {}
    for K in (keras, ck):
        model = _model(K)
        model.compile(
            optimizer="adam",
            loss="categorical_crossentropy",
            metrics=["accuracy", K.metrics.TopKCategoricalAccuracy(k=2)],
        )
        hist = model.fit(x, y, batch_size=4, epochs=2, validation_split=0.25, verbose=0)
        ev = model.evaluate(x, y, verbose=0)
        evd = model.evaluate(x, y, verbose=0, return_dict=True)
        results[K.__name__] = (sorted(hist.history), len(ev), sorted(evd), hist.epoch)
    assert results["compat"] == results["keras"]


def test_sparse_labels_and_loss_value_match_keras(keras, ck, images):
    x, y = images(6, 8)
    labels = y.argmax(1)
    k, c = _model(keras), _model(ck)
    c.set_weights(k.get_weights())
    for m in (k, c):
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    kl, ka = k.evaluate(x, labels, verbose=0)
    cl, ca = c.evaluate(x, labels, verbose=0)
    assert cl == pytest.approx(kl, rel=1e-4) and ca == pytest.approx(ka)


def test_fit_trains_and_verbose_lines(ck, images, capsys):
    x, y = images(16, 8)
    model = _model(ck)
    model.compile(
        optimizer=ck.optimizers.Adam(learning_rate=0.05),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    hist = model.fit(x, y, batch_size=8, epochs=3, verbose=2)
    out = capsys.readouterr().out
    assert "Epoch 3/3" in out and "2/2 - " in out and "accuracy: " in out and "loss: " in out
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    model.fit(x, y, batch_size=8, epochs=1, verbose=1)
    assert "━" in capsys.readouterr().out


def test_callbacks(ck, images, tmp_path):
    x, y = images(8, 8)
    model = _model(ck)
    model.compile(optimizer=ck.optimizers.SGD(learning_rate=0.1), loss="categorical_crossentropy")
    seen = []

    class Recorder(ck.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)

    hist = model.fit(
        x,
        y,
        batch_size=4,
        epochs=6,
        initial_epoch=1,
        verbose=0,
        validation_data=(x, y),
        callbacks=[
            Recorder(),
            ck.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1)),
            ck.callbacks.CSVLogger(tmp_path / "log.csv"),
            ck.callbacks.ModelCheckpoint(
                str(tmp_path / "w{epoch:02d}.weights.pt"), save_weights_only=True
            ),
            ck.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0),
        ],
    )
    assert seen[0] == 1 and hist.epoch[0] == 1
    assert len(seen) == 2  # stopped by EarlyStopping after its second epoch
    assert model.optimizer.learning_rate == pytest.approx(0.1 / 3)
    with open(tmp_path / "log.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][0] == "epoch" and "val_loss" in rows[0] and len(rows) == 3
    assert (tmp_path / "w02.weights.pt").exists() and (tmp_path / "w03.weights.pt").exists()


def test_reduce_lr_on_plateau(ck, images):
    x, y = images(4, 8)
    model = _model(ck)
    model.compile(optimizer=ck.optimizers.SGD(learning_rate=1.0), loss="categorical_crossentropy")
    cb = ck.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)
    hist = model.fit(x, y, epochs=3, verbose=0, callbacks=[cb])
    assert model.optimizer.learning_rate == pytest.approx(0.25)  # first epoch improves on inf
    assert hist.history["learning_rate"] == [1.0, 1.0, 0.5]


def test_save_load_and_weights_files(ck, images, tmp_path):
    x, y = images(8, 8)
    model = _model(ck)
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.model")
    loaded = ck.models.load_model(tmp_path / "m.model")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.optimizer.get_config()["rho"] == 0.9  # compile config travels
    loaded.fit(x, y, epochs=1, verbose=0)  # and it trains right away
    model.save_weights(tmp_path / "m.weights.pt")
    other = _model(ck)
    other.load_weights(tmp_path / "m.weights.pt")
    np.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
    with pytest.raises(ValueError, match="not a compat model file"):
        ck.models.load_model(tmp_path / "m.weights.pt")


def test_class_weight_and_binary_auc(ck):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 8, 8, 3)).astype("float32")
    y = np.array([0, 1] * 4, dtype="float32")
    model = _model(ck, classes=1, activation="sigmoid")
    model.compile(
        optimizer="adam",
        loss="binary_crossentropy",
        metrics=["accuracy", ck.metrics.AUC(), ck.metrics.Precision()],
    )
    hist = model.fit(x, y, epochs=1, verbose=0, class_weight={0: 1.0, 1: 3.0})
    assert sorted(hist.history) == ["accuracy", "auc", "loss", "precision"]
    assert 0.0 <= hist.history["auc"][0] <= 1.0


def test_fit_without_compile_and_bad_data(ck, images):
    x, y = images(4, 8)
    model = _model(ck)
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(x, y, verbose=0)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    with pytest.raises(ValueError, match="x sizes: 4, y sizes: 3"):
        model.fit(x, y[:3], verbose=0)
    with pytest.raises(ValueError, match="lr"):
        ck.optimizers.SGD(lr=0.1)
    with pytest.raises(NotImplementedError, match="loss_weights"):
        model.compile(optimizer="adam", loss="mse", loss_weights=[1.0])


def _folder(tmp_path, n=3):
    for name, color in (("cats", 30), ("dogs", 220)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.new("RGB", (12, 10), (color, i, 0)).save(tmp_path / name / f"{i}.png")
    return tmp_path


def test_image_dataset_from_directory_and_generator(ck, tmp_path):
    root = _folder(tmp_path)
    ds = ck.utils.image_dataset_from_directory(
        root, image_size=(8, 8), batch_size=4, label_mode="categorical"
    )
    assert ds.class_names == ["cats", "dogs"] and len(ds) == 2
    xb, yb = ds[0]
    assert xb.shape == (4, 8, 8, 3) and yb.shape == (4, 2) and xb.max() > 1
    model = _model(ck, classes=2)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    assert len(model.fit(ds, epochs=1, verbose=0).history["loss"]) == 1
    gen = ck.preprocessing.image.ImageDataGenerator(
        rescale=1 / 255, horizontal_flip=True, rotation_range=10
    )
    it = gen.flow_from_directory(root, target_size=(8, 8), batch_size=3, class_mode="binary")
    xb, yb = it[0]
    assert xb.max() <= 1.0 and yb.shape == (3,) and it.class_indices == {"cats": 0, "dogs": 1}
    binary = _model(ck, classes=1, activation="sigmoid")
    binary.compile(optimizer="adam", loss="binary_crossentropy")
    binary.fit(it, epochs=1, verbose=0)
    flow = gen.flow(
        np.ones((5, 8, 8, 3)) * 255, ck.utils.to_categorical([0, 1, 0, 1, 1]), batch_size=2
    )
    assert len(flow) == 3 and flow[0][0].max() <= 1.0
    with pytest.raises(NotImplementedError, match="zca_whitening"):
        ck.preprocessing.image.ImageDataGenerator(zca_whitening=True)


def test_policy_and_distribution_map_to_lightning(ck):
    from compat import engine

    ck.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        assert engine.make_trainer(max_epochs=1).precision == "bf16-mixed"
    finally:
        ck.mixed_precision.set_global_policy("float32")
    assert ck.distribution.DataParallel(devices=2).trainer_options() == {
        "strategy": "ddp",
        "devices": 2,
    }
    assert ck.utils.to_categorical([2, 0], 3).tolist() == [[0, 0, 1], [1, 0, 0]]


def test_frozen_batchnorm_runs_in_inference_mode(ck, images):
    x, y = images(8, 8)
    model = _model(ck)
    bn = model.layers[1]
    bn.trainable = False
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    before = [w.copy() for w in bn.get_weights()]
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    for a, b in zip(before, bn.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    bn.trainable = True  # takes effect at the next compile(), as in Keras
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert not np.array_equal(before[2], bn.get_weights()[2])
