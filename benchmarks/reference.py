"""Reference implementations, written the obvious way a user would; the benchmark's yardstick.

This module never imports the training stage, so a reference process runs TensorFlow with the
environment the user gave it (the training stage changes TensorFlow's defaults when imported).
"""

from __future__ import annotations

import cv2
import keras
import numpy as np
from scipy.ndimage import shift as scipy_shift

from stages.augment import SHIFTS


def reference_augment(images: np.ndarray) -> np.ndarray:
    """The article's method: a Python loop of scipy shift per image, then cv2.flip per image."""
    shifted = []
    for dy, dx in SHIFTS:
        for image in images:
            shifted.append(scipy_shift(image, (dy, dx), order=0, mode="constant", cval=0))
    flipped = [cv2.flip(image, 1) for image in images]
    return np.concatenate([images, np.array(shifted), np.array(flipped)])


def reference_model() -> keras.Model:
    """The same architecture as the baseline, taking float32 images scaled to [0, 1]."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(12, 3, padding="same"),
            keras.layers.MaxPooling2D(3, strides=2),
            keras.layers.Conv2D(16, 3, padding="same"),
            keras.layers.MaxPooling2D(3, strides=2),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def reference_train(
    x: np.ndarray,
    y: np.ndarray,
    validation_x: np.ndarray,
    validation_y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    callbacks: list[keras.callbacks.Callback],
) -> float:
    """`model.fit` on float32 numpy arrays; returns the final validation accuracy."""
    keras.utils.set_random_seed(seed)
    x = (x.astype("float32") / 255)[..., None]
    validation_x = (validation_x.astype("float32") / 255)[..., None]
    model = reference_model()
    model.compile(
        optimizer=keras.optimizers.Adam(0.001),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(validation_x, validation_y),
        callbacks=callbacks,
        verbose=0,
    )
    return history.history["val_accuracy"][-1]
