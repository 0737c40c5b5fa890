"""Train the article's CNN, plain (baseline) or with batch norm and dropout (regularized)."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow enables its oneDNN CPU kernels by default only on CPUs with AVX-512 VNNI/BF16 or
# AMX. On AVX2 CPUs it leaves them off, yet they train this model twice as fast there (see the
# README's performance section). Set TF_ENABLE_ONEDNN_OPTS=0 to use TF's own kernels.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

from stages import io, params  # noqa: E402

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
MODEL_NAMES = ("baseline", "regularized")
LEARNING_RATE_SCHEDULES = ("constant", "cosine")
# Batches gathered ahead of the model: enough to cover a hiccup of the gathering thread.
PREFETCH_BATCHES = 8


class FusedBatchNormalization(layers.BatchNormalization):
    """Keras's batch normalisation, trained with TensorFlow's fused kernel.

    The same math as the base layer, up to float rounding: outputs are normalised with the
    batch's biased variance, and the moving averages are updated with it too. Keras 3 computes
    it op by op, which on small tensors costs more than the fused kernel (see the README's
    performance section).
    Inference, and any input the fused kernel does not take, goes through the base layer.
    """

    def call(self, inputs: tf.Tensor, training: bool | None = None, mask: Any = None) -> Any:
        # The fused kernel takes NHWC tensors, both gamma and beta, and per-replica statistics.
        fusable = (
            len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and mask is None
            and self.scale
            and self.center
            and not self.renorm
            and not self.synchronized
        )
        if not (training and self.trainable and fusable):
            return super().call(inputs, training=training, mask=mask)
        # Batch norm overflows in float16, so it computes in float32, as the base layer does.
        x = tf.cast(inputs, "float32")
        outputs, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            # gamma and beta stay float32 under mixed precision (Keras creates them so).
            scale=self.gamma,
            offset=self.beta,
            mean=tf.zeros([0]),
            variance=tf.zeros([0]),
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=True,
        )
        # The kernel returns the variance divided by n - 1; Keras averages the one over n.
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), "float32")
        variance = unbiased_variance * ((count - 1.0) / count)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        return tf.cast(outputs, self.compute_dtype)


def plain_layers(model: keras.Model) -> keras.Model:
    """A copy of the model with plain Keras layers and the same weights, to save.

    Loading it needs Keras alone, not this module. The optimizer's state is not copied.
    """

    def plain(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, FusedBatchNormalization):
            return layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=plain)
    copy.set_weights(model.get_weights())
    return copy


def build_model(
    *,
    regularized: bool,
    dropout_rate: float = 0.5,
    dropout_after_first_pool: bool = False,
    batch_norm_momentum: float = 0.9,
    fused_batch_norm: bool = False,
    num_classes: int = NUM_CLASSES,
) -> keras.Model:
    """The article's CNN. It takes raw uint8 images and returns linear logits.

    The convolutions have no activation, as in the article (tf.layers.conv2d's default):
    the max-pools are the only non-linearity there. The article put a ReLU on the logits,
    which is a bug; here they are linear. `fused_batch_norm` trains the batch norm layers with
    TensorFlow's fused kernel; `plain_layers` turns them back into Keras's own to save.
    """
    if not 0 <= dropout_rate < 1:
        raise ValueError(f"dropout_rate must be a float in [0, 1); got {dropout_rate!r}.")
    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="uint8", name="image")
    # Normalising inside the model keeps the data uint8 on disk and in memory.
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Reshape((*IMAGE_SHAPE, 1))(x)
    for index, filters in enumerate((12, 16), start=1):
        x = layers.Conv2D(filters, 3, padding="same", name=f"conv{index}")(x)
        x = layers.MaxPooling2D(pool_size=3, strides=2, name=f"pool{index}")(x)
        if regularized:
            batch_norm = FusedBatchNormalization if fused_batch_norm else layers.BatchNormalization
            x = batch_norm(momentum=batch_norm_momentum, name=f"bn{index}")(x)
            # The article's code computed dropout after the first pool but never used it.
            if index == 2 or dropout_after_first_pool:
                x = layers.Dropout(dropout_rate, name=f"dropout{index}")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu", name="fc1")(x)
    x = layers.Dense(100, activation="relu", name="fc2")(x)
    # float32 logits keep the softmax cross-entropy stable under mixed precision.
    outputs = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    name = "regularized" if regularized else "baseline"
    return keras.Model(inputs, outputs, name=name)


def make_learning_rate(
    learning_rate: float, *, schedule: str, total_steps: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's learning rate: fixed (the article's), or cosine-decayed to 0 at the end."""
    if schedule not in LEARNING_RATE_SCHEDULES:
        raise ValueError(
            f"learning_rate_schedule must be one of {', '.join(LEARNING_RATE_SCHEDULES)}; "
            f"got {schedule!r}."
        )
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total_steps)
    return learning_rate


