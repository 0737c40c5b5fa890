"""Add 1-pixel shifts and horizontal flips of the training images, vectorised, as uint8."""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from mnist_cnn import io, params

# (dy, dx) in scipy.ndimage.shift's convention: right, left, down, up.
SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))
BLOCK_IMAGES = 1024


def _rows(array: np.ndarray) -> np.ndarray:
    """A 2-D view of an image stack, one pixel row per line; never a copy."""
    if not array.flags.c_contiguous:
        raise ValueError("image arrays must be C-contiguous")
    return np.asarray(array).reshape(-1, array.shape[-1])


def shift_images(
    images: np.ndarray, *, dy: int, dx: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Shift a stack of N x H x W images by whole pixels, filling with zeros.

    Equal, image for image, to scipy.ndimage.shift(image, (dy, dx), order=0, mode="constant").
    """
    if out is None:
        out = np.empty_like(images)
    count, height, width = images.shape
    if abs(dy) >= height or abs(dx) >= width:
        out[...] = 0
        return out
    # Moving each flattened image by dy * width + dx puts every pixel in place with one
    # contiguous copy per image. Pixels that wrap into the next row land in the border
    # columns, which are zeroed below with the border rows.
    offset = dy * width + dx
    flat_in = np.asarray(images).reshape(count, -1)
    flat_out = _rows(out).reshape(count, -1)
    if offset >= 0:
        flat_out[:, offset:] = flat_in[:, : flat_in.shape[1] - offset]
    else:
        flat_out[:, :offset] = flat_in[:, -offset:]
    out[:, : max(dy, 0)] = 0
    out[:, height + min(dy, 0) :] = 0
    out[:, :, : max(dx, 0)] = 0
    out[:, :, width + min(dx, 0) :] = 0
    return out


def flip_left_right(images: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Mirror a stack of images left to right with cv2.flip(image, 1), all rows in one call."""
    if out is None:
        out = np.empty_like(images)
    rows = _rows(out)
    flipped = cv2.flip(np.ascontiguousarray(images).reshape(-1, images.shape[-1]), 1, dst=rows)
    if not np.shares_memory(flipped, rows):
        rows[...] = flipped
    return out


def augmented_size(num_images: int, *, shifts: bool, flip_horizontal: bool) -> int:
    return num_images * (1 + len(SHIFTS) * shifts + flip_horizontal)


def augment(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    shifts: bool,
    flip_horizontal: bool,
    out_images: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The originals, then each shift, then the flips, stacked; labels repeat to match.

    `out_images` may be a memory-mapped array, so the full set never has to sit in RAM.
    """
    n = len(images)
    total = augmented_size(n, shifts=shifts, flip_horizontal=flip_horizontal)
    if out_images is None:
        out_images = np.empty((total, *images.shape[1:]), dtype=images.dtype)
    if out_images.shape != (total, *images.shape[1:]):
        raise ValueError(
            f"out_images must have shape {(total, *images.shape[1:])}; got {out_images.shape}"
        )
    copies = total // n if n else 0

    # Blocks of images small enough to stay in the CPU cache: each input block is read from
    # memory once and written out six ways, instead of the whole input being read six times.
    def augment_block(first: int) -> None:
        last = min(first + BLOCK_IMAGES, n)
        block = images[first:last]
        outputs = [out_images[copy * n + first : copy * n + last] for copy in range(copies)]
        outputs[0][...] = block
        if shifts:
            for (dy, dx), out in zip(SHIFTS, outputs[1:], strict=False):
                shift_images(block, dy=dy, dx=dx, out=out)
        if flip_horizontal:
            flip_left_right(block, out=outputs[-1])

    # NumPy's copies and cv2.flip release the GIL, so the blocks run in parallel on every core.
    # Each block writes its own slices of the output, so the result does not depend on timing.
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(augment_block, range(0, n, BLOCK_IMAGES)))
    return out_images, np.tile(labels, copies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--split-dir", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    config = params.load(args.params)["augment"]
    images = np.load(args.split_dir / "train_images.npy", mmap_mode="r")
    labels = np.load(args.split_dir / "train_labels.npy")
    total = augmented_size(len(images), **config)
    target = args.out_dir / "train_images.npy"
    # Write straight into a memory-mapped .npy under a temporary name, then rename it.
    with io.atomic_path(target, suffix=".npy") as temporary:
        out = np.lib.format.open_memmap(
            temporary, mode="w+", dtype=np.uint8, shape=(total, *images.shape[1:])
        )
        _, out_labels = augment(images, labels, out_images=out, **config)
        out.flush()
        del out
    io.save_npy(args.out_dir / "train_labels.npy", out_labels)
    print(f"augment: {len(images):,} training images -> {total:,} ({config})")


if __name__ == "__main__":
    io.run(main)
