"""Stage split: validate the IDX files and split MNIST into train, validation and test parts."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mnist_cnn import io, params

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
SOURCES = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)


class DataError(io.StageError):
    """An input file is not a valid MNIST IDX file."""


def read_idx(path: Path, *, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes, checking its magic number and length."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size < 8:
        raise DataError(f"{path}: too short for an IDX header ({data.size} bytes)")
    found_magic = int(data[:4].view(">u4")[0])
    if found_magic != magic:
        raise DataError(f"{path}: magic number must be {magic}; got {found_magic}")
    ndim = magic & 0xFF
    header_bytes = 4 + 4 * ndim
    if data.size < header_bytes:
        raise DataError(f"{path}: too short for its {ndim}-dimension header ({data.size} bytes)")
    shape = tuple(int(n) for n in data[4:header_bytes].view(">u4"))
    expected_bytes = header_bytes + int(np.prod(shape))
    if data.size != expected_bytes:
        raise DataError(
            f"{path}: length must be {expected_bytes} bytes for header shape {shape}; "
            f"got {data.size}"
        )
    return data[header_bytes:].reshape(shape)


def read_images(path: Path) -> np.ndarray:
    images = read_idx(path, magic=IMAGES_MAGIC)
    if images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{path}: images must be 28x28; got {images.shape[1]}x{images.shape[2]}")
    return images


def read_labels(path: Path) -> np.ndarray:
    labels = read_idx(path, magic=LABELS_MAGIC)
    if labels.size and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(f"{path}: labels must be in 0..9; got {labels[bad]} at index {bad}")
    return labels


def load_mnist(raw_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST's two files as (images, labels): "train" (60,000 images) and "t10k" (10,000)."""
    parts = {}
    for images_name, labels_name in SOURCES:
        x = read_images(raw_dir / images_name)
        y = read_labels(raw_dir / labels_name)
        if len(x) != len(y):
            raise DataError(
                f"{raw_dir / labels_name}: holds {len(y)} labels but "
                f"{raw_dir / images_name} holds {len(x)} images"
            )
        parts[images_name.split("-")[0]] = (x, y)
    return parts


def split(
    mnist: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    protocol: str,
    seed: int,
    test_size: int,
    validation_size: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The test, validation and train parts of MNIST under `protocol`.

    article: all images (the training file's, then t10k's) are permuted with `seed`; the first
    `test_size` are the test set, the next `validation_size` the validation set.
    official: t10k, in file order, is the test set; the training file's images are permuted
    with `seed`, the first `validation_size` are the validation set.
    """
    if protocol not in ("article", "official"):
        raise params.ParamsError(
            f"The 'split.protocol' parameter must be one of article, official; got {protocol!r}."
        )
    if protocol == "official":
        if test_size != len(mnist["t10k"][0]):
            raise params.ParamsError(
                f"The 'split.test_size' parameter must be {len(mnist['t10k'][0])} (the t10k "
                f"file) under split.protocol official; got {test_size}."
            )
        images, labels = mnist["train"]
        if validation_size >= len(images):
            raise params.ParamsError(
                f"The 'split.validation_size' parameter must leave training data: the training "
                f"file holds {len(images)} images; got {validation_size}."
            )
        order = np.random.default_rng(seed).permutation(len(images))
        return {
            "test": mnist["t10k"],
            "validation": (images[order[:validation_size]], labels[order[:validation_size]]),
            "train": (images[order[validation_size:]], labels[order[validation_size:]]),
        }
    images = np.concatenate([mnist["train"][0], mnist["t10k"][0]])
    labels = np.concatenate([mnist["train"][1], mnist["t10k"][1]])
    total = len(images)
    if test_size >= total:
        raise params.ParamsError(
            f"The 'split.test_size' parameter must be smaller than the {total} images; "
            f"got {test_size}."
        )
    if test_size + validation_size >= total:
        raise params.ParamsError(
            f"The 'split.validation_size' parameter must leave training data: "
            f"{total} images - {test_size} test = {total - test_size}; got {validation_size}."
        )
    order = np.random.default_rng(seed).permutation(total)
    parts = {
        "test": order[:test_size],
        "validation": order[test_size : test_size + validation_size],
        "train": order[test_size + validation_size :],
    }
    return {name: (images[index], labels[index]) for name, index in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw-dir", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    config = params.load(args.params)["split"]
    parts = split(load_mnist(args.raw_dir), **config)
    for name, (x, y) in parts.items():
        io.save_npy(args.out_dir / f"{name}_images.npy", x)
        io.save_npy(args.out_dir / f"{name}_labels.npy", y)
        counts = np.bincount(y, minlength=NUM_CLASSES)
        print(f"{name}: {len(x):,} images, per class {counts.tolist()}")


if __name__ == "__main__":
    io.run(main)
