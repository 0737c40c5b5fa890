"""tf.distribute for real on CPU: the custom loop against fit, mirrored replicas, two workers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from mnist_cnn import data, distribute, training
from mnist_cnn.io import StageError
from mnist_cnn.model import load_model
from mnist_cnn.params import TrainConfig
from tests.conftest import ROOT, dvc, synthetic_digits
from tests.distribute_processes import run_mirrored, run_two_workers, start_stage, wait_all

# 320 images in batches of 32: 10 steps an epoch, enough for the weights to move by 1e-3 to 1.
IMAGES, BATCH_SIZE, SEED = 320, 32, 1
STEPS = IMAGES // BATCH_SIZE


@pytest.fixture
def restore_policy():
    """The dtype policy is process-wide: put back the one the test started with."""
    policy = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(policy)


def train_one_device(
    path: str,
    *,
    policy: str,
    epochs: int,
    shuffle: bool,
    fit_steps: int | None = None,
    scale_loss: bool = True,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train the regularized model (dropout, fused batch norm, cosine schedule) one way.

    `scale_loss=False` makes the custom loop skip the loss scale, as a loop that forgot it would.
    """
    # The project trains with op determinism on; the two paths then differ only in their code.
    tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(SEED)
    config = TrainConfig.load(ROOT / "params.yaml").replace(batch_size=BATCH_SIZE)
    model = training.compile_model(
        config, regularized=True, total_steps=epochs * STEPS, steps_per_execution=1
    )
    images, labels = synthetic_digits(IMAGES, seed=0)
    train = data.make_dataset(images, labels, batch_size=BATCH_SIZE, shuffle=shuffle, seed=3)
    if not scale_loss:
        model.optimizer.scale_loss = lambda loss: loss
    if path == "fit":
        history = model.fit(
            train, epochs=epochs, steps_per_epoch=fit_steps, shuffle=False, verbose=0
        )
    else:
        history = distribute.fit_custom(
            model,
            tf.distribute.get_strategy(),
            train_data=train,
            validation_data=None,
            epochs=epochs,
            callbacks=[],
            verbose=0,
        )
    return model, history.history


def max_difference(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(a - b))) for a, b in zip(first, second, strict=True))


# Tolerances. Both paths run the same kernels in the same order on one device under op
# determinism, and measured bit-identical weights (difference 0.0) in float32 and float16.
# float32: one ulp of difference in a gradient (say, from a mean reduced in another order)
# changes an Adam step of about lr = 1e-3 by about 1e-3 * 1e-7; 1e-6 leaves room for 10 steps
# of that even where Adam amplifies it, and is 1000x below the 1e-3 that the weights move.
# float16: a rounding difference is 1e-3 relative there, so 1e-3 * 1e-3 per step: 1e-4.
# A loop that feeds other batches, skips the loss scale or reduces the loss wrongly misses
# these by 1e-2 or more (the loop without the loss scale below: 0.05).
WEIGHT_TOLERANCE = {"float32": 1e-6, "mixed_float16": 1e-4}
LOSS_TOLERANCE = {"float32": 1e-6, "mixed_float16": 1e-3}


def assert_same_training(fit, custom, policy: str) -> None:
    (fit_model, fit_history), (custom_model, custom_history) = fit, custom
    difference = max_difference(fit_model.get_weights(), custom_model.get_weights())
    assert difference <= WEIGHT_TOLERANCE[policy], difference
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(
            custom_history[key], fit_history[key], rtol=LOSS_TOLERANCE[policy], err_msg=key
        )


def test_custom_loop_ends_one_epoch_where_fit_does(restore_policy):
    fit = train_one_device("fit", policy="float32", epochs=1, shuffle=True)
    custom = train_one_device("custom", policy="float32", epochs=1, shuffle=True)
    assert_same_training(fit, custom, "float32")


