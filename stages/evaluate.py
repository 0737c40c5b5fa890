"""Score each trained model on the held-out test set: metrics JSON, confusion data, pictures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy.special import softmax
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss

from mnist_cnn import io, params
from mnist_cnn.model import load_model

NUM_CLASSES = 10
TILE = 56  # Pixels per digit in the misclassified picture: 2x upscaled plus a caption.


def score(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, mean cross-entropy and error count of `logits` against the test `labels`.

    The keys say "test" so that `dvc metrics show` and `dvc exp show` never leave a reader
    guessing which set a number comes from.
    """
    probabilities = softmax(logits.astype("float64"), axis=1)
    return {
        "test_accuracy": float(accuracy_score(labels, logits.argmax(axis=1))),
        "test_loss": float(log_loss(labels, probabilities, labels=range(NUM_CLASSES))),
        "test_errors": int((logits.argmax(axis=1) != labels).sum()),
    }


def predictions_table(labels: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """One row per test image, the input DVC's confusion template expects."""
    return pd.DataFrame({"actual": labels.astype(int), "predicted": predicted.astype(int)})


def misclassified_picture(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    *,
    max_digits: int,
    columns: int = 10,
) -> np.ndarray:
    """A grid of the first `max_digits` misclassified digits, each captioned 'true>predicted'."""
    wrong = np.flatnonzero(labels != predicted)[:max_digits]
    rows = max(1, -(-len(wrong) // columns))
    canvas = np.full((rows * TILE, columns * TILE), 255, dtype=np.uint8)
    for slot, index in enumerate(wrong):
        top, left = (slot // columns) * TILE, (slot % columns) * TILE
        digit = cv2.resize(255 - images[index], (40, 40), interpolation=cv2.INTER_NEAREST)
        canvas[top + 2 : top + 42, left + 8 : left + 48] = digit
        caption = f"{labels[index]}>{predicted[index]}"
        cv2.putText(canvas, caption, (left + 12, top + 53), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0, 1)
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--split-dir", type=Path, required=True)
    parser.add_argument("--models", type=Path, nargs="+", required=True)
    parser.add_argument("--metrics-out", type=Path, required=True)
    parser.add_argument("--plots-dir", type=Path, required=True)
    args = parser.parse_args()
    config = params.load(args.params)["evaluate"]
    images = np.load(args.split_dir / "test_images.npy")
    labels = np.load(args.split_dir / "test_labels.npy")

    metrics = {}
    for path in args.models:
        name = path.stem
        model = load_model(path)
        logits = model.predict(images, batch_size=config["batch_size"], verbose=0)
        predicted = logits.argmax(axis=1)
        metrics[name] = score(logits, labels)
        scores = metrics[name]
        accuracy, loss = scores["test_accuracy"], scores["test_loss"]
        print(f"evaluate {name}: test accuracy {accuracy:.4f}, loss {loss:.4f}")
        print(confusion_matrix(labels, predicted, labels=range(NUM_CLASSES)))
        io.write_text(
            args.plots_dir / f"{name}_predictions.csv",
            predictions_table(labels, predicted).to_csv(index=False),
        )
        picture = misclassified_picture(
            images, labels, predicted, max_digits=config["max_misclassified"]
        )
        ok, png = cv2.imencode(".png", picture)
        if not ok:
            raise io.StageError(f"could not encode {name}_misclassified.png")
        io.write_bytes(args.plots_dir / f"{name}_misclassified.png", png.tobytes())
    io.write_text(args.metrics_out, json.dumps(metrics, indent=2) + "\n")


if __name__ == "__main__":
    io.run(main)
