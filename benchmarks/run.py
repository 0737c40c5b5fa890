"""Benchmark the pipeline against obvious reference implementations, measured in one run."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy.ndimage import shift as scipy_shift  # noqa: E402

from stages import augment, params, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# --- Reference implementations, written the obvious way a user would. -----------------------


def reference_augment(images: np.ndarray) -> np.ndarray:
    """The article's method: a Python loop of scipy shift per image, then cv2.flip per image."""
    shifted = []
    for dy, dx in augment.SHIFTS:
        for image in images:
            shifted.append(scipy_shift(image, (dy, dx), order=0, mode="constant", cval=0))
    flipped = [cv2.flip(image, 1) for image in images]
    return np.concatenate([images, np.array(shifted), np.array(flipped)])


def reference_model() -> keras.Model:
    """The same architecture as the baseline, taking float32 images scaled to [0, 1]."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(12, 3, padding="same"),
            keras.layers.MaxPooling2D(3, strides=2),
            keras.layers.Conv2D(16, 3, padding="same"),
            keras.layers.MaxPooling2D(3, strides=2),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def reference_train(x, y, vx, vy, *, epochs: int, batch_size: int, callbacks) -> float:
    """`model.fit` on float32 numpy arrays; returns the final validation accuracy."""
    keras.utils.set_random_seed(0)
    x = (x.astype("float32") / 255)[..., None]
    vx = (vx.astype("float32") / 255)[..., None]
    model = reference_model()
    model.compile(
        optimizer=keras.optimizers.Adam(0.001),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(vx, vy),
        callbacks=callbacks,
        verbose=0,
    )
    return history.history["val_accuracy"][-1]


# --- Measurements. ------------------------------------------------------------------------------


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each training epoch, validation excluded."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_test_begin(self, logs=None):
        if hasattr(self, "start"):
            self.seconds.append(time.perf_counter() - self.start)
            del self.start

    def on_epoch_end(self, epoch, logs=None):
        if hasattr(self, "start"):
            self.seconds.append(time.perf_counter() - self.start)
            del self.start


def images_per_second(timer: EpochTimer, count: int) -> float:
    """Throughput over whole epochs after the first (warm-up) one."""
    timed = timer.seconds[1:] or timer.seconds
    return count / (sum(timed) / len(timed))


def bench_augment(images: np.ndarray) -> dict[str, Any]:
    start = time.perf_counter()
    expected = reference_augment(images)
    reference_seconds = time.perf_counter() - start
    # The project's run is short, so it is timed five times and the median is kept.
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        result, _ = augment.augment(
            images, np.zeros(len(images), np.uint8), shifts=True, flip_horizontal=True
        )
        timings.append(time.perf_counter() - start)
    project_seconds = float(np.median(timings))
    if not np.array_equal(result, expected):
        raise AssertionError("augment differs from the reference")
    return {
        "images": len(images),
        "reference_seconds": reference_seconds,
        "project_seconds": project_seconds,
        "speedup": reference_seconds / project_seconds,
    }


TRAINING_VARIANTS = {
    "reference": None,
    "project": {},
    "project_nondeterministic": {"deterministic": False},
    "project_steps_per_execution_32": {"steps_per_execution": 32},
    "project_xla_nondeterministic": {"deterministic": False, "jit_compile": True},
}


def train_variant(name: str, data, *, epochs: int, config: dict[str, Any]) -> dict[str, float]:
    """Images per second and final validation accuracy of one variant, in this process."""
    x, y, vx, vy = data
    timer = EpochTimer()
    if TRAINING_VARIANTS[name] is None:
        accuracy = reference_train(
            x, y, vx, vy, epochs=epochs, batch_size=config["batch_size"], callbacks=[timer]
        )
    else:
        _, history = train.run(
            train_images=x,
            train_labels=y,
            validation_images=vx,
            validation_labels=vy,
            regularized=False,
            callbacks=[timer],
            verbose=0,
            **{**config, "epochs": epochs, **TRAINING_VARIANTS[name]},
        )
        accuracy = history.history["val_accuracy"][-1]
    return {"images_per_second": images_per_second(timer, len(x)), "validation_accuracy": accuracy}


def bench_training(*, quick: bool, epochs: int, batch_size: int) -> dict[str, Any]:
    """Each variant in a fresh process, since TensorFlow's op determinism is process-wide."""
    results: dict[str, Any] = {"epochs": epochs, "batch_size": batch_size}
    for name in TRAINING_VARIANTS:
        command = [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--train-variant",
            name,
            "--epochs",
            str(epochs),
        ] + (["--quick"] if quick else [])
        output = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
        figures = json.loads(output.stdout.strip().splitlines()[-1])
        results["images"] = figures.pop("images")
        for key, value in figures.items():
            results[f"{name}_{key}"] = value
    for name in TRAINING_VARIANTS:
        if name != "reference":
            results[f"{name}_speedup"] = (
                results[f"{name}_images_per_second"] / results["reference_images_per_second"]
            )
    return results


