"""training.run end to end with the shipped train params, on synthetic digits."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_framework_config

from mnist_cnn import params
from mnist_cnn.params import ParamsError, TrainConfig
from mnist_cnn.training import compile_model, run
from tests.conftest import ROOT, synthetic_digits

SHIPPED = TrainConfig.load(ROOT / "params.yaml")
# With these params both models reach 1.0 on validation in 3 epochs, for the seeds 42 and 0
# to 3; chance is 0.1.
ACCURACY_FLOOR = 0.95


class WeightsPerEpoch(keras.callbacks.Callback):
    """Records the weights, the optimizer's step and its learning rate at each epoch's end."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[list[np.ndarray]] = []
        self.iterations: list[int] = []
        self.learning_rates: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.weights.append(self.model.get_weights())
        self.iterations.append(int(self.model.optimizer.iterations))
        self.learning_rates.append(float(self.model.optimizer.learning_rate))


def accuracy(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(model.predict(images, verbose=0).argmax(axis=1) == labels))


def same_weights(first: list[np.ndarray], second: list[np.ndarray]) -> bool:
    return len(first) == len(second) and all(
        np.array_equal(a, b) for a, b in zip(first, second, strict=True)
    )


def test_shipped_params_are_the_ones_these_tests_rely_on():
    assert SHIPPED.steps_per_execution == 32
    assert SHIPPED.learning_rate_schedule == "cosine"
    assert SHIPPED.restore_best_weights and SHIPPED.deterministic and SHIPPED.fused_batch_norm


DIGITS = {"train": synthetic_digits(400, seed=0), "validation": synthetic_digits(200, seed=1)}
LEARNING = SHIPPED.replace(epochs=3, batch_size=32)


