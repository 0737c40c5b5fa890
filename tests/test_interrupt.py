"""Ctrl-C during the train stage: exit 130, a one-line message, no model and no temporary file."""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import dvc, make_project, tiny_params, write_mirror
from tests.faults import Watched, cpu_used_after, leftovers

INTERRUPTED = "Interrupted; no partial output was kept."
TRAIN_EPOCHS = 3
BATCHES_PER_EPOCH = 1500 // 4  # The augmented tiny set (250 images x 6) in batches of 4.


@pytest.fixture(scope="module")
def augmented(tmp_path_factory, tiny_files) -> Path:
    """A project whose split and augmented data exist: what the train stage reads."""
    folder = tmp_path_factory.mktemp("augmented")
    sha256 = write_mirror(folder / "mirror", tiny_files)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MNIST_MIRROR", str(folder / "mirror"))
        project = make_project(folder / "project", tiny_params(sha256=sha256))
        dvc(project, "repro", "augment")
    return project


def start_training(augmented: Path, folder: Path) -> Watched:
    """The regularized train stage with epochs of 375 batches, 4 per call into TensorFlow."""
    params = yaml.safe_load((augmented / "params.yaml").read_text())
    params["train"].update(
        epochs=TRAIN_EPOCHS, batch_size=4, steps_per_execution=4, learning_rate_schedule="cosine"
    )
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    command = [
        sys.executable,
        "-m",
        "stages.train",
        "--params",
        str(folder / "params.yaml"),
        "--model",
        "regularized",
        "--train-dir",
        str(augmented / "data/augment"),
        "--validation-dir",
        str(augmented / "data/split"),
        "--model-out",
        str(folder / "out/regularized.keras"),
        "--live-dir",
        str(folder / "out/live"),
    ]
    return Watched(command, cwd=augmented, stderr=folder / "stderr.txt")


def batches_trained(learning_rate: float, *, initial: float) -> int:
    """The optimizer's step count that gives `learning_rate` on the cosine schedule.

    The schedule decays over every batch of every epoch, so the rate logged at an epoch's end
    counts the batches trained so far, whether the epoch ran whole or was cut short.
    """
    total = TRAIN_EPOCHS * BATCHES_PER_EPOCH
    return round(total * math.acos(2 * learning_rate / initial - 1) / math.pi)


# Known fault: a Ctrl-C that lands while TensorFlow and Keras set up, before fit() installs the
# stage's SIGINT handler, is sometimes lost: the stage trains on, saves the model and exits 0.
BEFORE_TRAINING = pytest.param(
    "before_training",
    marks=pytest.mark.xfail(
        reason="a Ctrl-C during the train stage's set-up is sometimes lost", strict=False
    ),
)


@pytest.mark.parametrize("moment", [BEFORE_TRAINING, "epoch_boundary", "mid_epoch"])
def test_ctrl_c_stops_with_exit_130_and_keeps_no_model(augmented, tmp_path, moment):
    run = start_training(augmented, tmp_path)
    live = tmp_path / "out/live"
    conditions = {
        # Model building and TensorFlow's start-up, before the handler of training is set.
        "before_training": lambda: run.has_line("train-regularized: training on"),
        # dvclive has just written the first epoch's validation scores.
        "epoch_boundary": (live / "plots/metrics/eval/accuracy.tsv").exists,
        # The second epoch's batches are under way: a third of a CPU second into it.
        "mid_epoch": cpu_used_after(run, f"Epoch 2/{TRAIN_EPOCHS}", seconds=0.3),
    }
    run.wait_until(conditions[moment])
    run.process.send_signal(signal.SIGINT)
    returncode = run.finish(timeout=120)
    stderr = run.stderr.read_text()
    if moment == "before_training":
        # A Ctrl-C that lands while TensorFlow starts up can make Python end the process by
        # SIGINT after the stage's exit(130); a shell shows status 130 for both.
        assert returncode in (130, -signal.SIGINT), stderr[-2000:]
    else:
        assert returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == INTERRUPTED
    assert not (tmp_path / "out/regularized.keras").exists()
    assert leftovers(tmp_path) == []
    if moment == "before_training":
        return
    assert any(line.startswith("Interrupted: stopping") for line in run.lines), run.lines
    # The stage's summary is written only after training ends: this is dvclive's epoch log.
    assert "step" in json.loads((live / "metrics.json").read_text())
    # dvclive logged the whole first epoch and the second up to the stop.
    rates = (live / "plots/metrics/train/learning_rate.tsv").read_text().split()[2:]
    assert rates[0::2] == ["0", "1"], rates
    initial = yaml.safe_load((tmp_path / "params.yaml").read_text())["train"]["learning_rate"]
    first, second = (batches_trained(float(rate), initial=initial) for rate in rates[1::2])
    assert first == BATCHES_PER_EPOCH
    # The stop cut the second epoch short: a stop at the epoch's end would make it 375.
    print(f"second epoch stopped after {second - first} of {BATCHES_PER_EPOCH} batches")
    assert 0 < second - first < BATCHES_PER_EPOCH
