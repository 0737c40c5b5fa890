"""Training processes for tests/test_distribute.py: mirrored replicas and a two-worker cluster."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.conftest import ROOT

# Logical devices must be configured before TensorFlow starts, so this runs in a fresh process,
# one per model: a second MirroredStrategy in one process reuses the first one's collective keys.
MIRRORED_SCRIPT = """
import json
import sys

import mnist_cnn
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from mnist_cnn import training
from mnist_cnn.params import TrainConfig
from tests.conftest import ROOT, synthetic_digits

model_name, images, batch_size, epochs, *strategies = sys.argv[1:]
config = TrainConfig.load(ROOT / "params.yaml").replace(
    batch_size=int(batch_size), epochs=int(epochs)
)
train = synthetic_digits(int(images), seed=0)
validation = synthetic_digits(200, seed=1)
results = {}
for strategy in strategies:
    model, history = training.run(
        config.replace(strategy=strategy), regularized=model_name == "regularized",
        train=train, validation=validation, verbose=0,
    )
    # Each trainable variable's copy on each replica: all-reduced gradients keep them equal.
    copies = [getattr(v.value, "values", (v.value,)) for v in model.trainable_variables]
    results[strategy] = {
        "replicas": len(copies[0]),
        "replica_spread": max(
            float(np.max(np.abs(c.numpy() - cs[0].numpy()))) for cs in copies for c in cs
        ),
        "history": history.history,
    }
    np.savez(f"{strategy}.npz", *model.get_weights())
print(json.dumps(results))
"""


def run_mirrored(
    folder: Path, model: str, *, images: int, batch_size: int, epochs: int, strategies: list[str]
) -> tuple[dict, str, dict[str, list[np.ndarray]]]:
    """Train `model` with training.run under each strategy, two logical CPUs in the process.

    Returns each strategy's results, the process's output and each one's final weights.
    """
    arguments = [model, str(images), str(batch_size), str(epochs), *strategies]
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, *arguments],
        cwd=folder,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    weights = {name: list(np.load(folder / f"{name}.npz").values()) for name in strategies}
    return results, result.stdout, weights


def start_stage(project: Path, output: str, tf_config: dict | None) -> subprocess.Popen:
    """Start the baseline's train stage writing into `output`; its log goes to `output`.log."""
    environment = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    if tf_config is not None:
        environment["TF_CONFIG"] = json.dumps(tf_config)
    command = [
        sys.executable, "-m", "stages.train", "--model", "baseline",
        "--train-dir", "data/split", "--validation-dir", "data/split",
        "--model-out", f"{output}/baseline.keras", "--live-dir", f"{output}/live",
    ]  # fmt: skip
    # A file, not a pipe: nobody reads a pipe while the test waits, and a full one blocks.
    with open(project / f"{output}.log", "w") as log:
        return subprocess.Popen(command, cwd=project, env=environment, stdout=log, stderr=log)


def wait_all(processes: list[subprocess.Popen], *, timeout: float) -> None:
    """Wait for every process; once one fails, kill the rest, which would wait for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [process for process in processes if process.poll() is None]
        if not running or any(process.returncode for process in processes):
            break
        try:
            running[0].wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def free_ports(count: int) -> list[int]:
    """Ports that were free a moment ago, on every interface, where TensorFlow binds them."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def run_two_workers(project: Path, *, attempts: int = 3) -> list[str]:
    """Run the stage as a two-worker cluster on loopback; return each worker's output.

    Another process can take a probed port before the worker binds it. That worker then fails
    with "Could not start gRPC server", and the whole launch is retried on other ports.
    """
    for _ in range(attempts):
        for index in range(2):
            shutil.rmtree(project / f"out{index}", ignore_errors=True)
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
        processes = [
            start_stage(
                project,
                f"out{index}",
                {"cluster": cluster, "task": {"type": "worker", "index": index}},
            )
            for index in range(2)
        ]
        wait_all(processes, timeout=900)
        outputs = [(project / f"out{index}.log").read_text() for index in range(2)]
        if not any("Could not start gRPC server" in output for output in outputs):
            break
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    return outputs
