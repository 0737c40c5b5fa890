"""One training variant of the benchmark, alone in a fresh process; prints its figures as JSON."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# name -> (environment overrides, overrides of the project's train params; None: the reference).
# TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it loads, hence one process per variant.
VARIANTS: dict[str, tuple[dict[str, str], dict[str, Any] | None]] = {
    "reference": ({}, None),
    "reference_onednn": ({"TF_ENABLE_ONEDNN_OPTS": "1"}, None),
    "project": ({}, {}),
    # The project with the reference's fixed learning rate, for the accuracy comparison.
    "project_constant_learning_rate": ({}, {"learning_rate_schedule": "constant"}),
    "project_onednn_off": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, {}),
    "project_steps_per_execution_1": ({}, {"steps_per_execution": 1}),
    "project_nondeterministic": ({}, {"deterministic": False}),
    "project_xla_nondeterministic": ({}, {"deterministic": False, "jit_compile": True}),
}


def load_data(quick: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The split's training and validation parts when present, else random images."""
    split_dir = ROOT / "data/split"
    if not quick and (split_dir / "train_images.npy").exists():
        load = lambda name: np.load(split_dir / f"{name}.npy")  # noqa: E731
        return (
            load("train_images"),
            load("train_labels"),
            load("validation_images"),
            load("validation_labels"),
        )
    rng = np.random.default_rng(0)
    count = 256 if quick else 55_000
    return (
        rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, count),
        rng.integers(0, 256, (64, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 64),
    )


def train_variant(name: str, *, epochs: int, quick: bool, seed: int | None) -> dict[str, Any]:
    """Images per second over whole epochs after the first, and the final validation accuracy."""
    overrides = VARIANTS[name][1]
    if overrides is None:
        from benchmarks.reference import reference_train
    else:
        # Imported before TensorFlow loads, exactly as the stage runs.
        from stages import train
    import keras

    from stages.params import load as load_params

    class EpochTimer(keras.callbacks.Callback):
        """Wall time of each training epoch, validation excluded."""

        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.start = time.perf_counter()

        def on_test_begin(self, logs: dict | None = None) -> None:
            self.on_epoch_end(-1)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if hasattr(self, "start"):
                self.seconds.append(time.perf_counter() - self.start)
                del self.start

    config = load_params(ROOT / "params.yaml")["train"]
    # The seed draws the initial weights, the data order and dropout, for either implementation.
    seed = config["seed"] if seed is None else seed
    batch_size = 32 if quick else config["batch_size"]
    x, y, validation_x, validation_y = load_data(quick)
    timer = EpochTimer()
    if overrides is None:
        accuracy = reference_train(
            x,
            y,
            validation_x,
            validation_y,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            callbacks=[timer],
        )
    else:
        _, history = train.run(
            train_images=x,
            train_labels=y,
            validation_images=validation_x,
            validation_labels=validation_y,
            regularized=False,
            callbacks=[timer],
            verbose=0,
            **{**config, "batch_size": batch_size, "epochs": epochs, "seed": seed, **overrides},
        )
        accuracy = history.history["val_accuracy"][-1]
    timed = timer.seconds[1:] or timer.seconds
    return {
        "images": len(x),
        "batch_size": batch_size,
        "seed": seed,
        "images_per_second": len(x) / (sum(timed) / len(timed)),
        "validation_accuracy": float(accuracy),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (TensorFlow's default)"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=VARIANTS)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, help="default: train.seed from params.yaml")
    args = parser.parse_args()
    figures = train_variant(args.name, epochs=args.epochs, quick=args.quick, seed=args.seed)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
