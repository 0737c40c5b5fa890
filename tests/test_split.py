"""The split stage: IDX validation, one clear error per rule, and the seeded split."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from mnist_cnn.params import ParamsError
from stages.split import DataError, load_mnist, read_images, read_labels, split
from tests.conftest import idx_bytes


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_reads_valid_files(tmp_path, tiny_files):
    for name, content in tiny_files.items():
        write(tmp_path, name, content)
    images, labels = load_mnist(tmp_path)
    assert images.shape == (400, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (400,) and labels.max() <= 9


def test_wrong_magic(tmp_path):
    path = write(tmp_path, "x", idx_bytes(np.zeros((2, 28, 28), np.uint8), magic=2049 + 0x100))
    with pytest.raises(DataError, match=r"x: magic number must be 2051; got 2305"):
        read_images(path)


def test_labels_file_given_as_images(tmp_path):
    path = write(tmp_path, "labels", idx_bytes(np.zeros(5, np.uint8), magic=2049))
    with pytest.raises(DataError, match="magic number must be 2051; got 2049"):
        read_images(path)


def test_wrong_dimensions(tmp_path):
    path = write(tmp_path, "x", idx_bytes(np.zeros((2, 32, 32), np.uint8), magic=2051))
    with pytest.raises(DataError, match="x: images must be 28x28; got 32x32"):
        read_images(path)


def test_truncated_file(tmp_path):
    data = idx_bytes(np.zeros((3, 28, 28), np.uint8), magic=2051)[:-10]
    path = write(tmp_path, "x", data)
    with pytest.raises(DataError, match=r"x: length must be 2368 bytes .* got 2358"):
        read_images(path)


def test_header_count_disagrees_with_length(tmp_path):
    data = struct.pack(">IIII", 2051, 5, 28, 28) + bytes(3 * 784)
    path = write(tmp_path, "x", data)
    with pytest.raises(DataError, match="length must be"):
        read_images(path)


def test_too_short_for_header(tmp_path):
    path = write(tmp_path, "x", b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_images(path)


def test_label_out_of_range(tmp_path):
    path = write(tmp_path, "y", idx_bytes(np.array([1, 2, 10, 3], np.uint8), magic=2049))
    with pytest.raises(DataError, match=r"y: labels must be in 0..9; got 10 at index 2"):
        read_labels(path)


def test_counts_disagree(tmp_path, tiny_files):
    for name, content in tiny_files.items():
        write(tmp_path, name, content)
    write(tmp_path, "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(99, np.uint8), magic=2049))
    with pytest.raises(DataError, match="holds 99 labels but .* holds 100 images"):
        load_mnist(tmp_path)


def test_split_is_seeded_and_disjoint():
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1).repeat(28, 1).repeat(28, 2)
    labels = (np.arange(100) % 10).astype(np.uint8)
    parts = split(images, labels, seed=7, test_size=20, validation_size=10)
    again = split(images, labels, seed=7, test_size=20, validation_size=10)
    other = split(images, labels, seed=8, test_size=20, validation_size=10)
    sizes = {name: len(x) for name, (x, _) in parts.items()}
    assert sizes == {"test": 20, "validation": 10, "train": 70}
    ids = [set(x[:, 0, 0].tolist()) for x, _ in parts.values()]
    assert set.union(*ids) == set(range(100)) and sum(map(len, ids)) == 100
    np.testing.assert_array_equal(parts["test"][0], again["test"][0])
    assert not np.array_equal(parts["test"][0], other["test"][0])
    for x, y in parts.values():
        np.testing.assert_array_equal(x[:, 0, 0] % 10, y)


def test_split_allows_no_validation():
    images = np.zeros((30, 28, 28), np.uint8)
    parts = split(images, np.zeros(30, np.uint8), seed=0, test_size=10, validation_size=0)
    assert len(parts["validation"][0]) == 0 and len(parts["train"][0]) == 20


@pytest.mark.parametrize(
    ("test_size", "validation_size", "message"),
    [(30, 0, "split.test_size"), (50, 0, "split.test_size"), (10, 20, "split.validation_size")],
)
def test_split_sizes_refused(test_size, validation_size, message):
    images = np.zeros((30, 28, 28), np.uint8)
    with pytest.raises(ParamsError, match=message):
        split(
            images,
            np.zeros(30, np.uint8),
            seed=0,
            test_size=test_size,
            validation_size=validation_size,
        )