def bench_memory(*, epochs: int) -> dict[str, Any]:
    """Peak resident memory of the train-regularized stage as DVC would run it."""
    command = [
        sys.executable,
        "-m",
        "stages.train",
        "--model",
        "regularized",
        "--train-dir",
        "data/augment",
        "--validation-dir",
        "data/split",
        "--model-out",
        "benchmarks/results/regularized.keras",
        "--live-dir",
        "benchmarks/results/live",
        "--params",
        "benchmarks/results/params.yaml",
    ]
    config = params.load(ROOT / "params.yaml")
    config["train"]["epochs"] = epochs
    (ROOT / "benchmarks/results/params.yaml").write_text(json.dumps(config))
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"train_regularized_epochs": epochs, "peak_rss_mib": peak_kib / 1024}


def bench_noop_repro() -> dict[str, Any]:
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--quiet"], cwd=ROOT, capture_output=True
    )
    if status.returncode != 0:
        return {"skipped": "the workspace is not up to date; run `dvc repro` first"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=ROOT, check=True, capture_output=True
    )
    return {"seconds": time.perf_counter() - start}


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpus": train.describe_devices() if tf.config.list_physical_devices("GPU") else None,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "opencv": cv2.__version__,
    }


def load_data(quick: bool):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny inputs: checks the script runs")
    parser.add_argument(
        "--epochs", type=int, default=3, help="training epochs, the first is warm-up"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/latest.json")
    parser.add_argument("--train-variant", choices=TRAINING_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["augment", "train", "memory", "noop"]
    )
    args = parser.parse_args()
    config = params.load(ROOT / "params.yaml")["train"]
    if args.quick:
        config["batch_size"] = 32
    if args.train_variant:
        data = load_data(args.quick)
        figures = train_variant(args.train_variant, data, epochs=args.epochs, config=config)
        print(json.dumps({"images": len(data[0]), **figures}))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks/results").mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    if "augment" not in args.skip:
        images = load_data(True)[0][:64] if args.quick else augment_source()
        results["augment"] = bench_augment(images)
        print_row("augment", results["augment"], "speedup")
    # Memory before training: ru_maxrss of children is the largest child so far.
    if (
        "memory" not in args.skip
        and not args.quick
        and (ROOT / "data/augment/train_images.npy").exists()
    ):
        results["memory"] = bench_memory(epochs=1)
        print_row("memory", results["memory"], "peak_rss_mib")
    if "train" not in args.skip:
        results["training"] = bench_training(
            quick=args.quick, epochs=args.epochs, batch_size=config["batch_size"]
        )
        print_row(
            f"training (baseline, batch {config['batch_size']})",
            results["training"],
            "project_speedup",
        )
    if "noop" not in args.skip and not args.quick:
        results["noop_repro"] = bench_noop_repro()
        print_row("no-op dvc repro", results["noop_repro"], "seconds")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def augment_source() -> np.ndarray:
    """The 60,000 MNIST training images when fetched, else as many random ones."""
    from stages.split import read_images

    raw = ROOT / "data/raw/train-images-idx3-ubyte"
    if raw.exists():
        return read_images(raw)
    return np.random.default_rng(0).integers(0, 256, (60_000, 28, 28), dtype=np.uint8)


def print_row(title: str, figures: dict[str, Any], headline: str) -> None:
    details = ", ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in figures.items()
    )
    print(
        f"{title:32s} {headline}={figures.get(headline, float('nan')):.4g}  ({details})", flush=True
    )


if __name__ == "__main__":
    main()
