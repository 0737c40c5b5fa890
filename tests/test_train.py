"""Model builders and the training seam, on tiny synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from stages.params import ParamsError
from stages.train import build_model, make_dataset, run


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


def test_build_model_refuses_bad_dropout():
    with pytest.raises(ValueError, match=r"dropout_rate must be a float in \[0, 1\); got 1.5"):
        build_model(regularized=True, dropout_rate=1.5)


def test_dataset_batches_stay_uint8_and_cover_every_image():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1).repeat(28, 1).repeat(28, 2)
    labels = np.arange(10, dtype=np.uint8)
    batches = list(make_dataset(images, labels, batch_size=4, shuffle=True, seed=1))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    assert batches[0][0].dtype == "uint8"
    seen = np.concatenate([x.numpy()[:, 0, 0] for x, _ in batches])
    assert sorted(seen) == list(range(10))
    np.testing.assert_array_equal(seen, np.concatenate([y.numpy() for _, y in batches]))


def synthetic(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.uint8)
    images = rng.integers(0, 30, (count, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 4 + 2 * label : 6 + 2 * label, 6:22] = 255
    return images, labels


@pytest.mark.parametrize("regularized", [False, True])
def test_run_trains_end_to_end_and_is_deterministic(regularized):
    x, y = synthetic(200, seed=0)
    vx, vy = synthetic(50, seed=1)
    common = dict(
        train_images=x,
        train_labels=y,
        validation_images=vx,
        validation_labels=vy,
        regularized=regularized,
        epochs=3,
        batch_size=20,
        learning_rate=0.003,
        seed=5,
        verbose=0,
    )
    model, history = run(**common)
    assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history.history["loss"]) == 3
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.predict(vx, verbose=0).shape == (50, 10)
    _, again = run(**common)
    assert again.history == history.history


def test_run_refuses_batch_larger_than_training_set():
    x, y = synthetic(10, seed=0)
    with pytest.raises(ParamsError, match="'train.batch_size' parameter must be at most the 10"):
        run(
            train_images=x,
            train_labels=y,
            validation_images=None,
            validation_labels=None,
            regularized=False,
            epochs=1,
            batch_size=11,
            learning_rate=0.001,
            seed=0,
        )
