"""Integration: `dvc repro augment` on the real MNIST, through the MNIST_MIRROR override."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, SHARED_MNIST, dvc, make_project


def local_mirror() -> Path | None:
    for candidate in (os.environ.get("MNIST_MIRROR"), SHARED_MNIST):
        if candidate and "://" not in str(candidate) and Path(candidate).is_dir():
            return Path(candidate)
    return None


def test_dvc_repro_augment_on_real_mnist(tmp_path, monkeypatch):
    mirror = local_mirror()
    if mirror is None:
        pytest.skip(
            f"no local MNIST mirror: set MNIST_MIRROR to a folder (looked at {SHARED_MNIST})"
        )
    monkeypatch.setenv("MNIST_MIRROR", str(mirror.resolve()))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["fetch"]["mirrors"] = []  # Only the local mirror: the test must not reach the network.
    project = make_project(tmp_path / "project", params)
    dvc(project, "repro", "augment")

    split = {
        name: np.load(project / "data/split" / f"{name}.npy", mmap_mode="r")
        for name in (
            "train_images",
            "train_labels",
            "validation_images",
            "test_images",
            "test_labels",
        )
    }
    assert split["test_images"].shape == (10_000, 28, 28)
    assert split["validation_images"].shape == (5_000, 28, 28)
    assert split["train_images"].shape == (55_000, 28, 28)
    assert all(array.dtype == np.uint8 for array in split.values())
    augmented = np.load(project / "data/augment/train_images.npy", mmap_mode="r")
    labels = np.load(project / "data/augment/train_labels.npy")
    assert augmented.shape == (330_000, 28, 28) and augmented.dtype == np.uint8
    np.testing.assert_array_equal(
        np.bincount(labels, minlength=10), 6 * np.bincount(split["train_labels"], minlength=10)
    )
    # All 70,000 MNIST digits, per class, are in exactly one part.
    everything = np.concatenate(
        [
            split["train_labels"],
            np.load(project / "data/split/validation_labels.npy"),
            split["test_labels"],
        ]
    )
    assert np.bincount(everything).tolist() == [
        6903,
        7877,
        6990,
        7141,
        6824,
        6313,
        6876,
        7293,
        6825,
        6958,
    ]
