"""The benchmark script runs on tiny inputs and writes its JSON (it times nothing here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks.variant import VARIANTS
from tests.conftest import ROOT


def test_benchmark_quick_run_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    # As a user would start it: this test process imported the training stage, which sets
    # TF_ENABLE_ONEDNN_OPTS in its own environment.
    environment = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--epochs", "2"]
        + ["--accuracy-seeds", "2", "--accuracy-epochs", "1", "--out", str(out)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["quick"] is True
    assert figures["machine"]["cores"] >= 1 and figures["machine"]["tensorflow"]
    assert figures["augment"]["images"] == 64 and figures["augment"]["speedup"] > 0
    training = figures["training"]
    assert training["batch_size"] == 32 and training["epochs"] == 2
    for key in VARIANTS:
        assert training[f"{key}_images_per_second"] > 0
        assert 0 <= training[f"{key}_validation_accuracy"] <= 1
    # Each variant ran in its own process under its own TensorFlow environment.
    assert training["project_onednn"] == "1"
    assert training["project_onednn_off_onednn"] == "0"
    assert training["reference_onednn_onednn"] == "1"
    assert training["reference_onednn"] == "unset (TensorFlow's default)"
    accuracy = figures["accuracy"]
    assert accuracy["seeds"] == [1, 2] and accuracy["epochs"] == 1
    for key in ("reference", "project", "project_constant_learning_rate"):
        assert len(accuracy[f"{key}_accuracies"]) == 2
        assert accuracy[f"{key}_mean"] == pytest.approx(sum(accuracy[f"{key}_accuracies"]) / 2)
    assert accuracy["project_minus_reference_standard_error"] >= 0
    assert "augment" in result.stdout and "training" in result.stdout
    assert "accuracy after 1 epoch(s), 2 seeds: project" in result.stdout
