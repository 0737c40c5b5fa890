"""Model builders and the training seam, on tiny synthetic data."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn.io import StageError
from mnist_cnn.params import ParamsError
from stages.train import (
    FusedBatchNormalization,
    build_model,
    is_chief,
    make_dataset,
    plain_layers,
    run,
)
from tests.conftest import synthetic_digits


def trainable_count(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def layer_types(model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_baseline_is_the_articles_architecture():
    model = build_model(regularized=False)
    assert trainable_count(model) == 176_286
    assert model.input.dtype == "uint8" and tuple(model.input.shape) == (None, 28, 28)
    assert tuple(model.output.shape) == (None, 10)
    assert tuple(model.get_layer("pool1").output.shape) == (None, 13, 13, 12)
    assert tuple(model.get_layer("pool2").output.shape) == (None, 6, 6, 16)
    assert model.get_layer("conv1").activation.__name__ == "linear"
    # Linear logits: the article's ReLU on the output layer was a bug.
    assert model.get_layer("logits").activation.__name__ == "linear"
    assert "BatchNormalization" not in layer_types(model)
    assert "Dropout" not in layer_types(model)


def test_regularized_dropout_placement():
    as_run = build_model(regularized=True, dropout_rate=0.3)
    assert layer_types(as_run).count("BatchNormalization") == 2
    assert [layer.name for layer in as_run.layers if "dropout" in layer.name] == ["dropout2"]
    assert as_run.get_layer("dropout2").rate == 0.3
    assert as_run.get_layer("bn1").momentum == 0.9
    # Batch norm adds 2 trainable weights per channel: 2 * (12 + 16).
    assert trainable_count(as_run) == 176_286 + 56
    as_written = build_model(regularized=True, dropout_after_first_pool=True)
    assert layer_types(as_written).count("Dropout") == 2


def test_fused_batch_norm_trains_like_keras_batch_norm_and_saves_as_it(tmp_path):
    images, labels = synthetic_digits(64, seed=3)
    # No dropout, so that both models see the same forward pass.
    plain = build_model(regularized=True, dropout_rate=0.0)
    fused = build_model(regularized=True, dropout_rate=0.0, fused_batch_norm=True)
    assert layer_types(fused).count("FusedBatchNormalization") == 2
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
    moving = [w.name for w in fused.weights].index("moving_variance")
    assert not np.allclose(weights[moving], 1.0)
    for weight, plain_weight in zip(weights, plain_weights, strict=True):
        np.testing.assert_allclose(weight, plain_weight, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused(images), plain(images), rtol=1e-5, atol=1e-5)

    # What the stage saves has Keras's own layers, loadable without this project's code.
    saved = plain_layers(fused)
    assert "FusedBatchNormalization" not in layer_types(saved)
    assert layer_types(saved).count("BatchNormalization") == 2
    assert saved.name == "regularized"
    saved.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    expected = fused.predict(images, verbose=0)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)


@pytest.mark.parametrize("options", [{"scale": False}, {"center": False}, {"synchronized": True}])
def test_fused_batch_norm_falls_back_to_keras_where_the_kernel_does_not_fit(options):
    inputs = tf.reshape(tf.range(2 * 3 * 3 * 4, dtype="float32") ** 0.5, (2, 3, 3, 4))
    plain = keras.layers.BatchNormalization(momentum=0.9, **options)
    fused = FusedBatchNormalization(momentum=0.9, **options)
    np.testing.assert_allclose(fused(inputs, training=True), plain(inputs, training=True))
    for weight, plain_weight in zip(fused.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(weight, plain_weight)


def test_fused_batch_norm_trains_under_mixed_precision():
    try:
        _, history = run(**fit_arguments(100, regularized=True, epochs=2, mixed_precision=True))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_build_model_refuses_bad_dropout():
    with pytest.raises(ValueError, match=r"dropout_rate must be a float in \[0, 1\); got 1.5"):
        build_model(regularized=True, dropout_rate=1.5)


def test_dataset_batches_stay_uint8_and_cover_every_image():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1).repeat(28, 1).repeat(28, 2)
    labels = np.arange(10, dtype=np.uint8)
    dataset = make_dataset(images, labels, batch_size=4, shuffle=True, seed=1)
    # Autotuning's thread made Keras wait up to half a minute at the end of an epoch.
    assert dataset.options().autotune.enabled is False
    batches = list(dataset)
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    assert batches[0][0].dtype == "uint8"
    seen = np.concatenate([x.numpy()[:, 0, 0] for x, _ in batches])
    assert sorted(seen) == list(range(10))
    np.testing.assert_array_equal(seen, np.concatenate([y.numpy() for _, y in batches]))


def fit_arguments(count: int, **overrides) -> dict:
    """Arguments of run() on `count` synthetic training images and 50 validation images."""
    x, y = synthetic_digits(count, seed=0)
    vx, vy = synthetic_digits(50, seed=1)
    arguments = dict(
        train_images=x,
        train_labels=y,
        validation_images=vx,
        validation_labels=vy,
        regularized=False,
        epochs=3,
        batch_size=20,
        learning_rate=0.003,
        seed=5,
        verbose=0,
    )
    return {**arguments, **overrides}


@pytest.mark.parametrize("regularized", [False, True])
def test_run_trains_end_to_end_and_is_deterministic(regularized):
    arguments = fit_arguments(200, regularized=regularized)
    model, history = run(**arguments)
    assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history.history["loss"]) == 3
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.predict(arguments["validation_images"], verbose=0).shape == (50, 10)
    _, again = run(**arguments)
    assert again.history == history.history


def test_run_refuses_batch_larger_than_training_set():
    with pytest.raises(ParamsError, match="'train.batch_size' parameter must be at most the 10"):
        run(**fit_arguments(10, batch_size=11))


def test_restore_best_weights_keeps_the_best_validation_epoch():
    arguments = fit_arguments(200, epochs=6, learning_rate=0.03)
    model, history = run(**arguments, restore_best_weights=True)
    predictions = model.predict(arguments["validation_images"], verbose=0).argmax(axis=1)
    accuracy = float(np.mean(predictions == arguments["validation_labels"]))
    assert accuracy == pytest.approx(max(history.history["val_accuracy"]), abs=1e-6)
    last, last_history = run(**arguments, restore_best_weights=False)
    predictions = last.predict(arguments["validation_images"], verbose=0).argmax(axis=1)
    accuracy = float(np.mean(predictions == arguments["validation_labels"]))
    assert accuracy == pytest.approx(last_history.history["val_accuracy"][-1], abs=1e-6)


@pytest.mark.parametrize(("schedule", "final"), [("constant", 0.003), ("cosine", 0.0)])
def test_learning_rate_schedule_ends_where_it_should(schedule, final):
    # 200 images in batches of 20 for 3 epochs: the cosine reaches 0 at the 30th step.
    model, history = run(**fit_arguments(200, learning_rate_schedule=schedule))
    assert int(model.optimizer.iterations) == 30
    assert float(model.optimizer.learning_rate) == pytest.approx(final, abs=1e-9)
    # The rate at the end of each epoch is logged, for the history and for dvclive.
    rates = history.history["learning_rate"]
    assert len(rates) == 3 and rates[-1] == pytest.approx(final, abs=1e-9)
    if schedule == "cosine":
        assert 0.003 > rates[0] > rates[1] > rates[2]


def test_run_refuses_unknown_learning_rate_schedule():
    with pytest.raises(ValueError, match="^learning_rate_schedule must be one of constant, cosine"):
        run(**fit_arguments(20, learning_rate_schedule="step"))


@pytest.mark.parametrize(
    ("tf_config", "expected"),
    [
        (None, True),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}', True),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}', False),
        (
            '{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, '
            '"task": {"type": "worker", "index": 0}}',
            False,
        ),
        (
            '{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, '
            '"task": {"type": "chief", "index": 0}}',
            True,
        ),
    ],
)
def test_is_chief_reads_tf_config(tf_config, expected):
    assert is_chief(tf_config) is expected


def test_is_chief_refuses_malformed_tf_config():
    with pytest.raises(StageError, match=r"^TF_CONFIG must be JSON with 'cluster' and 'task'"):
        is_chief('{"task": {"type": "worker"}}')
