"""Stage figures: the README's pictures, drawn from the run's curves and test predictions."""

from __future__ import annotations

import argparse
import io as bytes_io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # No display: draw to files only.

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from mnist_cnn import io  # noqa: E402

NUM_CLASSES = 10
# PNG metadata names the matplotlib version by default; without it the bytes depend on the data.
PNG_METADATA = {"Software": None}


def read_curve(live_dir: Path, name: str) -> pd.DataFrame:
    """One dvclive curve (columns step and the metric), or StageError naming the missing file."""
    path = live_dir / "plots" / "metrics" / f"{name}.tsv"
    if not path.is_file():
        raise io.StageError(f"{path}: missing; run the train stages first")
    return pd.read_csv(path, sep="\t")


def curves_figure(live_dirs: dict[str, Path]) -> plt.Figure:
    """Validation accuracy and loss per epoch of every model, one panel each."""
    figure, (accuracy_axis, loss_axis) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for model_name, live_dir in live_dirs.items():
        accuracy = read_curve(live_dir, "eval/accuracy")
        loss = read_curve(live_dir, "eval/loss")
        epochs = accuracy["step"] + 1
        accuracy_axis.plot(epochs, 100 * accuracy["accuracy"], marker=".", label=model_name)
        loss_axis.plot(loss["step"] + 1, loss["loss"], marker=".", label=model_name)
        best = int(np.argmax(accuracy["accuracy"]))
        accuracy_axis.scatter(
            epochs[best],
            100 * accuracy["accuracy"][best],
            s=80,
            facecolors="none",
            edgecolors="black",
        )
    accuracy_axis.set(title="Validation accuracy (circle: saved epoch)", xlabel="epoch", ylabel="%")
    loss_axis.set(title="Validation loss", xlabel="epoch", ylabel="cross-entropy")
    for axis in (accuracy_axis, loss_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def confusion_figure(predictions: pd.DataFrame, title: str) -> plt.Figure:
    """The test set's confusion counts with the diagonal masked, so the errors carry the colour."""
    counts = confusion_matrix(
        predictions["actual"], predictions["predicted"], labels=range(NUM_CLASSES)
    )
    errors = np.ma.masked_where(np.eye(NUM_CLASSES, dtype=bool), counts)
    figure, axis = plt.subplots(figsize=(5.2, 4.6), dpi=100)
    image = axis.imshow(errors, cmap="Reds", vmin=0)
    for true_class in range(NUM_CLASSES):
        for predicted_class in range(NUM_CLASSES):
            count = counts[true_class, predicted_class]
            if count:
                colour = "grey" if true_class == predicted_class else "black"
                axis.text(
                    predicted_class,
                    true_class,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=colour,
                )
    axis.set(
        title=f"{title}: {int(errors.sum())} errors in {int(counts.sum()):,}",
        xlabel="predicted",
        ylabel="true",
        xticks=range(NUM_CLASSES),
        yticks=range(NUM_CLASSES),
    )
    figure.colorbar(image, ax=axis, label="errors")
    figure.tight_layout()
    return figure


def save_png(figure: plt.Figure, path: Path) -> None:
    """Write `figure` as PNG atomically, with metadata that does not change between runs."""
    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png", metadata=PNG_METADATA)
    plt.close(figure)
    io.write_bytes(path, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--live-dirs", type=Path, nargs="+", required=True, help="dvclive folders, one per model"
    )
    parser.add_argument(
        "--predictions", type=Path, required=True, help="the regularized model's predictions CSV"
    )
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    live_dirs = {path.name: path for path in args.live_dirs}
    save_png(curves_figure(live_dirs), args.out_dir / "curves.png")
    predictions = pd.read_csv(args.predictions)
    model_name = args.predictions.stem.removesuffix("_predictions")
    save_png(
        confusion_figure(predictions, f"{model_name}, test set"), args.out_dir / "confusion.png"
    )
    print(f"figures: wrote {args.out_dir / 'curves.png'} and {args.out_dir / 'confusion.png'}")


if __name__ == "__main__":
    io.run(main)
