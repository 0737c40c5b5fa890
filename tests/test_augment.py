"""Augment against its oracles: scipy.ndimage.shift and cv2.flip, image for image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.ndimage import shift as scipy_shift

from stages.augment import SHIFTS, augment, augmented_size, flip_left_right, shift_images


@pytest.fixture
def images() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize(("dy", "dx"), [*SHIFTS, (2, -3), (0, 0), (-27, 5), (28, 0)])
def test_shift_matches_scipy(images, dy, dx):
    shifted = shift_images(images, dy=dy, dx=dx)
    assert shifted.dtype == np.uint8
    for image, result in zip(images, shifted, strict=True):
        expected = scipy_shift(image, (dy, dx), order=0, mode="constant", cval=0)
        np.testing.assert_array_equal(result, expected)


def test_flip_matches_cv2(images):
    flipped = flip_left_right(images)
    for image, result in zip(images, flipped, strict=True):
        np.testing.assert_array_equal(result, cv2.flip(image, 1))


def test_augment_layout_and_labels(images):
    labels = np.arange(7, dtype=np.uint8)
    out, out_labels = augment(images, labels, shifts=True, flip_horizontal=True)
    n = len(images)
    assert out.shape == (6 * n, 28, 28) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:n], images)
    for block, (dy, dx) in enumerate(SHIFTS, start=1):
        expected = [scipy_shift(im, (dy, dx), order=0, mode="constant") for im in images]
        np.testing.assert_array_equal(out[block * n : (block + 1) * n], expected)
    np.testing.assert_array_equal(out[5 * n :], [cv2.flip(im, 1) for im in images])
    np.testing.assert_array_equal(out_labels, np.tile(labels, 6))


@pytest.mark.parametrize(
    ("shifts", "flip", "copies"),
    [(True, True, 6), (True, False, 5), (False, True, 2), (False, False, 1)],
)
def test_augment_switches(images, shifts, flip, copies):
    labels = np.zeros(len(images), dtype=np.uint8)
    out, out_labels = augment(images, labels, shifts=shifts, flip_horizontal=flip)
    assert len(out) == len(out_labels) == copies * len(images)
    assert augmented_size(len(images), shifts=shifts, flip_horizontal=flip) == len(out)


def test_augment_refuses_wrong_output_shape(images):
    labels = np.zeros(len(images), dtype=np.uint8)
    with pytest.raises(ValueError, match="out_images must have shape"):
        augment(
            images, labels, shifts=True, flip_horizontal=False, out_images=np.empty((3, 28, 28))
        )
