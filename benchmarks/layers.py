"""Where a training step's time goes: forward and backward of each layer of the baseline."""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Imported first: the training stage sets TensorFlow's environment (oneDNN) before it loads.
from stages import train  # noqa: E402, I001

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def milliseconds(function, *args, repeats: int) -> float:
    """Mean wall time of a tf.function call, after one call to trace and warm it."""
    tf.nest.map_structure(lambda t: t.numpy(), function(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        result = function(*args)
    tf.nest.map_structure(lambda t: t.numpy(), result)
    return (time.perf_counter() - start) / repeats * 1000


def layer_step(layer: keras.layers.Layer, shape: tuple[int, ...], *, input_gradient: bool):
    inputs = tf.random.uniform(shape)
    layer(inputs, training=True)

    @tf.function
    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            # training=True: batch norm uses batch statistics and dropout drops, as in fit.
            outputs = layer(inputs, training=True)
            loss = tf.reduce_sum(outputs * outputs)
        sources = ([inputs] if input_gradient else []) + layer.trainable_variables
        return tape.gradient(loss, sources)

    return step, inputs


def whole_model_rows(model: keras.Model, images: tf.Tensor, labels: tf.Tensor, *, repeats: int):
    """Forward, forward + backward, a step with Adam, and fit's step, of one whole model."""
    optimizer = keras.optimizers.Adam(0.001)
    loss_function = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def forward(images):
        return model(images, training=True)

    @tf.function
    def forward_backward(images, labels):
        with tf.GradientTape() as tape:
            loss = loss_function(labels, model(images, training=True))
        return tape.gradient(loss, model.trainable_variables)

    @tf.function
    def train_step(images, labels):
        gradients = forward_backward(images, labels)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return gradients

    yield "forward", milliseconds(forward, images, repeats=repeats)
    yield "forward + backward", milliseconds(forward_backward, images, labels, repeats=repeats)
    yield "step with Adam", milliseconds(train_step, images, labels, repeats=repeats)
    model.compile(optimizer=keras.optimizers.Adam(0.001), loss=loss_function)
    batches = tf.data.Dataset.from_tensors((images, labels)).repeat(repeats)
    model.fit(batches, verbose=0)
    start = time.perf_counter()
    model.fit(batches, verbose=0)
    yield "model.fit step", (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--deterministic", action="store_true")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    n = args.batch_size
    rows = []
    layers = [
        # The first conv's input gradient is never needed: its input is the image.
        ("conv1 3x3, 1->12", keras.layers.Conv2D(12, 3, padding="same"), (n, 28, 28, 1), False),
        ("pool1 3x3/2 over 28x28x12", keras.layers.MaxPooling2D(3, 2), (n, 28, 28, 12), True),
        ("conv2 3x3, 12->16", keras.layers.Conv2D(16, 3, padding="same"), (n, 13, 13, 12), True),
        ("pool2 3x3/2 over 13x13x16", keras.layers.MaxPooling2D(3, 2), (n, 13, 13, 16), True),
        # The regularized model's extra layers.
        ("bn1 over 13x13x12", keras.layers.BatchNormalization(momentum=0.9), (n, 13, 13, 12), True),
        ("bn2 over 6x6x16", keras.layers.BatchNormalization(momentum=0.9), (n, 6, 6, 16), True),
        ("bn1, fused", train.FusedBatchNormalization(momentum=0.9), (n, 13, 13, 12), True),
        ("bn2, fused", train.FusedBatchNormalization(momentum=0.9), (n, 6, 6, 16), True),
        ("dropout 0.5 over 6x6x16", keras.layers.Dropout(0.5), (n, 6, 6, 16), True),
        ("fc1 576->256", keras.layers.Dense(256, activation="relu"), (n, 576), True),
        (
            "fc2 + logits",
            keras.Sequential([keras.layers.Dense(100, activation="relu"), keras.layers.Dense(10)]),
            (n, 256),
            True,
        ),
    ]
    for name, layer, shape, input_gradient in layers:
        step, inputs = layer_step(layer, shape, input_gradient=input_gradient)
        rows.append((name, milliseconds(step, inputs, repeats=args.repeats)))

    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    labels = tf.constant(rng.integers(0, 10, n, dtype=np.int32))
    models = {
        "baseline": train.build_model(regularized=False),
        "regularized, Keras batch norm": train.build_model(regularized=True),
        "regularized, fused (the stage's)": train.build_model(
            regularized=True, fused_batch_norm=True
        ),
    }
    for name, model in models.items():
        for row, ms in whole_model_rows(model, images, labels, repeats=args.repeats):
            rows.append((f"{name}, {row}", ms))
    print(
        f"batch {n}, deterministic={args.deterministic}, {os.cpu_count()} cores, "
        f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}"
    )
    for name, ms in rows:
        print(f"  {name:54s} {ms:7.2f} ms")


if __name__ == "__main__":
    main()
