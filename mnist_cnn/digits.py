"""Any photo or scan of one handwritten digit, turned into a 28x28 image as MNIST made its own."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from mnist_cnn.io import StageError

CANVAS = 28
DIGIT_BOX = 20  # MNIST scaled each digit to fit a 20x20 box, aspect ratio kept.
CENTRE = 14.0  # MNIST's centres of mass all lie within half a pixel of (14, 14).
MIN_CONTRAST = 32  # Grey levels between paper and ink below which no digit is seen.
SPECK_SHARE = 0.02  # Blobs under this share of the largest one's ink are small;
DUST_MARGIN = 0.2  # small ones further than this share of the digit's size from it are dust.


class ImageError(StageError):
    """An input image that cannot be turned into a digit."""


def read_grey(path: Path) -> np.ndarray:
    """The image file at `path` as uint8 grey levels, or ImageError naming it."""
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a file")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageError(f"{path}: empty file")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{path}: not an image OpenCV can read (PNG or JPEG expected)")
    if image.ndim == 3 and image.shape[2] == 4:
        # Transparent pixels show the paper: composite over white, as a viewer shows them.
        scaled = image.astype(np.float64) / np.iinfo(image.dtype).max
        alpha = scaled[..., 3:]
        colour = np.round((scaled[..., :3] * alpha + (1 - alpha)) * 255).astype(np.uint8)
        return cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
    # Decoded again as grey: this applies a photo's EXIF orientation and gives 8 bits.
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)


def mnist_digit(grey: np.ndarray, *, name: str = "image") -> np.ndarray:
    """A uint8 28x28 digit made as MNIST was: light on dark, cropped to the ink, scaled to fit
    20x20 with its aspect ratio, placed with its centre of mass at the centre."""
    image = grey.astype(np.float64)
    ring = max(1, min(image.shape) // 20)
    frame = np.ones(image.shape, bool)
    frame[ring:-ring, ring:-ring] = False
    border = image[frame]
    background = float(np.median(border))
    # The border is mostly paper: brighter than mid-grey means dark ink on light paper.
    if background > (image.min() + image.max()) / 2:
        image, border, background = 255 - image, 255 - border, 255 - background
    peak = float(image.max())
    if peak - background < MIN_CONTRAST:
        raise ImageError(f"{name}: no digit found (the image is nearly uniform)")
    # Paper becomes 0 and the strongest ink 1; the paper's grain, measured on the border
    # (median absolute deviation, robust to ink reaching it), is not ink.
    noise = 4 * 1.4826 * float(np.median(np.abs(border - background)))
    ink = np.clip((image - background) / (peak - background), 0, 1)
    ink[image - background <= noise] = 0
    if not ink.any():
        raise ImageError(f"{name}: no digit found (nothing stands out from the paper's grain)")
    ink = _without_dust(ink)
    rows, columns = np.nonzero(ink)
    digit = ink[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1].astype(np.float32)
    height, width = digit.shape
    scale = DIGIT_BOX / max(height, width)
    if scale != 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        # Area averaging anti-aliases when shrinking; enlarging interpolates.
        method = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        digit = np.clip(cv2.resize(digit, size, interpolation=method), 0, 1)
        height, width = digit.shape
    centre_row, centre_column = ndimage.center_of_mass(digit)
    top = int(np.clip(round(CENTRE - centre_row), 0, CANVAS - height))
    left = int(np.clip(round(CENTRE - centre_column), 0, CANVAS - width))
    canvas = np.zeros((CANVAS, CANVAS), np.float32)
    canvas[top : top + height, left : left + width] = digit
    return np.round(canvas * 255).astype(np.uint8)


def _without_dust(ink: np.ndarray) -> np.ndarray:
    """`ink` without specks and small blobs away from the digit, which would widen its bounding
    box. Small blobs near the large ones stay: MNIST's digits have broken strokes too."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((ink > 0).astype(np.uint8))
    # Label 0 is the paper. Boxes as (first column, first row, end column, end row).
    boxes = np.concatenate([stats[1:, :2], stats[1:, :2] + stats[1:, 2:4]], axis=1)
    blob_ink = ndimage.sum(ink, labels, index=np.arange(1, count))
    large = blob_ink >= SPECK_SHARE * blob_ink.max()
    start, end = boxes[large, :2].min(axis=0), boxes[large, 2:].max(axis=0)
    extent = (end - start).max()
    near = (
        (boxes[:, 2:] >= start - DUST_MARGIN * extent)
        & (boxes[:, :2] <= end + DUST_MARGIN * extent)
    ).all(axis=1)
    # A blob smaller than one pixel of the 20x20 digit is noise wherever it is.
    tiny = stats[1:, 4] < (extent / DIGIT_BOX) ** 2
    return np.where(np.isin(labels, 1 + np.flatnonzero(~large & (tiny | ~near))), 0, ink)


def load_digit(path: Path) -> np.ndarray:
    """The image file at `path` as an MNIST-style 28x28 uint8 digit, or ImageError naming it."""
    return mnist_digit(read_grey(path), name=str(path))
