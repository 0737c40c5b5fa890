"""The split stage: IDX validation, one clear error per rule, and both seeded split protocols."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys

import numpy as np
import pytest
import yaml

from mnist_cnn.params import ParamsError
from stages.split import DataError, load_mnist, read_images, read_labels, split
from tests.conftest import ROOT, idx_bytes, tiny_params

TRAIN_COUNT, T10K_COUNT = 300, 60
TOTAL = TRAIN_COUNT + T10K_COUNT
PROTOCOLS = ("article", "official")


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def write_files(folder, files: dict[str, bytes]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        write(folder, name, content)
    return folder


def label_of(identity: np.ndarray) -> np.ndarray:
    """Labels derived from identities, so a label that left its image is caught."""
    return ((identity * 7 + 3) % 10).astype(np.uint8)


def identities(images: np.ndarray) -> np.ndarray:
    """Each image's identity: its position in the training file, then t10k (pixels 0 and 1)."""
    return images[:, 0, 0].astype(np.int64) * 256 + images[:, 0, 1]


@pytest.fixture
def mnist(tmp_path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """IDX files whose images are all different, read back through load_mnist."""
    files = {}
    for prefix, start, count in (("train", 0, TRAIN_COUNT), ("t10k", TRAIN_COUNT, T10K_COUNT)):
        identity = np.arange(start, start + count)
        images = np.zeros((count, 28, 28), np.uint8)
        images[:, 0, 0], images[:, 0, 1] = identity // 256, identity % 256
        files[f"{prefix}-images-idx3-ubyte"] = idx_bytes(images, magic=2051)
        files[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(label_of(identity), magic=2049)
    return load_mnist(write_files(tmp_path / "raw", files))


def original_article_split(images, labels, *, seed, test_size, validation_size):
    """The split as it was before protocols existed, over the files concatenated in order."""
    order = np.random.default_rng(seed).permutation(len(images))
    parts = {
        "test": order[:test_size],
        "validation": order[test_size : test_size + validation_size],
        "train": order[test_size + validation_size :],
    }
    return {name: (images[index], labels[index]) for name, index in parts.items()}


def test_reads_valid_files(tmp_path, tiny_files):
    mnist = load_mnist(write_files(tmp_path, tiny_files))
    assert list(mnist) == ["train", "t10k"]
    for prefix, count in (("train", 300), ("t10k", 100)):
        images, labels = mnist[prefix]
        assert images.shape == (count, 28, 28) and images.dtype == np.uint8
        expected = np.frombuffer(tiny_files[f"{prefix}-images-idx3-ubyte"][16:], np.uint8)
        np.testing.assert_array_equal(images, expected.reshape(count, 28, 28))
        expected = np.frombuffer(tiny_files[f"{prefix}-labels-idx1-ubyte"][8:], np.uint8)
        np.testing.assert_array_equal(labels, expected)


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
    write_files(tmp_path, tiny_files)
    write(tmp_path, "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(99, np.uint8), magic=2049))
    with pytest.raises(DataError, match="holds 99 labels but .* holds 100 images"):
        load_mnist(tmp_path)


def test_official_test_set_is_the_t10k_file_in_order(mnist):
    parts = split(mnist, protocol="official", seed=3, test_size=T10K_COUNT, validation_size=50)
    np.testing.assert_array_equal(parts["test"][0], mnist["t10k"][0])
    np.testing.assert_array_equal(parts["test"][1], mnist["t10k"][1])
    assert identities(parts["test"][0]).tolist() == list(range(TRAIN_COUNT, TOTAL))
    for name in ("validation", "train"):
        assert identities(parts[name][0]).max() < TRAIN_COUNT
    # The validation set is a seeded draw, not the training file's first images.
    assert identities(parts["validation"][0]).tolist() != list(range(50))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_parts_hold_every_image_exactly_once(mnist, protocol):
    parts = split(mnist, protocol=protocol, seed=5, test_size=T10K_COUNT, validation_size=40)
    sizes = {name: len(x) for name, (x, _) in parts.items()}
    assert sizes == {"test": T10K_COUNT, "validation": 40, "train": TOTAL - T10K_COUNT - 40}
    every = np.concatenate([identities(x) for x, _ in parts.values()])
    assert sorted(every.tolist()) == list(range(TOTAL))
    for x, y in parts.values():
        assert x.dtype == np.uint8 and y.dtype == np.uint8
        np.testing.assert_array_equal(y, label_of(identities(x)))


@pytest.mark.parametrize(("seed", "test_size", "validation_size"), [(42, 60, 50), (0, 100, 0)])
def test_article_split_is_unchanged(mnist, seed, test_size, validation_size):
    images = np.concatenate([mnist["train"][0], mnist["t10k"][0]])
    labels = np.concatenate([mnist["train"][1], mnist["t10k"][1]])
    sizes = {"seed": seed, "test_size": test_size, "validation_size": validation_size}
    expected = original_article_split(images, labels, **sizes)
    parts = split(mnist, protocol="article", **sizes)
    assert list(parts) == list(expected)
    for name, (x, y) in expected.items():
        np.testing.assert_array_equal(parts[name][0], x)
        np.testing.assert_array_equal(parts[name][1], y)
    # The article pools both files: its test set mixes them.
    test = identities(parts["test"][0])
    assert (test < TRAIN_COUNT).any() and (test >= TRAIN_COUNT).any()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_split_is_seeded(mnist, protocol):
    sizes = {"test_size": T10K_COUNT, "validation_size": 50}
    parts = split(mnist, protocol=protocol, seed=7, **sizes)
    again = split(mnist, protocol=protocol, seed=7, **sizes)
    other = split(mnist, protocol=protocol, seed=8, **sizes)
    for name in parts:
        np.testing.assert_array_equal(parts[name][0], again[name][0])
        np.testing.assert_array_equal(parts[name][1], again[name][1])
    assert not np.array_equal(parts["validation"][0], other["validation"][0])
    assert not np.array_equal(parts["train"][0], other["train"][0])
    # Under official the seed moves only the validation draw; t10k stays the test set.
    same_test = np.array_equal(parts["test"][0], other["test"][0])
    assert same_test == (protocol == "official")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_split_allows_no_validation_and_a_single_training_image(mnist, protocol):
    parts = split(mnist, protocol=protocol, seed=0, test_size=T10K_COUNT, validation_size=0)
    assert len(parts["validation"][0]) == 0 and len(parts["validation"][1]) == 0
    assert len(parts["train"][0]) == TOTAL - T10K_COUNT
    largest = TRAIN_COUNT - 1 if protocol == "official" else TOTAL - T10K_COUNT - 1
    parts = split(mnist, protocol=protocol, seed=0, test_size=T10K_COUNT, validation_size=largest)
    assert len(parts["train"][0]) == 1


SIZES_REFUSED = [
    ("official", 59, 0, "test_size", "must be 60 (the t10k file) under split.protocol official"),
    ("official", 10000, 0, "test_size", "must be 60 (the t10k file) under split.protocol official"),
    (
        "official",
        60,
        300,
        "validation_size",
        "must leave training data: the training file holds 300 images",
    ),
    ("article", 360, 0, "test_size", "must be smaller than the 360 images"),
    ("article", 60, 300, "validation_size", "must leave training data: 360 images - 60 test = 300"),
]


@pytest.mark.parametrize(("protocol", "test_size", "validation_size", "key", "rule"), SIZES_REFUSED)
def test_split_sizes_refused(mnist, protocol, test_size, validation_size, key, rule):
    sizes = {"test_size": test_size, "validation_size": validation_size}
    with pytest.raises(ParamsError) as error:
        split(mnist, protocol=protocol, seed=0, **sizes)
    got = test_size if key == "test_size" else validation_size
    assert str(error.value) == f"The 'split.{key}' parameter {rule}; got {got}."


def run_stage(tmp_path, tiny_files, **split_params) -> subprocess.CompletedProcess:
    """Run `python -m stages.split` on the tiny files with some split params changed."""
    sha256 = {name: hashlib.sha256(data).hexdigest() for name, data in tiny_files.items()}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(sha256=sha256, split=split_params)))
    raw = write_files(tmp_path / "raw", tiny_files)
    command = ["--params", str(params), "--raw-dir", str(raw), "--out-dir", str(tmp_path / "out")]
    return subprocess.run(
        [sys.executable, "-m", "stages.split", *command], cwd=ROOT, capture_output=True, text=True
    )


def test_stage_command_saves_t10k_as_the_official_test_set(tmp_path, tiny_files):
    result = run_stage(tmp_path, tiny_files, protocol="official")
    assert result.returncode == 0, result.stderr
    mnist = load_mnist(tmp_path / "raw")
    saved = {p.stem: np.load(p) for p in (tmp_path / "out").glob("*.npy")}
    assert sorted(saved) == sorted(
        f"{part}_{kind}"
        for part in ("train", "validation", "test")
        for kind in ("images", "labels")
    )
    np.testing.assert_array_equal(saved["test_images"], mnist["t10k"][0])
    np.testing.assert_array_equal(saved["test_labels"], mnist["t10k"][1])
    assert len(saved["validation_images"]) == 50 and len(saved["train_images"]) == 250
    # Validation and train together are the training file, each image once.
    rest = np.concatenate([saved["validation_images"], saved["train_images"]])
    order = np.lexsort(rest.reshape(len(rest), -1).T)
    train_images = mnist["train"][0]
    expected_order = np.lexsort(train_images.reshape(len(train_images), -1).T)
    np.testing.assert_array_equal(rest[order], train_images[expected_order])
    counts = np.bincount(mnist["t10k"][1], minlength=10).tolist()
    assert f"test: 100 images, per class {counts}" in result.stdout


def test_stage_command_refuses_a_test_size_other_than_t10k(tmp_path, tiny_files):
    result = run_stage(tmp_path, tiny_files, protocol="official", test_size=99)
    assert result.returncode == 1
    assert result.stderr == (
        "error: The 'split.test_size' parameter must be 100 (the t10k file) under "
        "split.protocol official; got 99.\n"
    )
    assert not (tmp_path / "out").exists()
