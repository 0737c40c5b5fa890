"""The yardsticks: augment as the article wrote it, and plain Keras training on float32 arrays."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from scipy.ndimage import shift as scipy_shift

# Right, left, down, up: the project's order, so that the two outputs compare equal.
SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))


def reference_augment(images: np.ndarray) -> np.ndarray:
    """The article's method: a Python loop of scipy shift per image, then cv2.flip per image."""
    shifted = [
        scipy_shift(image, shift, order=0, mode="constant") for shift in SHIFTS for image in images
    ]
    flipped = [cv2.flip(image, 1) for image in images]
    return np.concatenate([images, np.array(shifted), np.array(flipped)])


def reference_fit(
    images: np.ndarray, labels: np.ndarray, *, epochs: int, batch_size: int, **fit_options: Any
) -> None:
    """The baseline's layers, trained by `model.fit` on float32 arrays scaled to [0, 1].

    Keras loads here and this module never imports mnist_cnn, so TensorFlow runs with the
    environment the process was started with.
    """
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((28, 28, 1))])
    for filters in (12, 16):
        model.add(layers.Conv2D(filters, 3, padding="same"))
        model.add(layers.MaxPooling2D(3, strides=2))
    model.add(layers.Flatten())
    for units in (256, 100):
        model.add(layers.Dense(units, activation="relu"))
    model.add(layers.Dense(10))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(0.001), loss=loss, metrics=["accuracy"])
    x = (images / np.float32(255))[..., None]
    model.fit(x, labels, batch_size=batch_size, epochs=epochs, **fit_options)