def memory_mapped(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """DIGITS saved as .npy files in `folder` and loaded back memory-mapped, as the stage does."""
    mapped = {}
    for part, arrays in DIGITS.items():
        for kind, array in zip(("images", "labels"), arrays, strict=True):
            np.save(folder / f"{part}_{kind}.npy", array)
        mapped[part] = tuple(
            np.load(folder / f"{part}_{kind}.npy", mmap_mode="r") for kind in ("images", "labels")
        )
    return mapped


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[tuple[keras.Model, keras.callbacks.History]]:
    """The regularized model trained twice with the same params: on DIGITS in memory, then on
    memory-mapped copies of them, the stage's way of reading its data."""
    mapped = memory_mapped(tmp_path_factory.mktemp("digits"))
    assert all(isinstance(array, np.memmap) for arrays in mapped.values() for array in arrays)
    return [
        run(
            LEARNING,
            regularized=True,
            train=data["train"],
            validation=data["validation"],
            verbose=0,
        )
        for data in (DIGITS, mapped)
    ]


def test_run_learns_the_digits(two_runs):
    model, history = two_runs[0]
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert len(history.history["loss"]) == 3
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert accuracy(model, *DIGITS["validation"]) >= ACCURACY_FLOOR


def test_run_is_deterministic_on_arrays_in_memory_or_memory_mapped(two_runs):
    # Non-determinism, or memory-mapped arrays read differently, would break the equality.
    (model, history), (again, again_history) = two_runs
    assert again_history.history == history.history
    assert same_weights(again.get_weights(), model.get_weights())


def test_run_refuses_a_batch_larger_than_the_training_set():
    images, labels = synthetic_digits(10, seed=0)
    message = "The 'train.batch_size' parameter must be at most the 10 training images; got 11."
    with pytest.raises(ParamsError, match=f"^{re.escape(message)}$"):
        run(
            SHIPPED.replace(batch_size=11),
            regularized=False,
            train=(images, labels),
            validation=None,
            verbose=0,
        )


def majority_digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Training digits that are 80 % zeros, and validation digits 1 to 9 all labelled 0.

    The model first learns that 0 is common and calls every validation digit 0, then learns
    the other digits and gets them "wrong": the best validation epoch comes early, on any seed.
    """
    images, labels = synthetic_digits(2000, seed=0)
    zeros, others = np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)
    train = np.concatenate([zeros[:120], others[:30]])
    validation = others[-100:]
    return (images[train], labels[train]), (images[validation], np.zeros(100, np.uint8))


MAJORITY = majority_digits()
# Two steps per epoch, so that the best epoch need not be the first.
CONSTANT = SHIPPED.replace(epochs=8, batch_size=75, learning_rate_schedule="constant", seed=0)


@pytest.fixture(scope="module")
def best_and_last() -> dict[bool, tuple[keras.Model, keras.callbacks.History, WeightsPerEpoch]]:
    """The same training with and without restore_best_weights, keyed by that knob."""
    results = {}
    for restore in (True, False):
        recorder = WeightsPerEpoch()
        model, history = run(
            CONSTANT.replace(restore_best_weights=restore),
            regularized=False,
            train=MAJORITY[0],
            validation=MAJORITY[1],
            callbacks=[recorder],
            verbose=0,
        )
        results[restore] = (model, history, recorder)
    return results


def test_restore_best_weights_returns_the_best_validation_epoch(best_and_last):
    model, history, recorder = best_and_last[True]
    scores = history.history["val_accuracy"]
    best = int(np.argmax(scores))
    # The case this test is for: a later epoch is worse on validation than the best one.
    assert scores[-1] < scores[best], scores
    assert same_weights(model.get_weights(), recorder.weights[best])
    assert not same_weights(model.get_weights(), recorder.weights[-1])
    assert accuracy(model, *MAJORITY[1]) == pytest.approx(scores[best], abs=1e-6)


def test_without_restore_best_weights_run_returns_the_last_epoch(best_and_last):
    _, best_history, best_recorder = best_and_last[True]
    model, history, recorder = best_and_last[False]
    assert history.history == best_history.history
    assert same_weights(model.get_weights(), recorder.weights[-1])
    assert same_weights(model.get_weights(), best_recorder.weights[-1])
    assert accuracy(model, *MAJORITY[1]) == pytest.approx(history.history["val_accuracy"][-1])


def test_constant_schedule_keeps_the_learning_rate(best_and_last):
    model, history, recorder = best_and_last[False]
    # The rate is a float32 variable: equal up to its rounding.
    expected = [pytest.approx(CONSTANT.learning_rate, rel=1e-7)] * CONSTANT.epochs
    assert history.history["learning_rate"] == expected
    assert recorder.learning_rates == expected
    assert float(model.optimizer.learning_rate) == pytest.approx(CONSTANT.learning_rate)


def test_cosine_schedule_reaches_zero_at_the_last_step_with_the_shipped_steps_per_execution():
    # 455 images in batches of 10: 46 steps per epoch, the last one of 5 images; 138 in all.
    # Neither is a multiple of the 32 steps that one call into TensorFlow runs.
    config = SHIPPED.replace(epochs=3, batch_size=10)
    steps = math.ceil(455 / 10)
    assert steps % config.steps_per_execution and 3 * steps % config.steps_per_execution
    recorder = WeightsPerEpoch()
    model, history = run(
        config,
        regularized=False,
        train=synthetic_digits(455, seed=0),
        validation=synthetic_digits(50, seed=1),
        callbacks=[recorder],
        verbose=0,
    )
    assert int(model.optimizer.iterations) == 3 * steps
    assert recorder.iterations == [steps, 2 * steps, 3 * steps]
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-12)
    # Keras's CosineDecay to 0 over every step: rate * (1 + cos(pi * step / total)) / 2.
    expected = [
        config.learning_rate * (1 + math.cos(math.pi * step / (3 * steps))) / 2
        for step in (steps, 2 * steps, 3 * steps)
    ]
    assert history.history["learning_rate"] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert recorder.learning_rates == pytest.approx(expected, rel=1e-6, abs=1e-12)


@pytest.fixture
def without_op_determinism():
    """Op determinism off for the test: Keras itself turns XLA off when it is on."""
    enabled = tf_framework_config.is_op_determinism_enabled()
    tf_framework_config.disable_op_determinism()
    yield
    if enabled:
        tf.config.experimental.enable_op_determinism()


def test_compile_model_never_turns_xla_on_under_determinism(without_op_determinism):
    def jit(**changes) -> bool:
        # dataclasses.replace skips validation, to reach compile_model's own guard.
        config = dataclasses.replace(SHIPPED, **changes)
        model = compile_model(config, regularized=True, total_steps=10, steps_per_execution=32)
        return model.jit_compile

    assert jit(jit_compile=True, deterministic=True) is False
    # The validated way to change a config refuses the combination outright.
    with pytest.raises(ParamsError, match="'train.jit_compile' parameter must be auto or false"):
        SHIPPED.replace(jit_compile=True)
    assert jit(jit_compile=True, deterministic=False) is True
    # auto: XLA on a GPU only.
    assert jit() is bool(tf.config.list_physical_devices("GPU")) is False
    assert jit(jit_compile=False, deterministic=False) is False


def test_params_refuse_xla_under_determinism():
    shipped = params.load(ROOT / "params.yaml")
    shipped["train"]["jit_compile"] = True
    with pytest.raises(ParamsError, match="'train.jit_compile' parameter must be auto or false"):
        params.validate(shipped)
    shipped["train"]["deterministic"] = False
    assert params.validate(shipped)["train"]["jit_compile"] is True
