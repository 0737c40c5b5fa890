"""tf.distribute for real on CPU: MirroredStrategy over two logical CPUs, and two workers."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import ROOT, dvc

# Logical devices must be configured before TensorFlow starts, so this runs in a fresh process.
MIRRORED_SCRIPT = """
import json
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from stages.train import make_strategy, run
from tests.conftest import synthetic_digits

x, y = synthetic_digits(400, seed=0)
vx, vy = synthetic_digits(200, seed=1)
results = {"replicas": make_strategy("mirrored").num_replicas_in_sync}
for strategy in ("mirrored", "default"):
    _, history = run(
        train_images=x, train_labels=y, validation_images=vx, validation_labels=vy,
        regularized=sys.argv[1] == "regularized", epochs=int(sys.argv[2]), batch_size=20,
        learning_rate=0.003, seed=5, strategy=strategy, verbose=0,
    )
    results[strategy] = history.history["val_accuracy"][-1]
print(json.dumps(results))
"""


# The regularized model covers the fused batch norm under the strategy. Its statistics come from
# each replica's batch of 10, as with Keras's own layer, which slows the first epoch: it gets 3.
# One process per model: a second MirroredStrategy in one process reuses the first one's keys.
@pytest.mark.parametrize(("model", "epochs"), [("baseline", 1), ("regularized", 3)])
def test_mirrored_strategy_over_two_logical_cpus_learns_like_one_device(model, epochs):
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, model, str(epochs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert results["replicas"] == 2
    # One epoch on these learnable digits is far above chance (0.1) on both.
    assert results["mirrored"] > 0.5, results
    assert abs(results["mirrored"] - results["default"]) < 0.15, results


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_two_workers_train_in_step_and_only_the_chief_writes(project):
    dvc(project, "repro", "split")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(strategy="multi_worker", epochs=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        environment = dict(
            os.environ,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        command = [
            sys.executable, "-m", "stages.train", "--model", "baseline",
            "--train-dir", "data/split", "--validation-dir", "data/split",
            "--model-out", f"out{index}/baseline.keras", "--live-dir", f"out{index}/live",
        ]  # fmt: skip
        processes.append(
            subprocess.Popen(
                command,
                cwd=project,
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        deadline = time.monotonic() + 300
        outputs = [
            process.communicate(timeout=deadline - time.monotonic())[0] for process in processes
        ]
    finally:
        for process in processes:
            process.kill()
            process.wait()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output
    digests = [re.findall(r"weights sha256 ([0-9a-f]{16})", output) for output in outputs]
    assert len(digests[0]) == 1 and digests[0] == digests[1], outputs
    assert (project / "out0/baseline.keras").is_file()
    summary = json.loads((project / "out0/live/metrics.json").read_text())
    assert summary["step"] == 1 and summary["best_epoch"] in (1, 2)
    assert not (project / "out1").exists(), "a non-chief worker wrote files"
    assert "not the chief worker; wrote nothing" in outputs[1]
