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

# The environment the user started the benchmark with: the reference runs under it, while
# importing the training stage below changes TensorFlow's defaults in this process.
USER_ENVIRONMENT = dict(os.environ)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from stages import augment, params, train  # noqa: E402, I001  (before TensorFlow loads)

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.reference import reference_augment  # noqa: E402
from benchmarks.variant import VARIANTS, load_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


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


def run_variant(name: str, *, epochs: int, quick: bool, seed: int | None = None) -> dict[str, Any]:
    """One variant in a fresh process: TensorFlow reads its environment once, when it loads."""
    command = [sys.executable, "-m", "benchmarks.variant", name, "--epochs", str(epochs)]
    command += (["--quick"] if quick else []) + ([] if seed is None else ["--seed", str(seed)])
    output = subprocess.run(
        command,
        cwd=ROOT,
        env={**USER_ENVIRONMENT, "TF_CPP_MIN_LOG_LEVEL": "2", **VARIANTS[name][0]},
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def bench_training(*, quick: bool, epochs: int) -> dict[str, Any]:
    """Throughput of every variant, with the params' seed."""
    results: dict[str, Any] = {"epochs": epochs}
    for name in VARIANTS:
        figures = run_variant(name, epochs=epochs, quick=quick)
        figures.pop("seed")
        results["images"] = figures.pop("images")
        results["batch_size"] = figures.pop("batch_size")
        for key, value in figures.items():
            results[f"{name}_{key}"] = value
        print(f"  {name:32s} {figures['images_per_second']:8.0f} images/s", flush=True)
    reference = results["reference_images_per_second"]
    for name in VARIANTS:
        if name != "reference":
            results[f"{name}_speedup"] = results[f"{name}_images_per_second"] / reference
    return results


ACCURACY_VARIANTS = ("reference", "project", "project_constant_learning_rate")


def bench_accuracy(*, quick: bool, epochs: int, seeds: int) -> dict[str, Any]:
    """Validation accuracy of the baseline after `epochs` epochs, over seeds 1..`seeds`.

    One seed's accuracy after 2 epochs varies by a few tenths of a point with the data order, so
    a single run cannot tell whether the project learns as well as the reference. A seed does not
    give the two implementations the same data order, so the runs are compared as independent
    samples: the difference of the means, and its standard error.
    """
    if seeds < 2:
        raise ValueError(f"The accuracy comparison needs at least 2 seeds; got {seeds}.")
    results: dict[str, Any] = {"epochs": epochs, "seeds": list(range(1, seeds + 1))}
    for name in ACCURACY_VARIANTS:
        accuracies = [
            run_variant(name, epochs=epochs, quick=quick, seed=seed)["validation_accuracy"]
            for seed in results["seeds"]
        ]
        results[f"{name}_accuracies"] = accuracies
        results[f"{name}_mean"] = float(np.mean(accuracies))
        results[f"{name}_std"] = float(np.std(accuracies, ddof=1))
        print(f"  {name:32s} mean {results[f'{name}_mean']:.4f} over {seeds} seeds", flush=True)
    for name in ACCURACY_VARIANTS[1:]:
        # Points of accuracy, and the standard error of that difference of two means.
        difference = 100 * (results[f"{name}_mean"] - results["reference_mean"])
        error = 100 * np.hypot(results[f"{name}_std"], results["reference_std"]) / np.sqrt(seeds)
        results[f"{name}_minus_reference_points"] = difference
        results[f"{name}_minus_reference_standard_error"] = float(error)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny inputs: checks the script runs")
    parser.add_argument(
        "--epochs", type=int, default=3, help="training epochs, the first is warm-up"
    )
    parser.add_argument(
        "--accuracy-epochs", type=int, default=2, help="epochs of each accuracy comparison run"
    )
    parser.add_argument(
        "--accuracy-seeds", type=int, default=5, help="seeds of the accuracy comparison"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/latest.json")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["augment", "train", "accuracy", "memory", "noop"]
    )
    args = parser.parse_args()
    if "accuracy" not in args.skip and args.accuracy_seeds < 2:
        parser.error(f"--accuracy-seeds must be at least 2; got {args.accuracy_seeds}.")
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
        results["training"] = bench_training(quick=args.quick, epochs=args.epochs)
        print_row(
            f"training (baseline, batch {results['training']['batch_size']})",
            results["training"],
            "project_speedup",
        )
    if "accuracy" not in args.skip:
        results["accuracy"] = bench_accuracy(
            quick=args.quick, epochs=args.accuracy_epochs, seeds=args.accuracy_seeds
        )
        accuracy = results["accuracy"]
        print(
            f"accuracy after {args.accuracy_epochs} epoch(s), {args.accuracy_seeds} seeds: "
            f"project {accuracy['project_minus_reference_points']:+.2f} points against the "
            f"reference (standard error "
            f"{accuracy['project_minus_reference_standard_error']:.2f}); with the reference's "
            f"constant rate "
            f"{accuracy['project_constant_learning_rate_minus_reference_points']:+.2f}",
            flush=True,
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
