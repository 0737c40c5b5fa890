"""Train the article's CNN, plain (baseline) or with batch norm and dropout (regularized)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

from stages import io, params  # noqa: E402

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
MODEL_NAMES = ("baseline", "regularized")


def build_model(
    *,
    regularized: bool,
    dropout_rate: float = 0.5,
    dropout_after_first_pool: bool = False,
    batch_norm_momentum: float = 0.9,
    num_classes: int = NUM_CLASSES,
) -> keras.Model:
    """The article's CNN. It takes raw uint8 images and returns linear logits.

    The convolutions have no activation, as in the article (tf.layers.conv2d's default):
    the max-pools are the only non-linearity there. The article put a ReLU on the logits,
    which is a bug; here they are linear.
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
            x = layers.BatchNormalization(momentum=batch_norm_momentum, name=f"bn{index}")(x)
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


def make_dataset(
    images: np.ndarray, labels: np.ndarray, *, batch_size: int, shuffle: bool, seed: int = 0
) -> tf.data.Dataset:
    """Batches of uint8 images and int labels; shuffling permutes indices, not pixels."""
    images = tf.constant(np.asarray(images, dtype=np.uint8))
    labels = tf.constant(np.asarray(labels, dtype=np.int32))
    indices = tf.data.Dataset.range(len(labels))
    if shuffle:
        indices = indices.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    batches = indices.batch(batch_size).map(
        lambda index: (tf.gather(images, index), tf.gather(labels, index)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return batches.prefetch(tf.data.AUTOTUNE)


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
    """The tf.distribute strategy for `train.strategy`."""
    gpus = tf.config.list_physical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


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
    dropout_rate: float = 0.5,
    dropout_after_first_pool: bool = False,
    batch_norm_momentum: float = 0.9,
    steps_per_execution: int = 1,
    deterministic: bool = True,
    mixed_precision: str | bool = "auto",
    jit_compile: str | bool = "auto",
    strategy: str = "auto",
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int | str = "auto",
) -> tuple[keras.Model, keras.callbacks.History]:
    """Build, compile and fit one model on in-memory arrays; the test seam of this stage."""
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
    with make_strategy(strategy).scope():
        model = build_model(
            regularized=regularized,
            dropout_rate=dropout_rate,
            dropout_after_first_pool=dropout_after_first_pool,
            batch_norm_momentum=batch_norm_momentum,
        )
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
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
    print(f"train-{args.model}: training on {device}", flush=True)
    with Live(dir=str(args.live_dir), dvcyaml=False, save_dvc_exp=False) as live:
        live.log_param("device", device)
        model, _ = run(
            train_images=load(args.train_dir, "train_images"),
            train_labels=load(args.train_dir, "train_labels"),
            validation_images=load(args.validation_dir, "validation_images"),
            validation_labels=load(args.validation_dir, "validation_labels"),
            regularized=args.model == "regularized",
            callbacks=[DVCLiveCallback(live=live)],
            verbose=1 if sys.stdout.isatty() else 2,
            **config,
        )
    with io.atomic_path(args.model_out, suffix=".keras") as temporary:
        model.save(temporary)
    print(f"train-{args.model}: saved {args.model_out}")


if __name__ == "__main__":
    io.run(main)
