"""MNIST's way of making a digit, applied to any image: polarity, size, centring, dust, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from mnist_cnn import digits


def drawn(text: str, *, shape=(240, 200), at=(40, 200), scale=6.0, thickness=18) -> np.ndarray:
    """A light digit drawn on a black canvas, as a font renders it."""
    canvas = np.zeros(shape, np.uint8)
    cv2.putText(canvas, text, at, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    return canvas


def as_photo(digit: np.ndarray, path: Path, *, canvas=(180, 300), at=(30, 170)) -> Path:
    """`digit` (light on dark) as dark blue ink on cream paper, enlarged 4x, off-centre on a
    wider canvas, saved as a colour JPEG."""
    big = cv2.resize(digit, None, fx=4, fy=4, interpolation=cv2.INTER_LINEAR)
    alpha = np.zeros(canvas, np.float64)
    alpha[at[0] : at[0] + big.shape[0], at[1] : at[1] + big.shape[1]] = big / 255
    paper, ink = np.array([215, 240, 250.0]), np.array([110, 40, 20.0])  # BGR
    photo = paper * (1 - alpha[..., None]) + ink * alpha[..., None]
    cv2.imwrite(str(path), np.round(photo).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def shifted_difference(image: np.ndarray, reference: np.ndarray) -> float:
    """The mean absolute difference in grey levels, at the best shift by up to one pixel."""
    return min(
        np.abs(np.roll(image, (rows, columns), axis=(0, 1)).astype(int) - reference).mean()
        for rows in (-1, 0, 1)
        for columns in (-1, 0, 1)
    )


# Preprocessing, without TensorFlow.


def test_polarity_contrast_position_and_transparency_do_not_change_the_digit(tmp_path):
    seven = drawn("7")
    reference = digits.mnist_digit(seven)
    np.testing.assert_array_equal(digits.mnist_digit(255 - seven), reference)
    # Grey ink on grey paper is stretched to MNIST's black paper and white ink.
    faint = np.round(seven * 0.4 + 60).astype(np.uint8)
    assert (
        reference.max() == 255
        and np.abs(digits.mnist_digit(faint) - reference.astype(int)).max() <= 2
    )
    elsewhere = np.zeros((400, 640), np.uint8)
    elsewhere[150:390, 17:217] = seven
    np.testing.assert_array_equal(digits.mnist_digit(elsewhere), reference)
    # Black ink on a transparent sheet reads as black ink on white paper.
    rgba = np.zeros((*seven.shape, 4), np.uint8)
    rgba[..., 3] = seven
    cv2.imwrite(str(tmp_path / "transparent.png"), rgba)
    np.testing.assert_array_equal(digits.load_digit(tmp_path / "transparent.png"), reference)
    # A colour JPEG photo of a small one: the same up to JPEG's and resampling's rounding, and
    # a pixel's shift where the centre of mass is rounded the other way.
    small = drawn("7", shape=(60, 50), at=(10, 52), scale=1.6, thickness=5)
    photo = digits.load_digit(as_photo(small, tmp_path / "seven.jpg", canvas=(320, 400)))
    assert shifted_difference(photo, digits.mnist_digit(small)) < 8
    assert shifted_difference(photo, np.roll(digits.mnist_digit(small), 3, axis=1)) > 20


@pytest.mark.parametrize("text", ["7", "|", "-"])
def test_digit_fits_20x20_keeping_its_aspect_ratio_centred_by_mass(text):
    picture = drawn(text, shape=(300, 200), at=(40, 250))  # "|" is tall and narrow, "-" wide.
    digit = digits.mnist_digit(picture)
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    rows, columns = np.nonzero(picture)
    height, width = np.ptp(rows) + 1, np.ptp(columns) + 1
    rows, columns = np.nonzero(digit)
    new_height, new_width = np.ptp(rows) + 1, np.ptp(columns) + 1
    assert max(new_height, new_width) == 20
    # Resampling may drop a faint edge row or column: one pixel of slack.
    scale = 20 / max(height, width)
    assert abs(new_height - height * scale) <= 1 and abs(new_width - width * scale) <= 1
    centre = ndimage.center_of_mass(digit.astype(float))
    assert np.abs(np.array(centre) - 14).max() <= 0.5


def test_dust_far_from_the_digit_is_ignored_but_near_pieces_are_kept():
    two = drawn("2", shape=(300, 300))
    reference = digits.mnist_digit(two)
    dusty = two.copy()
    dusty[285:289, 280:284] = 255  # A speck in a corner, far from the digit.
    np.testing.assert_array_equal(digits.mnist_digit(dusty), reference)
    rows, columns = np.nonzero(two)
    broken = two.copy()
    # A small piece just above the digit, like a broken stroke: it is part of the digit. It
    # has under 2 % of the digit's ink but covers more than a pixel of the 20x20 digit.
    broken[rows.min() - 18 : rows.min() - 8, columns.min() : columns.min() + 10] = 255
    with_piece = digits.mnist_digit(broken)
    assert not np.array_equal(with_piece, reference)
    assert np.nonzero(with_piece)[0].min() < np.nonzero(reference)[0].min()


def test_sensor_noise_in_a_large_photo_does_not_shrink_the_digit():
    five = cv2.resize(drawn("5"), (1000, 1200), interpolation=cv2.INTER_LINEAR)
    reference = digits.mnist_digit(five)
    # Grey paper and ink with sensor noise: some noise pixels stand out, near the digit too.
    noise = np.random.default_rng(0).normal(0, 6, five.shape)
    photo = np.clip(230 - five * 0.75 + noise, 0, 255).astype(np.uint8)
    digit = digits.mnist_digit(photo)
    assert np.ptp(np.nonzero(digit), axis=1).max() + 1 == 20
    assert shifted_difference(digit, reference) < 8


def test_unusable_images_raise_one_line_errors_naming_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image\n")
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((50, 80), 200, np.uint8))
    expected = {
        "missing.png": "no such file",
        "empty.png": "empty file",
        "notes.png": "not an image",
        "blank.png": "no digit found",
    }
    for name, reason in expected.items():
        with pytest.raises(digits.ImageError) as error:
            digits.load_digit(tmp_path / name)
        assert str(error.value).startswith(f"{tmp_path / name}: {reason}")
        assert "\n" not in str(error.value)


# The command line.
