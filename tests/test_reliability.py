"""Real faults on tiny data: SIGKILL mid-stage, determinism, parallel experiments."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import yaml

from tests.conftest import (
    commit_all,
    dvc,
    make_project,
    synthetic_mnist,
    tiny_params,
    update_params,
    write_mirror,
)
from tests.faults import Watched, assert_same_files, dvc_command, leftovers, snapshot

MODELS = ("baseline", "regularized")
# Chance is 0.1; three epochs on the tiny synthetic digits reach about 0.9 and 1.0 on test.
ACCURACY_FLOOR = 0.5


def locked_stages(project: Path) -> set[str]:
    lock = project / "dvc.lock"
    return set(yaml.safe_load(lock.read_text())["stages"]) if lock.exists() else set()


def test_sigkill_mid_augment_then_repro_gives_the_uninterrupted_outputs(tmp_path, monkeypatch):
    # Enough images that writing the augmented set takes long enough to be caught mid-write.
    sha256 = write_mirror(tmp_path / "mirror", synthetic_mnist(train=30_000, test=100))
    monkeypatch.setenv("MNIST_MIRROR", str(tmp_path / "mirror"))
    params = tiny_params(sha256=sha256)
    reference = make_project(tmp_path / "reference", params)
    dvc(reference, "repro", "augment")

    project = make_project(tmp_path / "interrupted", params)
    augment_dir = project / "data/augment"
    run = Watched(dvc_command("repro", "augment"), cwd=project, stderr=tmp_path / "stderr.txt")
    run.wait_until(
        lambda: (
            augment_dir.is_dir()
            and any(path.name.startswith(".train_images.npy.") for path in augment_dir.iterdir())
        )
    )
    run.kill()
    # Killed mid-write: the half-written file is a temporary one, never train_images.npy.
    assert not (augment_dir / "train_images.npy").exists()
    assert leftovers(augment_dir) != []
    assert locked_stages(project) == {"fetch", "split"}

    assert "Running stage 'augment'" in dvc(project, "repro", "augment").stdout
    assert leftovers(project) == []
    assert_same_files(snapshot(project), snapshot(reference))


def test_sigkill_mid_training_then_repro_gives_the_uninterrupted_outputs(
    tmp_path, tiny_mirror, monkeypatch
):
    mirror, sha256 = tiny_mirror
    monkeypatch.setenv("MNIST_MIRROR", str(mirror))
    params = tiny_params(sha256=sha256, train={"epochs": 3})
    reference = make_project(tmp_path / "reference", params)
    dvc(reference, "repro", "train-regularized")

    project = make_project(tmp_path / "interrupted", params)
    live = project / "metrics/train/regularized"
    run = Watched(
        dvc_command("repro", "train-regularized"), cwd=project, stderr=tmp_path / "stderr.txt"
    )
    # The first epoch is done and logged; the second has begun.
    run.wait_until(lambda: run.has_line("Epoch 2/3"))
    run.kill()
    assert not (project / "models/regularized.keras").exists()
    assert locked_stages(project) == {"fetch", "split", "augment"}
    # What the killed run left: dvclive's log of the first epoch, not the stage's summary.
    assert "step" in json.loads((live / "metrics.json").read_text())

    output = dvc(project, "repro", "train-regularized").stdout
    assert "Running stage 'train-regularized'" in output
    assert leftovers(project) == []
    assert_same_files(snapshot(project), snapshot(reference))


def test_two_forced_runs_give_byte_identical_outputs_and_dvc_lock(project):
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    runs = []
    for _ in range(2):
        output = dvc(project, "repro", "--force").stdout
        assert all(f"Running stage '{stage}'" in output for stage in stages), output
        runs.append(snapshot(project))
    first, second = runs
    for name in (
        "dvc.lock",
        "models/baseline.keras",
        "models/regularized.keras",
        "metrics/test.json",
        "metrics/train/regularized/plots/metrics/train/learning_rate.tsv",
        "metrics/train/baseline/plots/metrics/eval/accuracy.tsv",
    ):
        assert name in first, name
    assert_same_files(second, first)


def training_workspaces(project: Path) -> set[str]:
    """The experiment workspaces of `project` in which a train stage is running right now."""
    import psutil

    root = str(project.resolve() / ".dvc/tmp/exps") + os.sep
    found = set()
    for process in psutil.process_iter(["cmdline", "cwd"]):
        command, cwd = process.info["cmdline"] or [], process.info["cwd"] or ""
        if "stages.train" in command and cwd.startswith(root):
            found.add(cwd)
    return found


def queue_until_done(project: Path, *, timeout: float) -> tuple[str, int]:
    """Start the queue with 2 workers and wait for it to empty.

    Returns the final `dvc queue status` and the most train stages seen running at once, each
    in its own experiment workspace.
    """
    most_training = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal most_training
        while not done.is_set():
            most_training = max(most_training, len(training_workspaces(project)))
            done.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # The workers it starts inherit its stdout and stderr: pipes there would stay open.
        subprocess.run(
            dvc_command("queue", "start", "-j", "2"),
            cwd=project,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            status = dvc(project, "queue", "status").stdout
            if "Queued" not in status and "Running" not in status:
                return status, most_training
            assert time.monotonic() < deadline, status
            done.wait(1)
    finally:
        done.set()
        watcher.join()
        dvc(project, "queue", "stop", check=False)


def experiments_by_name(project: Path) -> dict[str, dict]:
    """Each experiment's name -> its params and metrics, as `dvc exp show --json` reports them."""
    rows = json.loads(dvc(project, "exp", "show", "--json").stdout)
    found = {}
    for row in rows:
        for experiment in row.get("experiments") or []:
            revision = experiment["revs"][0]
            data = revision["data"]
            found[revision["name"]] = {
                "params": data["params"]["params.yaml"]["data"],
                "metrics": {path: content["data"] for path, content in data["metrics"].items()},
            }
    return found


