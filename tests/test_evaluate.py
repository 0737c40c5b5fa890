"""Evaluate's output format: scores, the confusion-template table and the picture."""

from __future__ import annotations

import numpy as np
import pytest

from stages.evaluate import TILE, misclassified_picture, predictions_table, score


def test_score_accuracy_and_loss():
    logits = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]], dtype=np.float32)
    logits = np.pad(logits, ((0, 0), (0, 7)), constant_values=-10)
    labels = np.array([0, 1, 2, 3])
    scores = score(logits, labels)
    assert scores["test_accuracy"] == pytest.approx(0.75)
    assert scores["test_errors"] == 1
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(probabilities[np.arange(4), labels]))
    assert scores["test_loss"] == pytest.approx(expected, rel=1e-5)


def test_predictions_table_has_the_confusion_columns():
    table = predictions_table(np.array([1, 2], np.uint8), np.array([1, 7]))
    assert table.to_csv(index=False) == "actual,predicted\n1,1\n2,7\n"


def test_misclassified_picture_grid():
    images = np.zeros((30, 28, 28), np.uint8)
    labels = np.zeros(30, int)
    predicted = labels.copy()
    predicted[[3, 5, 7]] = 1
    picture = misclassified_picture(images, labels, predicted, max_digits=2, columns=10)
    assert picture.shape == (TILE, 10 * TILE) and picture.dtype == np.uint8
    # Two tiles hold inverted digits (black on white); the rest of the grid stays white.
    assert (picture[:, : 2 * TILE] == 0).any()
    assert (picture[:, 2 * TILE :] == 255).all()
    assert misclassified_picture(images, labels, labels, max_digits=5).shape == (TILE, 10 * TILE)
