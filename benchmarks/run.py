"""Benchmark the pipeline against plain references in alternating runs; see docs/performance.md."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from importlib.metadata import version
from pathlib import Path
from typing import Any

# Measured processes get the environment the benchmark started with, minus oneDNN's switch,
# which each variant sets or leaves to the project; importing stages below sets it here.
ENVIRONMENT = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from benchmarks.reference import reference_augment  # noqa: E402
from stages import augment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")
BENCHMARKS = ("augment", "training", "memory", "noop")
# name -> (implementation, environment overrides); every run in a fresh process.
VARIANTS = {
    "reference": ("reference", {"TF_ENABLE_ONEDNN_OPTS": "1"}),
    "project": ("project", {}),
    "project_onednn_off": ("project", {"TF_ENABLE_ONEDNN_OPTS": "0"}),
}
# Row -> (unit, what it measures, in one line).
ROWS = {
    "augment": ("x", "augment: the article's per-image loop over stages.augment (outputs equal)"),
    "training": ("x", "baseline images/s: the project over plain Keras fit, both on oneDNN"),
    "onednn": ("x", "baseline images/s of the project: oneDNN's kernels over TensorFlow's own"),
    "runtime": ("MiB", "resident memory right after importing mnist_cnn, TensorFlow and Keras"),
    "memory": ("MiB", "peak resident memory of the train-regularized stage over 1 epoch"),
    "noop": ("s", "wall time of dvc repro with nothing to do, in a copy of the project"),
}


def row(name: str, values: list[float], **details: Any) -> dict[str, Any]:
    """A row of the report: the median and range of repeated measurements, and what they are."""
    values = [float(value) for value in values]
    result = {"median": float(np.median(values)), "min": min(values), "max": max(values)}
    return {"measures": ROWS[name][1], "unit": ROWS[name][0], **result, "values": values, **details}


def run_child(command: list[str], overrides: dict[str, str] | None = None) -> tuple[str, float]:
    """Run a command to its end; return its stdout and its peak resident memory in MiB."""
    with tempfile.TemporaryFile() as output, tempfile.TemporaryFile() as errors:
        environment = {**ENVIRONMENT, **(overrides or {})}
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=output, stderr=errors)
        # wait4 reports this child's own peak, where RUSAGE_CHILDREN gives the largest child's.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{tail}")
        output.seek(0)
        return output.read().decode(), usage.ru_maxrss / 1024


def bench_augment(images: np.ndarray, rounds: int) -> dict[str, Any]:
    reference, project, labels = [], [], np.zeros(len(images), np.uint8)

    def project_augment() -> tuple[np.ndarray, np.ndarray]:
        return augment.augment(images, labels, shifts=True, flip_horizontal=True)

    for _ in range(rounds):
        start = time.perf_counter()
        expected = reference_augment(images)
        reference.append(time.perf_counter() - start)
        # One project run is short, so each turn keeps the median of five.
        project.append(np.median(timeit.repeat(project_augment, number=1, repeat=5)))
    if not np.array_equal(project_augment()[0], expected):
        raise AssertionError("stages.augment.augment differs from the article's loop")
    ratios = [r / p for r, p in zip(reference, project, strict=True)]
    return row(
        "augment", ratios, images=len(images), reference_seconds=reference, project_seconds=project
    )


def bench_training(split_dir: Path, rounds: int, epochs: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for turn in range(rounds):
        # The order alternates, so that a drift of the machine's load favours no variant.
        for name in list(VARIANTS)[:: 1 if turn % 2 == 0 else -1]:
            implementation, overrides = VARIANTS[name]
            command = [sys.executable, "-m", "benchmarks.worker", implementation, str(split_dir)]
            output, _ = run_child(command + [str(epochs)], overrides)
            runs[name].append(json.loads(output.strip().splitlines()[-1]))
            print(f"  {name:20s} {runs[name][-1]['images_per_second']:8.0f} images/s", flush=True)
    speed = {name: [run["images_per_second"] for run in runs[name]] for name in VARIANTS}
    over = lambda name: [p / q for p, q in zip(speed["project"], speed[name], strict=True)]  # noqa: E731
    imported = [run["rss_after_import_mib"] for run in runs["project"]]
    return {
        "training": row("training", over("reference"), images_per_second=speed, runs=runs),
        "onednn": row("onednn", over("project_onednn_off")),
        "runtime": row("runtime", [sample["VmRSS"] for sample in imported], samples=imported),
    }


def bench_memory(work: Path, train_dir: Path, validation_dir: Path) -> dict[str, Any]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "stages.train", "--params", str(work / "params.yaml")]
    command += ["--model", "regularized", "--train-dir", str(train_dir), "--validation-dir"]
    command += [str(validation_dir), "--model-out", str(work / "model.keras"), "--live-dir"]
    start = time.perf_counter()
    _, peak = run_child(command + [str(work / "live")])
    images = len(np.load(train_dir / "train_labels.npy", mmap_mode="r"))
    return row("memory", [peak], images=images, seconds=time.perf_counter() - start)


def bench_noop(work: Path, rounds: int) -> dict[str, Any]:
    """`dvc repro` with nothing to do, in a copy of the project with stand-in outputs committed.

    A no-op repro compares the hashes DVC recorded (kept by inode, size and mtime), never the
    contents, so small stand-ins time the same as the real outputs.
    """
    project = work / "project"
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, project / name)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()
    for stage in stages:
        for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            path = project / (entry if isinstance(entry, str) else next(iter(entry)))
            path = path if path.suffix else path / "stand-in"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("stand-in\n")
    # The code and any other inputs that no stage writes, as they are.
    for dependency in {path for stage in stages for path in stage.get("deps", [])}:
        if not (project / dependency).exists():
            (project / dependency).parent.mkdir(parents=True, exist_ok=True)
            copy = shutil.copytree if (ROOT / dependency).is_dir() else shutil.copy
            copy(ROOT / dependency, project / dependency)
    dvc = [sys.executable, "-m", "dvc"]
    for command in (["init", "--no-scm", "-q"], ["commit", "--force", "--quiet"]):
        subprocess.run(dvc + command, cwd=project, check=True, capture_output=True)
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = subprocess.run(dvc + ["repro"], cwd=project, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        if result.returncode or "Running stage" in result.stdout:
            raise AssertionError(f"the no-op dvc repro did work:\n{result.stdout}{result.stderr}")
    return row("noop", seconds, stages=len(stages))


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE).group(1).split()
    return {
        "cpu": re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE).group(1),
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags],
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        **{package: version(package) for package in ("tensorflow", "keras", "numpy", "dvc")},
    }


def synthetic_data(folder: Path, **counts: int) -> Path:
    """Random uint8 images and labels laid out as the split stage writes them: part=count."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for part, count in counts.items():
        np.save(folder / f"{part}_images.npy", rng.integers(0, 256, (count, 28, 28), np.uint8))
        np.save(folder / f"{part}_labels.npy", rng.integers(0, 10, count, np.uint8))
    return folder