def make_dataset(
    images: np.ndarray, labels: np.ndarray, *, batch_size: int, shuffle: bool, seed: int = 0
) -> tf.data.Dataset:
    """Batches of uint8 images and int labels; shuffling permutes indices, not pixels.

    tf.data's autotuning is off: its thread sleeps for growing periods between rounds and does
    not wake when Keras drops the iterator at the end of an epoch, which then waits for it (seen
    here: about 30 s in each of 8 epochs of 20). Gathering a batch takes under a millisecond, so
    fixed parallelism and a short prefetch keep the model fed.
    """
    images = tf.constant(np.asarray(images, dtype=np.uint8))
    labels = tf.constant(np.asarray(labels, dtype=np.int32))
    indices = tf.data.Dataset.range(len(labels))
    if shuffle:
        indices = indices.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    batches = indices.batch(batch_size).map(
        lambda index: (tf.gather(images, index), tf.gather(labels, index)),
        num_parallel_calls=os.cpu_count() or 1,
    )
    options = tf.data.Options()
    options.autotune.enabled = False
    return batches.prefetch(PREFETCH_BATCHES).with_options(options)


def describe_devices() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [
            tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in gpus
        ]
        return f"GPU x{len(gpus)} ({', '.join(names)})"
    return f"CPU ({os.cpu_count()} cores)"


def _resolve_auto(value: str | bool, *, on_gpu: bool) -> bool:
    return on_gpu if value == "auto" else bool(value)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy for `train.strategy`.

    `multi_worker` reads the cluster from the standard TF_CONFIG environment variable.
    """
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        # Without GPUs, mirror over the logical CPU devices (one unless configured).
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=None if gpus else cpus)
    return tf.distribute.get_strategy()


def is_chief(tf_config: str | None) -> bool:
    """Whether this process writes outputs, given TF_CONFIG: all but non-chief workers do."""
    if not tf_config:
        return True
    try:
        config = json.loads(tf_config)
        task_type, task_index = config["task"]["type"], config["task"]["index"]
        cluster = config["cluster"]
    except (ValueError, KeyError, TypeError) as error:
        raise io.StageError(
            f"TF_CONFIG must be JSON with 'cluster' and 'task' {{'type', 'index'}}; "
            f"got {tf_config!r} ({error})."
        ) from None
    if task_type == "chief":
        return True
    return task_type == "worker" and task_index == 0 and "chief" not in cluster


def weights_digest(model: keras.Model) -> str:
    """A short sha256 of the weights, to check that distributed workers agree."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()[:16]


class StopOnInterrupt(keras.callbacks.Callback):
    """Turns the first Ctrl-C into a stop after the current batch; a second one aborts.

    A KeyboardInterrupt raised inside TensorFlow's runtime or a tf.data thread can crash the
    process or be lost, so the handler only sets a flag that Keras checks between batches.
    """

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.interrupted = True
        print("\nInterrupted: stopping after this batch (Ctrl-C again to abort).", flush=True)
        signal.signal(signal.SIGINT, self._previous)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.interrupted:
            self.model.stop_training = True

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.interrupted:
            self.model.stop_evaluating = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if not self.interrupted:
            signal.signal(signal.SIGINT, self._previous)


