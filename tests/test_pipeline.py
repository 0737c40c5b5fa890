"""End to end: `dvc repro` of the whole pipeline on tiny synthetic MNIST in a copied project."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import dvc

OUTPUTS = [
    "data/raw/train-images-idx3-ubyte",
    "data/split/train_images.npy",
    "data/split/test_labels.npy",
    "data/augment/train_images.npy",
    "models/baseline.keras",
    "models/regularized.keras",
    "metrics/train/baseline/metrics.json",
    "metrics/train/regularized/plots/metrics/eval/accuracy.tsv",
    "metrics/test.json",
    "metrics/plots/baseline_predictions.csv",
    "metrics/plots/regularized_misclassified.png",
]


def test_dvc_repro_runs_every_stage(project):
    dvc(project, "repro")
    for output in OUTPUTS:
        assert (project / output).is_file(), output

    train = np.load(project / "data/split/train_images.npy")
    augmented = np.load(project / "data/augment/train_images.npy")
    assert train.dtype == np.uint8 and augmented.dtype == np.uint8
    assert len(train) == 400 - 100 - 50
    assert augmented.shape == (6 * len(train), 28, 28)

    metrics = json.loads((project / "metrics/test.json").read_text())
    assert set(metrics) == {"baseline", "regularized"}
    for scores in metrics.values():
        assert 0.0 <= scores["test_accuracy"] <= 1.0
        assert scores["test_loss"] > 0

    shown = dvc(project, "metrics", "show").stdout
    assert "baseline.test_accuracy" in shown and "regularized.test_accuracy" in shown

    # Nothing changed: a second repro runs no stage.
    assert "Running stage" not in dvc(project, "repro").stdout

    dvc(project, "exp", "run", "-S", "train.epochs=2")
    table = dvc(project, "exp", "show", "--no-pager", "--csv").stdout
    assert "baseline.test_accuracy" in table and "train.epochs" in table
