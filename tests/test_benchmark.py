"""The benchmark script runs on tiny inputs and writes its JSON (it times nothing here)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_benchmark_quick_run_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--epochs", "2", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["quick"] is True
    assert figures["machine"]["cores"] >= 1 and figures["machine"]["tensorflow"]
    assert figures["augment"]["images"] == 64 and figures["augment"]["speedup"] > 0
    training = figures["training"]
    for key in ("reference", "project", "project_nondeterministic"):
        assert training[f"{key}_images_per_second"] > 0
        assert 0 <= training[f"{key}_validation_accuracy"] <= 1
    assert "augment" in result.stdout and "training" in result.stdout
