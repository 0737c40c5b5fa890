"""Real faults on tiny data: SIGKILL and Ctrl-C mid-stage, determinism, parallel experiments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import dvc, make_project, tiny_params, write_mirror

TEMPORARY_PREFIXES = (".train_images.npy.", ".baseline.keras.", ".regularized.keras.")


def lock_outputs(project: Path) -> dict[str, str]:
    """Every stage output's hash, as dvc.lock records it, but for the models.

    A .keras file embeds the time it was saved, so models are compared by weights instead.
    """
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out.get("md5")
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
        if not out["path"].endswith(".keras")
    }


def model_weights(project: Path) -> dict[str, list]:
    import keras

    return {
        name: [
            w.tolist()
            for w in keras.models.load_model(project / f"models/{name}.keras").get_weights()
        ]
        for name in ("baseline", "regularized")
    }


RESULT_FILES = (
    "metrics/test.json",
    "metrics/train/baseline/metrics.json",
    "metrics/train/regularized/plots/metrics/eval/accuracy.tsv",
    "metrics/plots/regularized_predictions.csv",
)


def start_repro(project: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill_when(process: subprocess.Popen, condition, *, timeout: float = 300) -> None:
    """SIGKILL the whole process group as soon as `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError("the run ended before the moment to interrupt it")
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def leftovers(project: Path) -> list[Path]:
    return [
        path
        for folder in ("data/augment", "models")
        if (project / folder).is_dir()
        for path in (project / folder).iterdir()
        if path.name.startswith(TEMPORARY_PREFIXES)
    ]


@pytest.fixture
def bigger_mirror(tmp_path, monkeypatch):
    """Enough synthetic images that augment takes long enough to be caught mid-write."""
    from tests.conftest import synthetic_mnist

    mirror = tmp_path / "mirror"
    sha256 = write_mirror(mirror, synthetic_mnist(train=30_000, test=100))
    monkeypatch.setenv("MNIST_MIRROR", str(mirror))
    return sha256


def test_sigkill_mid_augment_then_repro_matches_an_uninterrupted_run(tmp_path, bigger_mirror):
    params = tiny_params(sha256=bigger_mirror)
    reference = make_project(tmp_path / "reference", params)
    dvc(reference, "repro", "augment")

    project = make_project(tmp_path / "interrupted", params)
    process = start_repro(project)
    augment_dir = project / "data/augment"
    kill_when(
        process,
        lambda: (
            augment_dir.is_dir()
            and any(p.name.startswith(".train_images") for p in augment_dir.iterdir())
        ),
    )
    assert not (augment_dir / "train_images.npy").exists()

    dvc(project, "repro", "augment")
    assert leftovers(project) == []
    assert lock_outputs(project) == lock_outputs(reference)


def test_sigkill_mid_training_then_repro_matches_an_uninterrupted_run(
    tmp_path, tiny_mirror, monkeypatch
):
    mirror, sha256 = tiny_mirror
    monkeypatch.setenv("MNIST_MIRROR", str(mirror))
    params = tiny_params(sha256=sha256, train={"epochs": 3})
    reference = make_project(tmp_path / "reference", params)
    dvc(reference, "repro")

    project = make_project(tmp_path / "interrupted", params)
    process = start_repro(project)
    # Killed in the middle of training, once the first epoch was logged.
    kill_when(process, lambda: (project / "metrics/train/baseline/metrics.json").exists())
    assert not (project / "models/baseline.keras").exists()

    dvc(project, "repro")
    assert leftovers(project) == []
    assert lock_outputs(project) == lock_outputs(reference)
    assert model_weights(project) == model_weights(reference)
    for name in RESULT_FILES:
        assert (project / name).read_bytes() == (reference / name).read_bytes(), name


def test_two_forced_runs_give_identical_metrics(project):
    dvc(project, "repro")
    first = {name: (project / name).read_bytes() for name in RESULT_FILES}
    first_outputs, first_weights = lock_outputs(project), model_weights(project)
    dvc(project, "repro", "--force")
    for name in RESULT_FILES:
        assert (project / name).read_bytes() == first[name], name
    assert lock_outputs(project) == first_outputs
    assert model_weights(project) == first_weights


# 0.0 lands at an epoch boundary (just after dvclive wrote the epoch), 0.5 inside an epoch.
@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_ctrl_c_during_training_stops_cleanly(project, delay):
    dvc(project, "repro", "augment")
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
        "models/regularized.keras",
        "--live-dir",
        "live",
    ]
    params = yaml.safe_load((project / "params.yaml").read_text())
    # Small batches make an epoch last seconds, so the interrupt lands inside one.
    params["train"].update(epochs=1000, batch_size=4)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    process = subprocess.Popen(
        command, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (project / "live/metrics.json").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "Interrupted; no partial output was kept."
    assert not (project / "models/regularized.keras").exists()
    assert leftovers(project) == []


def test_queued_experiments_run_in_parallel(project):
    dvc(project, "repro")
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "baseline run"], cwd=project, check=True)
    before = (project / "dvc.lock").read_bytes()
    for change in ("train.epochs=2", "augment.flip_horizontal=false", "train.dropout_rate=0.3"):
        dvc(project, "exp", "run", "--queue", "-S", change)
    dvc(project, "queue", "start", "-j", "2")
    deadline = time.monotonic() + 900
    while True:
        status = dvc(project, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status.count("Success") == 3, status
    rows = json.loads(dvc(project, "exp", "show", "--json").stdout)
    experiments = [exp for row in rows for exp in (row.get("experiments") or [])]
    assert len(experiments) == 3
    for experiment in experiments:
        data = experiment["revs"][0]["data"]
        metrics = data["metrics"]["metrics/test.json"]["data"]
        assert 0 <= metrics["regularized"]["accuracy"] <= 1
    # The workspace is untouched by the queued runs.
    assert (project / "dvc.lock").read_bytes() == before
    assert dvc(project, "status").stdout.strip().endswith("up to date.")
