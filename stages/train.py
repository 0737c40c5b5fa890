"""Stage train-baseline / train-regularized: train one model, log its curves, save it."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from mnist_cnn import distribute, io, training
from mnist_cnn.model import MODEL_NAMES, save_model
from mnist_cnn.params import TrainConfig


def summary(model_name: str, history: dict[str, list[float]], *, trained_on: str) -> dict:
    """The stage's metrics, nested under the model's name so that no key is ambiguous.

    `val_accuracy` and `val_loss` belong to the saved weights: the best epoch's on validation
    with `train.restore_best_weights`, else the last epoch's.
    """
    validation_accuracy = history.get("val_accuracy", [])
    epochs = len(history.get("loss", []))
    best = int(np.argmax(validation_accuracy)) if validation_accuracy else epochs - 1
    metrics: dict = {"epochs_trained": epochs, "saved_epoch": best + 1}
    if validation_accuracy:
        metrics["val_accuracy"] = float(validation_accuracy[best])
        metrics["val_loss"] = float(history["val_loss"][best])
        metrics["last_epoch_val_accuracy"] = float(validation_accuracy[-1])
    metrics["trained_on"] = trained_on
    return {model_name: metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", choices=MODEL_NAMES, required=True)
    parser.add_argument(
        "--train-dir", type=Path, required=True, help="holds train_{images,labels}.npy"
    )
    parser.add_argument("--validation-dir", type=Path, required=True, help="holds validation_*.npy")
    parser.add_argument("--model-out", type=Path, required=True)
    parser.add_argument("--live-dir", type=Path, required=True)
    args = parser.parse_args()
    config = TrainConfig.load(args.params)

    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    from mnist_cnn.callbacks import StopOnInterrupt

    # Memory-mapped uint8 arrays: batches are gathered from the files, never copied whole.
    def load(directory: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = (
            np.load(directory / f"{part}_{kind}.npy", mmap_mode="r")
            for kind in ("images", "labels")
        )
        return images, labels

    device = training.describe_devices()
    chief = config.strategy != "multi_worker" or distribute.is_chief(os.environ.get("TF_CONFIG"))
    print(f"train-{args.model}: training on {device}", flush=True)
    interrupt = StopOnInterrupt()
    # Only the chief writes files; other workers train in step with it and keep nothing.
    live = Live(dir=str(args.live_dir), dvcyaml=False, save_dvc_exp=False) if chief else None
    with live or contextlib.nullcontext():
        model, history = training.run(
            config,
            regularized=args.model == "regularized",
            train=load(args.train_dir, "train"),
            validation=load(args.validation_dir, "validation"),
            callbacks=[interrupt] + ([DVCLiveCallback(live=live)] if live else []),
            verbose=1 if sys.stdout.isatty() else 2,
        )
        if interrupt.interrupted:
            raise KeyboardInterrupt
    print(f"train-{args.model}: weights sha256 {distribute.weights_digest(model)}", flush=True)
    if not chief:
        print(f"train-{args.model}: not the chief worker; wrote nothing", flush=True)
        return
    # dvclive's own summary repeats the last epoch under flat names that both models share;
    # this one says which epoch the saved weights come from.
    metrics = summary(args.model, history.history, trained_on=training.describe_environment())
    io.write_text(args.live_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    with io.atomic_path(args.model_out, suffix=".keras") as temporary:
        save_model(model, temporary)
    print(f"train-{args.model}: saved {args.model_out}")


if __name__ == "__main__":
    io.run(main)
