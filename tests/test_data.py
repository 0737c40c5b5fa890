"""make_dataset: seeded, shuffled uint8 batches gathered from arrays that may be memory-mapped."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from mnist_cnn.data import make_dataset


def numbered_digits(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose pixels and labels are their index: a batch tells which images it holds."""
    images = np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None], (count, 28, 28))
    return np.ascontiguousarray(images), np.arange(count, dtype=np.uint8)


def epoch_order(batches: tf.data.Dataset) -> np.ndarray:
    return np.concatenate([labels.numpy() for _, labels in batches])


def test_dataset_batches_stay_uint8_and_cover_every_image_once_per_epoch():
    dataset = make_dataset(*numbered_digits(10), batch_size=4, shuffle=True, seed=1)
    # Autotuning's thread made Keras wait up to half a minute at the end of an epoch.
    assert dataset.options().autotune.enabled is False
    for _ in range(2):
        batches = list(dataset)
        assert [len(images) for images, _ in batches] == [4, 4, 2]
        for images, labels in batches:
            assert images.dtype == tf.uint8 and labels.dtype == tf.int32
            assert images.shape[1:] == (28, 28)
            # Each label stays with its image.
            np.testing.assert_array_equal(images.numpy()[:, 0, 0], labels.numpy())
            np.testing.assert_array_equal(images.numpy().min(axis=(1, 2)), labels.numpy())
        assert sorted(epoch_order(batches)) == list(range(10))


def test_dataset_shuffle_is_seeded_and_differs_between_epochs():
    images, labels = numbered_digits(60)

    def epochs(seed: int) -> list[np.ndarray]:
        dataset = make_dataset(images, labels, batch_size=16, shuffle=True, seed=seed)
        return [epoch_order(dataset) for _ in range(2)]

    first, second = epochs(3)
    again = epochs(3)
    np.testing.assert_array_equal(again[0], first)
    np.testing.assert_array_equal(again[1], second)
    assert not np.array_equal(first, second)
    assert not np.array_equal(epochs(4)[0], first)
    assert not np.array_equal(first, np.arange(60))
    unshuffled = make_dataset(images, labels, batch_size=16, shuffle=False)
    np.testing.assert_array_equal(epoch_order(unshuffled), np.arange(60))


def anonymous_memory() -> int:
    """Bytes of this process's private memory: what a copy of an array would grow."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"RssAnon:\s+(\d+) kB", status).group(1)) * 1024


def test_dataset_gathers_from_a_memory_map_without_copying_it(tmp_path):
    # 200 MiB of large images: few indices, so the shuffle buffer stays small beside them.
    count, shape = 25_600, (64, 128)
    path = tmp_path / "images.npy"
    written = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, *shape))
    for start in range(0, count, 1024):
        written[start : start + 1024] = (np.arange(start, start + 1024) % 251)[:, None, None]
    written.flush()
    del written
    images = np.load(path, mmap_mode="r")
    labels = (np.arange(count) % 251).astype(np.uint8)
    # TensorFlow's own first allocations are not the dataset's.
    list(make_dataset(*numbered_digits(8), batch_size=4, shuffle=True))
    before = anonymous_memory()
    dataset = make_dataset(images, labels, batch_size=64, shuffle=True, seed=0)
    for batch_images, batch_labels in dataset.take(32):
        np.testing.assert_array_equal(batch_images.numpy()[:, 5, 7], batch_labels.numpy())
    growth = anonymous_memory() - before
    assert growth < images.nbytes / 4, (
        f"{growth / 2**20:.0f} MiB for a {images.nbytes / 2**20:.0f} MiB map"
    )