class LogLearningRate(keras.callbacks.Callback):
    """Adds the optimizer's learning rate at the end of each epoch to the epoch's logs.

    Callbacks after it (dvclive, the history) see it, so the schedule is plotted with the curves.
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


def _fit_custom(
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    *,
    train_data: tf.data.Dataset,
    validation_data: tf.data.Dataset | None,
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
    verbose: int | str,
) -> keras.callbacks.History:
    """model.fit's loop written with strategy.run, for MultiWorkerMirroredStrategy.

    Keras 3's fit fails under that strategy (keras-team/keras#20585). Each replica averages
    its loss over the global batch (tf.nn.compute_average_loss), so the summed gradients
    match one device's; losses and accuracies are reduced across workers before callbacks
    see them, so every worker takes the same decisions.
    """
    loss_object = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    optimizer = model.optimizer
    sum_ = tf.distribute.ReduceOp.SUM

    def sums(labels: tf.Tensor, logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        per_example = loss_object(labels, logits)
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        correct = tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32)
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return per_example, tf.reduce_sum(correct), count

    def train_replica(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example, correct, count = sums(labels, logits)
            loss = tf.nn.compute_average_loss(per_example)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return tf.reduce_sum(per_example), correct, count

    def test_replica(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, ...]:
        per_example, correct, count = sums(labels, model(images, training=False))
        return tf.reduce_sum(per_example), correct, count

    def distributed(replica_function: Any) -> Any:
        @tf.function
        def step(batch: Any) -> tf.Tensor:
            results = strategy.run(replica_function, args=batch)
            return tf.stack([strategy.reduce(sum_, value, axis=None) for value in results])

        return step

    train_step, test_step = distributed(train_replica), distributed(test_replica)

    def logs_of(totals: np.ndarray, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}loss": totals[0] / totals[2], f"{prefix}accuracy": totals[1] / totals[2]}

    steps = int(train_data.cardinality())
    callback_list = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        model=model,
        verbose=verbose,
        epochs=epochs,
        steps=steps,
    )
    distributed_train = strategy.experimental_distribute_dataset(train_data)
    distributed_validation = (
        None
        if validation_data is None
        else strategy.experimental_distribute_dataset(validation_data)
    )
    history = next(c for c in callback_list.callbacks if isinstance(c, keras.callbacks.History))
    model.stop_training = False
    logs: dict[str, float] = {}
    callback_list.on_train_begin()
    for epoch in range(epochs):
        callback_list.on_epoch_begin(epoch)
        totals = np.zeros(3)
        for step, batch in enumerate(distributed_train):
            callback_list.on_train_batch_begin(step)
            totals += train_step(batch).numpy()
            callback_list.on_train_batch_end(step, logs_of(totals))
            if model.stop_training:
                break
        logs = logs_of(totals)
        if distributed_validation is not None:
            validation_totals = np.zeros(3)
            for batch in distributed_validation:
                validation_totals += test_step(batch).numpy()
            logs.update(logs_of(validation_totals, prefix="val_"))
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return history


def run(
    *,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    validation_images: np.ndarray | None,
    validation_labels: np.ndarray | None,
    regularized: bool,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    learning_rate_schedule: str = "cosine",
    dropout_rate: float = 0.5,
    dropout_after_first_pool: bool = False,
    batch_norm_momentum: float = 0.9,
    fused_batch_norm: bool = True,
    steps_per_execution: int = 1,
    deterministic: bool = True,
    mixed_precision: str | bool = "auto",
    jit_compile: str | bool = "auto",
    strategy: str = "auto",
    restore_best_weights: bool = True,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int | str = "auto",
) -> tuple[keras.Model, keras.callbacks.History]:
    """Build, compile and fit one model on in-memory arrays; the test seam of this stage.

    With `restore_best_weights` and validation data, the returned model holds the weights
    of the epoch with the best validation accuracy (never the test set's).
    """
    if batch_size > len(train_images):
        raise params.ParamsError(
            f"The 'train.batch_size' parameter must be at most the {len(train_images)} "
            f"training images; got {batch_size}."
        )
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    use_mixed = _resolve_auto(mixed_precision, on_gpu=on_gpu)
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")
    distribution = make_strategy(strategy)
    with distribution.scope():
        model = build_model(
            regularized=regularized,
            dropout_rate=dropout_rate,
            dropout_after_first_pool=dropout_after_first_pool,
            batch_norm_momentum=batch_norm_momentum,
            fused_batch_norm=fused_batch_norm,
        )
        model.compile(
            optimizer=keras.optimizers.Adam(
                learning_rate=make_learning_rate(
                    learning_rate,
                    schedule=learning_rate_schedule,
                    total_steps=epochs * math.ceil(len(train_images) / batch_size),
                )
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile if jit_compile == "auto" else bool(jit_compile),
        )
    if verbose:
        model.summary()
    train_data = make_dataset(
        train_images, train_labels, batch_size=batch_size, shuffle=True, seed=seed
    )
    validation_data = None
    if validation_images is not None and len(validation_images):
        validation_data = make_dataset(
            validation_images, validation_labels, batch_size=batch_size, shuffle=False
        )
    callbacks = [LogLearningRate(), *(callbacks or [])]
    if restore_best_weights and validation_data is not None:
        # Patience of every epoch: pick the best epoch on validation, never stop early.
        callbacks.insert(
            0,
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy",
                mode="max",
                patience=epochs,
                restore_best_weights=True,
                verbose=1 if verbose else 0,
            ),
        )
    if isinstance(distribution, tf.distribute.MultiWorkerMirroredStrategy):
        history = _fit_custom(
            model,
            distribution,
            train_data=train_data,
            validation_data=validation_data,
            epochs=epochs,
            callbacks=callbacks,
            verbose=verbose,
        )
    else:
        history = model.fit(
            train_data,
            validation_data=validation_data,
            epochs=epochs,
            callbacks=callbacks,
            verbose=verbose,
            # The dataset shuffles itself, seeded; fit must not try to.
            shuffle=False,
        )
    return model, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", choices=MODEL_NAMES, required=True)
    parser.add_argument(
        "--train-dir", type=Path, required=True, help="holds train_{images,labels}.npy"
    )
    parser.add_argument("--validation-dir", type=Path, required=True, help="holds validation_*.npy")
    parser.add_argument("--model-out", type=Path, required=True)
    parser.add_argument("--live-dir", type=Path, required=True)
    args = parser.parse_args()
    config: dict[str, Any] = params.load(args.params)["train"]

    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    # Memory-mapped uint8 arrays: the augmented set is never copied as floats.
    load = lambda directory, name: np.load(directory / f"{name}.npy", mmap_mode="r")  # noqa: E731
    device = describe_devices()
    chief = config["strategy"] != "multi_worker" or is_chief(os.environ.get("TF_CONFIG"))
    print(f"train-{args.model}: training on {device}", flush=True)
    interrupt = StopOnInterrupt()
    # Only the chief writes files; other workers train in step with it and keep nothing.
    live = Live(dir=str(args.live_dir), dvcyaml=False, save_dvc_exp=False) if chief else None
    with live or contextlib.nullcontext():
        if live:
            live.log_param("device", device)
        model, history = run(
            train_images=load(args.train_dir, "train_images"),
            train_labels=load(args.train_dir, "train_labels"),
            validation_images=load(args.validation_dir, "validation_images"),
            validation_labels=load(args.validation_dir, "validation_labels"),
            regularized=args.model == "regularized",
            callbacks=[interrupt] + ([DVCLiveCallback(live=live)] if live else []),
            verbose=1 if sys.stdout.isatty() else 2,
            **config,
        )
        if interrupt.interrupted:
            raise KeyboardInterrupt
        validation_accuracy = history.history.get("val_accuracy")
        if live and validation_accuracy and config["restore_best_weights"]:
            # The kept weights are the best epoch's; the curves end at the last epoch.
            # Live writes the summary when the `with` block ends.
            best = int(np.argmax(validation_accuracy))
            live.summary["best_epoch"] = best + 1
            live.summary["best_val_accuracy"] = float(validation_accuracy[best])
    print(f"train-{args.model}: weights sha256 {weights_digest(model)}", flush=True)
    if not chief:
        print(f"train-{args.model}: not the chief worker; wrote nothing", flush=True)
        return
    with io.atomic_path(args.model_out, suffix=".keras") as temporary:
        plain_layers(model).save(temporary)
    print(f"train-{args.model}: saved {args.model_out}")


if __name__ == "__main__":
    io.run(main)
