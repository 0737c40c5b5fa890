"""Integration: `dvc repro augment` on the real MNIST, through the MNIST_MIRROR override."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, SHARED_MNIST, dvc, make_project

PARTS = ("train", "validation", "test")
# Images per class in all 70,000 MNIST digits (training file and t10k together).
CLASS_COUNTS = [6903, 7877, 6990, 7141, 6824, 6313, 6876, 7293, 6825, 6958]


def local_mirror() -> Path | None:
    for candidate in (os.environ.get("MNIST_MIRROR"), SHARED_MNIST):
        if candidate and "://" not in str(candidate) and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def real_project(tmp_path, monkeypatch):
    """A copy of the project on the real MNIST, its params as in the project but for overrides."""
    mirror = local_mirror()
    if mirror is None:
        pytest.skip(
            f"no local MNIST mirror: set MNIST_MIRROR to a folder (looked at {SHARED_MNIST})"
        )
    monkeypatch.setenv("MNIST_MIRROR", str(mirror.resolve()))

    def make(**sections) -> Path:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["fetch"][
            "mirrors"
        ] = []  # Only the local mirror: the test must not reach the network.
        for section, values in sections.items():
            params[section].update(values)
        return make_project(tmp_path / "project", params)

    return make


def read_raw(project: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """A fetched IDX pair, parsed here independently of the split stage."""
    raw = project / "data/raw"
    images = np.fromfile(raw / f"{prefix}-images-idx3-ubyte", dtype=np.uint8)[16:]
    labels = np.fromfile(raw / f"{prefix}-labels-idx1-ubyte", dtype=np.uint8)[8:]
    return images.reshape(-1, 28, 28), labels


def pairs(images: np.ndarray, labels: np.ndarray) -> Counter:
    """The multiset of (image digest, label): equal only if every image keeps its own label."""
    return Counter(
        (hashlib.blake2b(image.tobytes(), digest_size=16).digest(), int(label))
        for image, label in zip(images, labels, strict=True)
    )


def load_split(project: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = project / "data/split"
    return {
        part: (np.load(folder / f"{part}_images.npy"), np.load(folder / f"{part}_labels.npy"))
        for part in PARTS
    }


def test_dvc_repro_augment_on_real_mnist(real_project):
    project = real_project()
    dvc(project, "repro", "augment")
    split = load_split(project)
    assert split["test"][0].shape == (10_000, 28, 28)
    assert split["validation"][0].shape == (5_000, 28, 28)
    assert split["train"][0].shape == (55_000, 28, 28)
    assert all(array.dtype == np.uint8 for part in split.values() for array in part)
    everything = np.concatenate([split[part][1] for part in PARTS])
    assert np.bincount(everything).tolist() == CLASS_COUNTS
    # All 70,000 digits are in exactly one part, each with its own label.
    raw = [read_raw(project, prefix) for prefix in ("train", "t10k")]
    assert sum((pairs(*split[part]) for part in PARTS), Counter()) == sum(
        (pairs(*pair) for pair in raw), Counter()
    )

    train_images, train_labels = split["train"]
    augmented = np.load(project / "data/augment/train_images.npy", mmap_mode="r")
    labels = np.load(project / "data/augment/train_labels.npy")
    count = len(train_images)
    assert augmented.shape == (6 * count, 28, 28) and augmented.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.tile(train_labels, 6))
    # The layout is the originals, four 1-pixel shifts, then the left-right mirror images.
    np.testing.assert_array_equal(augmented[:count], train_images)
    np.testing.assert_array_equal(augmented[5 * count :], train_images[:, :, ::-1])
    right = augmented[count : 2 * count]
    np.testing.assert_array_equal(right[:, :, 1:], train_images[:, :, :-1])
    assert not right[:, :, 0].any()


def test_official_protocol_tests_on_t10k_in_file_order(real_project):
    project = real_project(split={"protocol": "official"})
    dvc(project, "repro", "split")
    split = load_split(project)
    train_file, t10k = read_raw(project, "train"), read_raw(project, "t10k")
    np.testing.assert_array_equal(split["test"][0], t10k[0])
    np.testing.assert_array_equal(split["test"][1], t10k[1])
    assert len(split["validation"][0]) == 5_000 and len(split["train"][0]) == 55_000
    # Validation and train are the training file's 60,000 digits, each with its own label.
    assert pairs(*split["train"]) + pairs(*split["validation"]) == pairs(*train_file)