def report(results: dict[str, Any]) -> str:
    """One line per row: the median, the range over the runs, and what the row measures."""
    machine = results["machine"]
    lines = [f"{results['date']}, {machine['cpu']} ({' '.join(machine['cpu_flags'])})"]
    for name, row in results["rows"].items():
        median, spread = row["median"], f"{row['min']:.4g}-{row['max']:.4g}, {len(row['values'])}"
        lines.append(f"{name:9s}{median:8.4g} {row['unit']:3s} ({spread})  {row['measures']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny synthetic inputs, one turn")
    parser.add_argument("--rounds", type=int, help="turns of each comparison (default 3; quick 1)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs; the first warms up")
    parser.add_argument("--train-images", type=int, help="per epoch (default 55,000)")
    parser.add_argument("--skip", nargs="*", default=[], choices=BENCHMARKS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/latest.json")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    date = datetime.date.today().isoformat()
    results: dict[str, Any] = {"date": date, "quick": args.quick, "machine": machine(), "rows": {}}
    rows = results["rows"]
    with tempfile.TemporaryDirectory(prefix="benchmark-") as temporary:
        work = Path(temporary)
        # Random images, as many as the pipeline's: timings and memory depend on sizes, not pixels.
        train = args.train_images or (256 if args.quick else 55_000)
        split_dir = synthetic_data(
            work / "split", train=train, validation=64 if args.quick else 5_000
        )
        augment_dir = synthetic_data(work / "augment", train=1_536 if args.quick else 330_000)
        if "augment" not in args.skip:
            images = np.load(split_dir / "train_images.npy")
            rows["augment"] = bench_augment(images, rounds)
        if "training" not in args.skip:
            rows.update(bench_training(split_dir, rounds, args.epochs))
        if "memory" not in args.skip:
            rows["memory"] = bench_memory(work, augment_dir, split_dir)
        if "noop" not in args.skip:
            rows["noop"] = bench_noop(work, rounds)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{report(results)}\nwrote {args.out}")


if __name__ == "__main__":
    main()