# From the second epoch on, fit reads a reshuffling dataset's orders 1, 3, 5...: without
# steps_per_epoch, Keras's EpochIterator opens the next epoch's iterator at the end of an epoch
# and opens another at the start of the next, and each opening draws a new order. The custom
# loop opens one an epoch. Given steps_per_epoch, fit reuses the iterator it opened, as here.
@pytest.mark.parametrize(("shuffle", "fit_steps"), [(False, None), (True, STEPS)])
def test_custom_loop_ends_two_epochs_where_fit_does(restore_policy, shuffle, fit_steps):
    fit = train_one_device("fit", policy="float32", epochs=2, shuffle=shuffle, fit_steps=fit_steps)
    custom = train_one_device("custom", policy="float32", epochs=2, shuffle=shuffle)
    assert_same_training(fit, custom, "float32")


def test_custom_loop_scales_the_loss_under_mixed_float16(restore_policy):
    fit = train_one_device("fit", policy="mixed_float16", epochs=1, shuffle=True)
    custom = train_one_device("custom", policy="mixed_float16", epochs=1, shuffle=True)
    # The optimizer divides the gradients by the loss scale (2**15) before Adam sees them.
    assert isinstance(custom[0].optimizer, keras.optimizers.LossScaleOptimizer)
    convolutions = [layer for layer in custom[0].layers if isinstance(layer, keras.layers.Conv2D)]
    assert {layer.compute_dtype for layer in convolutions} == {"float16"}
    assert_same_training(fit, custom, "mixed_float16")

    # Without optimizer.scale_loss the float16 gradients are 2**15 times smaller: many
    # underflow to 0 and the rest are divided by the scale anyway. Such a loop learns far less
    # (measured: loss 2.13 against fit's 1.23, weights 0.05 away), which the check above catches.
    unscaled = train_one_device(
        "custom", policy="mixed_float16", epochs=1, shuffle=True, scale_loss=False
    )
    with pytest.raises(AssertionError):
        assert_same_training(fit, unscaled, "mixed_float16")
    assert unscaled[1]["loss"][0] > fit[1]["loss"][0] + 0.2


def fallback_line() -> str:
    """What training.run prints when it drops params.yaml's steps_per_execution for 2 replicas."""
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["steps_per_execution"]
    assert shipped > 1, "params.yaml no longer ships several steps per call"
    return (
        f"train: 2 replicas, so 1 step per call instead of train.steps_per_execution={shipped} "
        "(keras-team/keras#19246)"
    )


# The baseline has neither batch norm nor dropout, so the two replicas' summed gradients are
# the full batch's up to the order of float additions. Each epoch is one full batch of 256:
# under a strategy, fit first builds the model from a batch of its own iterator, so it draws
# another shuffled order than on one device, and within a full batch the order changes only
# the rounding. Measured after 4 steps: 6e-8 apart, while the weights moved 2.4e-3. 1e-5 is
# 150x the rounding and 1/200 of the movement, which replicas training apart would change.
MIRRORED_TOLERANCE = 1e-5


def test_mirrored_baseline_ends_where_one_device_does(tmp_path):
    results, output, weights = run_mirrored(
        tmp_path,
        "baseline",
        images=256,
        batch_size=256,
        epochs=4,
        strategies=["mirrored", "default"],
    )
    assert output.splitlines().count(fallback_line()) == 1, output
    mirrored, default = results["mirrored"], results["default"]
    assert (mirrored["replicas"], default["replicas"]) == (2, 1)
    assert mirrored["replica_spread"] == 0.0
    difference = max_difference(weights["mirrored"], weights["default"])
    assert difference <= MIRRORED_TOLERANCE, difference
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(
            mirrored["history"][key], default["history"][key], rtol=1e-5, err_msg=key
        )


# Each replica's batch norm normalises with its own half-batch statistics, so the regularized
# model legitimately trains differently on two replicas: it must learn, not match. Measured
# validation accuracy after 2 epochs of 16 steps: 0.42 then 1.0 (one device: 0.57, 0.84).
def test_mirrored_regularized_model_learns(tmp_path):
    results, output, _ = run_mirrored(
        tmp_path, "regularized", images=512, batch_size=32, epochs=2, strategies=["mirrored"]
    )
    assert output.splitlines().count(fallback_line()) == 1, output
    mirrored = results["mirrored"]
    assert mirrored["replicas"] == 2
    assert mirrored["replica_spread"] == 0.0
    assert max(mirrored["history"]["val_accuracy"]) > 0.7, mirrored["history"]