def test_queued_experiments_run_side_by_side_and_equal_the_same_runs_alone(project, tmp_path):
    params = update_params(project, train={"epochs": 3})
    dvc(project, "repro")
    commit_all(project, "pipeline run")
    head = {
        "test": json.loads((project / "metrics/test.json").read_text()),
        "baseline": json.loads((project / "metrics/train/baseline/metrics.json").read_text()),
        "regularized": json.loads((project / "metrics/train/regularized/metrics.json").read_text()),
    }
    before = (project / "dvc.lock").read_bytes()
    # A copy made now has no run cache of the experiments: there they really run, one by one.
    alone = tmp_path / "alone"
    shutil.copytree(project, alone, symlinks=True)
    changes = {"epochs-4": "train.epochs=4", "dropout-0.3": "train.dropout_rate=0.3"}

    for name, change in changes.items():
        dvc(project, "exp", "run", "--queue", "--name", name, "-S", change)
    status, most_training = queue_until_done(project, timeout=1800)
    assert status.count("Success") == 2, status
    assert most_training == 2, "the two experiments never trained at the same time"
    side_by_side = experiments_by_name(project)

    for name, change in changes.items():
        dvc(alone, "exp", "run", "--temp", "--name", name, "-S", change)
    one_by_one = experiments_by_name(alone)

    assert set(side_by_side) == set(one_by_one) == set(changes)
    for name in changes:
        assert side_by_side[name] == one_by_one[name], name
    epochs_4, dropout = side_by_side["epochs-4"], side_by_side["dropout-0.3"]
    assert epochs_4["params"]["train"]["epochs"] == 4
    assert epochs_4["params"]["train"]["dropout_rate"] == params["train"]["dropout_rate"]
    assert dropout["params"]["train"]["dropout_rate"] == 0.3
    assert dropout["params"]["train"]["epochs"] == 3
    for experiment, epochs in ((epochs_4, 4), (dropout, 3)):
        metrics = experiment["metrics"]
        for model_name in MODELS:
            trained = metrics[f"metrics/train/{model_name}/metrics.json"][model_name]
            assert trained["epochs_trained"] == epochs
            assert ACCURACY_FLOOR <= trained["val_accuracy"] <= 1.0, trained
            tested = metrics["metrics/test.json"][model_name]
            assert ACCURACY_FLOOR <= tested["test_accuracy"] <= 1.0, tested
    # The dropout change retrains the regularized model only.
    assert dropout["metrics"]["metrics/train/baseline/metrics.json"] == head["baseline"]
    assert dropout["metrics"]["metrics/train/regularized/metrics.json"] != head["regularized"]
    assert dropout["metrics"]["metrics/test.json"]["baseline"] == head["test"]["baseline"]
    assert dropout["metrics"]["metrics/test.json"]["regularized"] != head["test"]["regularized"]
    # The workspace is untouched by the queued runs.
    assert (project / "dvc.lock").read_bytes() == before
    assert dvc(project, "status").stdout.strip().endswith("up to date.")
