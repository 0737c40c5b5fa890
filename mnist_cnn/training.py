"""Build, compile and train one model from a TrainConfig: the test seam of the train stage."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mnist_cnn import callbacks as project_callbacks
from mnist_cnn import data, distribute, runtime
from mnist_cnn.model import build_model
from mnist_cnn.params import ParamsError, TrainConfig

Arrays = tuple[np.ndarray, np.ndarray]


def describe_devices() -> str:
    """The devices TensorFlow trains on, in a few words (recorded with every run)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [
            tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in gpus
        ]
        return f"GPU x{len(gpus)} ({', '.join(names)})"
    model_name = "CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    return f"CPU ({model_name}, {os.cpu_count()} cores)"


def describe_environment() -> str:
    """The devices and library versions that train, recorded with every run's metrics."""
    return f"{describe_devices()}; TensorFlow {tf.__version__}; Keras {keras.__version__}"


def make_learning_rate(
    config: TrainConfig, *, total_steps: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's learning rate: fixed (the article's), or cosine-decayed to 0 at the end."""
    if config.learning_rate_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, total_steps)
    return config.learning_rate


def compile_model(
    config: TrainConfig, *, regularized: bool, total_steps: int, steps_per_execution: int
) -> keras.Model:
    """The model for `config`, compiled with Adam and sparse cross-entropy on its logits.

    Call it inside the strategy's scope. XLA is on only on a GPU and without op determinism:
    Keras turns it off whenever determinism is on.
    """
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    jit_compile = on_gpu if config.jit_compile == "auto" else config.jit_compile
    model = build_model(
        regularized=regularized,
        dropout_rate=config.dropout_rate,
        dropout_after_first_pool=config.dropout_after_first_pool,
        batch_norm_momentum=config.batch_norm_momentum,
        fused_batch_norm=config.fused_batch_norm,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate=make_learning_rate(config, total_steps=total_steps)
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
        jit_compile=bool(jit_compile) and not config.deterministic,
    )
    return model


def run(
    config: TrainConfig,
    *,
    regularized: bool,
    train: Arrays,
    validation: Arrays | None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int | str = "auto",
) -> tuple[keras.Model, keras.callbacks.History]:
    """Build, compile and fit one model on (images, labels) arrays, memory-mapped or not.

    With `restore_best_weights` and validation data, the returned model holds the weights
    of the epoch with the best validation accuracy (never the test set's).
    """
    train_images, train_labels = train
    if config.batch_size > len(train_images):
        raise ParamsError(
            f"The 'train.batch_size' parameter must be at most the {len(train_images)} "
            f"training images; got {config.batch_size}."
        )
    runtime.set_threads(config.threads)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    mixed = on_gpu if config.mixed_precision == "auto" else config.mixed_precision
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    strategy = distribute.make_strategy(config.strategy)
    steps_per_execution = config.steps_per_execution
    if strategy.num_replicas_in_sync > 1 and steps_per_execution > 1:
        # Keras 3's fit crashes with several steps per call over several replicas
        # (keras-team/keras#19246).
        print(
            f"train: {strategy.num_replicas_in_sync} replicas, so 1 step per call instead of "
            f"train.steps_per_execution={steps_per_execution} (keras-team/keras#19246)",
            flush=True,
        )
        steps_per_execution = 1
    total_steps = config.epochs * math.ceil(len(train_images) / config.batch_size)
    with strategy.scope():
        model = compile_model(
            config,
            regularized=regularized,
            total_steps=total_steps,
            steps_per_execution=steps_per_execution,
        )
    if verbose:
        model.summary()
    train_data = data.make_dataset(
        train_images, train_labels, batch_size=config.batch_size, shuffle=True, seed=config.seed
    )
    validation_data = None
    if validation is not None and len(validation[0]):
        validation_data = data.make_dataset(
            *validation, batch_size=config.batch_size, shuffle=False
        )
    callbacks = [project_callbacks.LogLearningRate(), *(callbacks or [])]
    if config.restore_best_weights and validation_data is not None:
        # Patience of every epoch: pick the best epoch on validation, never stop early.
        callbacks.insert(
            0,
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy",
                mode="max",
                patience=config.epochs,
                restore_best_weights=True,
                verbose=1 if verbose else 0,
            ),
        )
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        history = distribute.fit_custom(
            model,
            strategy,
            train_data=train_data,
            validation_data=validation_data,
            epochs=config.epochs,
            callbacks=callbacks,
            verbose=verbose,
        )
    else:
        history = model.fit(
            train_data,
            validation_data=validation_data,
            epochs=config.epochs,
            callbacks=callbacks,
            verbose=verbose,
            # The dataset shuffles itself, seeded; fit must not try to.
            shuffle=False,
        )
    return model, history
