"""The article's CNN, its fused batch norm, and reproducible saving and clear loading errors."""

from __future__ import annotations

import json
import math
import re
import time
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn.io import StageError
from mnist_cnn.model import FusedBatchNormalization, build_model, load_model, save_model
from mnist_cnn.params import TrainConfig
from mnist_cnn.training import run
from tests.conftest import ROOT, synthetic_digits

SHIPPED = TrainConfig.load(ROOT / "params.yaml")


def build(*, regularized: bool, **changes) -> keras.Model:
    """build_model with the shipped train params, some of them changed."""
    config = SHIPPED.replace(**changes)
    return build_model(
        regularized=regularized,
        dropout_rate=config.dropout_rate,
        dropout_after_first_pool=config.dropout_after_first_pool,
        batch_norm_momentum=config.batch_norm_momentum,
        fused_batch_norm=config.fused_batch_norm,
    )


def trainable_count(model: keras.Model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def layer_types(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def graph_op_types(layer: keras.layers.Layer, shape: tuple[int, ...]) -> set[str]:
    """The TensorFlow op types of the layer's training-mode call, traced as a graph."""
    function = tf.function(lambda inputs: layer(inputs, training=True))
    graph = function.get_concrete_function(tf.TensorSpec(shape, "float32")).graph
    return {operation.type for operation in graph.get_operations()}


def test_shipped_params_are_the_ones_these_tests_rely_on():
    assert SHIPPED.fused_batch_norm is True
    assert SHIPPED.dropout_after_first_pool is False


def test_baseline_is_the_articles_architecture():
    model = build(regularized=False)
    assert model.name == "baseline"
    assert trainable_count(model) == 176_286
    assert model.input.dtype == "uint8" and tuple(model.input.shape) == (None, 28, 28)
    assert tuple(model.output.shape) == (None, 10)
    assert tuple(model.get_layer("pool1").output.shape) == (None, 13, 13, 12)
    assert tuple(model.get_layer("pool2").output.shape) == (None, 6, 6, 16)
    # The article's convolutions have no activation: the max-pools are the non-linearity.
    assert model.get_layer("conv1").activation.__name__ == "linear"
    assert model.get_layer("conv2").activation.__name__ == "linear"
    assert model.get_layer("fc1").activation.__name__ == "relu"
    assert model.get_layer("fc2").activation.__name__ == "relu"
    # Linear logits: the article's ReLU on the output layer was a bug.
    assert model.get_layer("logits").activation.__name__ == "linear"
    assert not {"BatchNormalization", "FusedBatchNormalization", "Dropout"} & set(
        layer_types(model)
    )
    # The model scales raw uint8 pixels itself; white is 1.0.
    white = np.full((1, 28, 28), 255, np.uint8)
    rescaled = keras.Model(model.input, model.layers[1].output)(white)
    np.testing.assert_allclose(rescaled, 1.0)


def test_regularized_dropout_placement_as_shipped_and_as_written():
    as_run = build(regularized=True)
    assert as_run.name == "regularized"
    assert layer_types(as_run).count("FusedBatchNormalization") == 2
    assert [layer.name for layer in as_run.layers if "dropout" in layer.name] == ["dropout2"]
    assert as_run.get_layer("dropout2").rate == SHIPPED.dropout_rate == 0.5
    assert as_run.get_layer("bn1").momentum == SHIPPED.batch_norm_momentum
    # Pool, then batch norm, then dropout, then the dense layers.
    names = [layer.name for layer in as_run.layers]
    assert names.index("pool2") < names.index("bn2") < names.index("dropout2") < names.index("fc1")
    # Batch norm adds 2 trainable and 2 moving weights per channel: 2 * (12 + 16) each.
    assert trainable_count(as_run) == 176_286 + 56
    assert sum(int(np.prod(w.shape)) for w in as_run.non_trainable_weights) == 56
    as_written = build(regularized=True, dropout_after_first_pool=True)
    dropouts = [layer.name for layer in as_written.layers if "dropout" in layer.name]
    assert dropouts == ["dropout1", "dropout2"]
    names = [layer.name for layer in as_written.layers]
    assert names.index("bn1") < names.index("dropout1") < names.index("conv2")
    plain = build(regularized=True, fused_batch_norm=False)
    assert layer_types(plain).count("BatchNormalization") == 2
    assert "FusedBatchNormalization" not in layer_types(plain)


@pytest.mark.parametrize("dropout_rate", [1.0, 1.5, -0.1])
def test_build_model_refuses_bad_dropout(dropout_rate):
    message = f"dropout_rate must be a float in [0, 1); got {dropout_rate!r}."
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        build_model(
            regularized=True,
            dropout_rate=dropout_rate,
            dropout_after_first_pool=False,
            batch_norm_momentum=0.9,
            fused_batch_norm=True,
        )


def test_fused_batch_norm_trains_like_keras_batch_norm_and_saves_as_it(tmp_path):
    images, labels = synthetic_digits(64, seed=3)
    # No dropout, so that both models see the same forward pass.
    plain = build(regularized=True, dropout_rate=0.0, fused_batch_norm=False)
    fused = build(regularized=True, dropout_rate=0.0)
    assert layer_types(fused).count("FusedBatchNormalization") == 2
    # The shipped layer really runs TensorFlow's fused kernel in training, Keras's does not.
    assert "FusedBatchNormV3" in graph_op_types(fused.get_layer("bn1"), (8, 13, 13, 12))
    assert "FusedBatchNormV3" not in graph_op_types(plain.get_layer("bn1"), (8, 13, 13, 12))
    fused.set_weights(plain.get_weights())
    loss_function = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results = []
    for model in (plain, fused):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = loss_function(labels, logits)
        gradients = tape.gradient(loss, model.trainable_variables)
        results.append((logits, gradients, model.get_weights()))
    (plain_logits, plain_gradients, plain_weights), (logits, gradients, weights) = results
    np.testing.assert_allclose(logits, plain_logits, rtol=1e-4, atol=1e-5)
    # Biases before batch norm have a gradient of 0 up to rounding, hence the absolute tolerance.
    for gradient, plain_gradient in zip(gradients, plain_gradients, strict=True):
        np.testing.assert_allclose(gradient, plain_gradient, rtol=1e-3, atol=1e-5)
    # The moving mean and variance moved, and by the same amounts (biased variance).
    names = [weight.name for weight in fused.weights]
    for moving, initial in (("moving_mean", 0.0), ("moving_variance", 1.0)):
        assert not np.allclose(weights[names.index(moving)], initial)
    for weight, plain_weight in zip(weights, plain_weights, strict=True):
        np.testing.assert_allclose(weight, plain_weight, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused(images), plain(images), rtol=1e-5, atol=1e-5)

    # The saved file has Keras's own layers: Keras alone loads it, and it predicts the same.
    save_model(fused, tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.name == "regularized"
    assert layer_types(loaded).count("BatchNormalization") == 2
    assert "FusedBatchNormalization" not in layer_types(loaded)
    expected = fused.predict(images, verbose=0)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)


@pytest.mark.parametrize(
    ("options", "shape"),
    [
        ({"scale": False}, (2, 3, 3, 4)),
        ({"center": False}, (2, 3, 3, 4)),
        ({"synchronized": True}, (2, 3, 3, 4)),
        ({"axis": 1}, (2, 4, 3, 3)),
        ({}, (6, 4)),
    ],
)
def test_fused_batch_norm_falls_back_to_keras_where_the_kernel_does_not_fit(options, shape):
    inputs = tf.reshape(tf.range(math.prod(shape), dtype="float32") ** 0.5, shape)
    plain = keras.layers.BatchNormalization(momentum=0.9, **options)
    fused = FusedBatchNormalization(momentum=0.9, **options)
    np.testing.assert_allclose(fused(inputs, training=True), plain(inputs, training=True))
    for weight, plain_weight in zip(fused.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(weight, plain_weight)
    assert "FusedBatchNormV3" not in graph_op_types(fused, shape)


def test_fused_batch_norm_trains_under_mixed_precision():
    images, labels = synthetic_digits(100, seed=0)
    config = SHIPPED.replace(epochs=2, batch_size=20, mixed_precision=True)
    try:
        model, history = run(
            config, regularized=True, train=(images, labels), validation=None, verbose=0
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # float16 compute, float32 variables, batch norm and logits.
    assert model.get_layer("conv1").compute_dtype == "float16"
    assert model.get_layer("conv1").kernel.dtype == "float32"
    assert model.get_layer("bn1").compute_dtype == "float16"
    assert model.get_layer("logits").compute_dtype == "float32"
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert all(np.all(np.isfinite(weight)) for weight in model.get_weights())


def wait_for_the_next_zip_time(after: float) -> None:
    """Wait on the clock until a zip time stamp (2 s resolution) differs from one at `after`."""
    deadline = max(after + 2.1, (math.floor(time.time() / 2) + 1) * 2 + 0.1)
    while time.time() < deadline:
        time.sleep(0.05)


def test_save_model_bytes_depend_on_the_weights_not_on_the_clock(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    model = build(regularized=True)
    started = time.time()
    save_model(model, tmp_path / "first.keras")
    wait_for_the_next_zip_time(started)
    save_model(model, tmp_path / "second.keras")
    first = (tmp_path / "first.keras").read_bytes()
    assert (tmp_path / "second.keras").read_bytes() == first

    # Keras alone loads it, without this project's layers, and it predicts as the model does.
    with zipfile.ZipFile(tmp_path / "first.keras") as archive:
        assert "mnist_cnn" not in archive.read("config.json").decode()
    images, _ = synthetic_digits(32, seed=4)
    loaded = keras.models.load_model(tmp_path / "first.keras")
    np.testing.assert_array_equal(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0)
    )

    # One weight changed by a little changes the file.
    kernel = model.get_layer("fc2").kernel
    kernel.assign(kernel.numpy() + np.eye(*kernel.shape, dtype="float32") * 1e-3)
    save_model(model, tmp_path / "changed.keras")
    assert (tmp_path / "changed.keras").read_bytes() != first


def test_save_model_stamps_source_date_epoch(tmp_path, monkeypatch):
    stamp = 1_700_000_000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(stamp))
    save_model(build(regularized=False), tmp_path / "model.keras")
    moment = time.gmtime(stamp)
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        # Zip time stamps count whole pairs of seconds.
        expected = (*moment[:5], moment[5] // 2 * 2)
        assert {entry.date_time for entry in archive.infolist()} == {expected}
        metadata = json.loads(archive.read("metadata.json"))
    assert metadata["date_saved"] == time.strftime("%Y-%m-%d@%H:%M:%S", moment)


def test_load_model_reads_what_save_model_wrote(tmp_path):
    model = build(regularized=False)
    save_model(model, tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    for weight, expected in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(weight, expected)


def not_a_zip(path):
    path.write_text("not a model\n")


def a_zip_without_a_model(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "no model here")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (None, "no such model file"),
        (not_a_zip, "not a Keras model"),
        (a_zip_without_a_model, "not a loadable Keras model"),
    ],
)
def test_load_model_errors_name_the_file(tmp_path, make, reason):
    path = tmp_path / "models" / "broken.keras"
    path.parent.mkdir()
    if make is not None:
        make(path)
    with pytest.raises(StageError, match=f"^{re.escape(str(path))}: {reason}"):
        load_model(path)
