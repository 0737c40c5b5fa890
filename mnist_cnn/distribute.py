"""tf.distribute: the strategy for `train.strategy`, the chief worker, and the multi-worker loop."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mnist_cnn import io


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


def fit_custom(
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

    There are two training paths because Keras 3's fit fails under this strategy
    (keras-team/keras#20585), while fit is the faster path everywhere else: it runs
    `steps_per_execution` batches per call into TensorFlow. tests/test_distribute.py trains
    both on the same data and checks they end with the same weights.

    Each replica divides its summed loss by the number of images in the global batch, so the
    summed gradients match one device's, even when the last batch splits unevenly. As in fit's
    step, the optimizer scales the loss (`optimizer.scale_loss`: under mixed precision, Keras's
    LossScaleOptimizer multiplies it by the loss scale and divides the gradients by it again).
    Losses and accuracies are reduced across workers before callbacks see them, so every
    worker takes the same decisions.
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
            # The mean over the global batch, however unevenly it was split between replicas:
            # tf.nn.compute_average_loss would divide by this replica's share times the number
            # of replicas, which weighs the images of a short share more.
            global_count = tf.distribute.get_replica_context().all_reduce(sum_, count)
            loss = tf.reduce_sum(per_example) / global_count
            scaled_loss = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
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

    callback_list = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        model=model,
        verbose=verbose,
        epochs=epochs,
        steps=int(train_data.cardinality()),
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