def train_two_ways(project: Path, *, batch_size: int) -> tuple[list[str], keras.Model, keras.Model]:
    """Train the baseline for 2 epochs as two workers, and as one process with the same loop.

    Returns the workers' outputs, the chief's saved model and the single process's one.
    """
    dvc(project, "repro", "split")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(strategy="multi_worker", epochs=2, batch_size=batch_size)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    # Without TF_CONFIG the strategy is one worker: one replica takes the whole global batch.
    single = start_stage(project, "single", None)
    outputs = run_two_workers(project)
    wait_all([single], timeout=900)
    assert single.returncode == 0, (project / "single.log").read_text()[-3000:]
    chief, one = (load_model(project / f"{name}/baseline.keras") for name in ("out0", "single"))
    return outputs, chief, one


# Each worker's replica takes half of each global batch of 32 (the last one: 13 of 26), and the
# all-reduced gradients are the global batch's up to the order of float additions. Measured:
# 1.1e-7 apart, while the weights moved 8.6e-3 from their initial values. 1e-5 is 90x the
# rounding and 1/800 of the movement, which a wrong split or a missing all-reduce would change.
WORKERS_TOLERANCE = 1e-5


def test_two_workers_train_like_one_process_and_only_the_chief_writes(project):
    outputs, chief, one = train_two_ways(project, batch_size=32)
    digests = [re.findall(r"weights sha256 ([0-9a-f]{16})", output) for output in outputs]
    assert len(digests[0]) == 1 and digests[0] == digests[1], outputs
    assert not (project / "out1").exists(), "a non-chief worker wrote files"
    assert "not the chief worker; wrote nothing" in outputs[1]
    assert "not the chief worker" not in outputs[0]
    difference = max_difference(chief.get_weights(), one.get_weights())
    assert difference <= WORKERS_TOLERANCE, difference

    # The saved epoch is the best one on the validation curve that dvclive plotted, and the
    # saved model has that epoch's validation accuracy.
    metrics = json.loads((project / "out0/live/metrics.json").read_text())["baseline"]
    curve = np.loadtxt(
        project / "out0/live/plots/metrics/eval/accuracy.tsv", skiprows=1, usecols=1, ndmin=1
    )
    assert metrics["epochs_trained"] == len(curve) == 2
    assert metrics["saved_epoch"] == 1 + int(np.argmax(curve))
    assert metrics["val_accuracy"] == pytest.approx(curve[metrics["saved_epoch"] - 1], abs=1e-7)
    images = np.load(project / "data/split/validation_images.npy")
    labels = np.load(project / "data/split/validation_labels.npy")
    predicted = np.argmax(chief.predict(images, verbose=0), axis=-1)
    assert np.mean(predicted == labels) == pytest.approx(metrics["val_accuracy"], abs=1e-6)
    single = json.loads((project / "single/live/metrics.json").read_text())["baseline"]
    assert (single["saved_epoch"], single["val_accuracy"]) == (
        metrics["saved_epoch"],
        pytest.approx(metrics["val_accuracy"], abs=1e-6),
    )


# With an odd global batch the replicas get 14 and 13 images; each must divide its sum by 27.
# tf.nn.compute_average_loss divides by 28 and 26 instead: 9.7e-3 from one process, nearly all
# of the 1.07e-2 the weights moved. Dividing by the all-reduced count of images: 2e-6.
def test_two_workers_train_like_one_process_with_an_odd_global_batch(project):
    _, chief, one = train_two_ways(project, batch_size=27)
    difference = max_difference(chief.get_weights(), one.get_weights())
    assert difference <= WORKERS_TOLERANCE, difference


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
    assert distribute.is_chief(tf_config) is expected


def test_is_chief_refuses_malformed_tf_config():
    with pytest.raises(StageError, match=r"^TF_CONFIG must be JSON with 'cluster' and 'task'"):
        distribute.is_chief('{"task": {"type": "worker"}}')
