"""The article's CNN, its batch norm on TensorFlow's fused kernel, and byte-reproducible saving."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from keras import layers

from mnist_cnn.io import StageError

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
MODEL_NAMES = ("baseline", "regularized")
# The zip format's earliest date; the default time stamp of a saved model without
# SOURCE_DATE_EPOCH, so that the same weights always give the same bytes.
EPOCH_1980 = 315532800


class FusedBatchNormalization(layers.BatchNormalization):
    """Keras's batch normalisation, trained with TensorFlow's fused kernel.

    The same math as the base layer, up to float rounding: outputs are normalised with the
    batch's biased variance, and the moving averages are updated with it too. Keras 3 computes
    it op by op, which on small tensors costs more than the fused kernel (see
    docs/performance.md). Inference, and any input the fused kernel does not take, goes through
    the base layer.
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


def build_model(
    *,
    regularized: bool,
    dropout_rate: float,
    dropout_after_first_pool: bool,
    batch_norm_momentum: float,
    fused_batch_norm: bool,
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


def load_model(path: str | Path) -> keras.Model:
    """Load a .keras model, or raise StageError naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        raise StageError(f"{path}: not a Keras model (.keras files are zip archives)")
    try:
        return keras.models.load_model(path)
    except Exception as error:  # Keras raises many types for a broken archive.
        raise StageError(f"{path}: not a loadable Keras model ({type(error).__name__})") from None


def save_model(model: keras.Model, path: str | Path) -> None:
    """Save `model` as a .keras file whose bytes depend on the model alone, not on the clock.

    Keras writes the time of saving into metadata.json and into every zip entry. Both are set
    to SOURCE_DATE_EPOCH (the reproducible-builds convention) or, without it, 1980-01-01.
    `keras.models.load_model` reads the file as usual.
    """
    path = Path(path)
    stamp = int(os.environ.get("SOURCE_DATE_EPOCH", EPOCH_1980))
    saved = path.with_name(f"{path.name}.unpinned.keras")
    try:
        plain_layers(model).save(saved)
        buffer = io.BytesIO()
        moment = time.gmtime(max(stamp, EPOCH_1980))
        with zipfile.ZipFile(saved) as source, zipfile.ZipFile(buffer, "w") as target:
            for entry in source.infolist():
                data = source.read(entry.filename)
                if entry.filename == "metadata.json":
                    metadata = json.loads(data)
                    metadata["date_saved"] = time.strftime("%Y-%m-%d@%H:%M:%S", moment)
                    data = json.dumps(metadata).encode()
                pinned = zipfile.ZipInfo(entry.filename, date_time=moment[:6])
                pinned.compress_type = entry.compress_type
                pinned.external_attr = 0o644 << 16
                target.writestr(pinned, data)
        path.write_bytes(buffer.getvalue())
    finally:
        saved.unlink(missing_ok=True)
