"""The benchmark's quick run: every row present, one-line descriptions, consistent figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from benchmarks.run import ROWS, row
from tests.conftest import ROOT


def test_row_reports_median_and_range_of_the_runs():
    figures = row("noop", [3.0, 1.0, 10.0, 2.0], stages=6)
    assert (figures["median"], figures["min"], figures["max"]) == (2.5, 1.0, 10.0)
    assert figures["values"] == [3.0, 1.0, 10.0, 2.0] and figures["stages"] == 6
    assert (figures["unit"], figures["measures"]) == ROWS["noop"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark") / "latest.json"
    # As a user starts it: this test process may have imported mnist_cnn, which sets the switch.
    environment = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


def test_quick_run_reports_every_row_on_one_line(quick_run):
    results, stdout = quick_run
    assert results["quick"] is True and results["machine"]["cores"] >= 1
    assert list(results["rows"]) == list(ROWS)
    report = stdout.splitlines()
    for name, figures in results["rows"].items():
        assert (figures["unit"], figures["measures"]) == ROWS[name]
        assert "\n" not in figures["measures"]
        # One run of each side in --quick; every figure is a positive number.
        assert len(figures["values"]) == 1 and figures["values"][0] > 0
        assert figures["min"] == figures["median"] == figures["max"] == figures["values"][0]
        assert sum(line.startswith(name) and figures["measures"] in line for line in report) == 1


def test_quick_run_ratios_come_from_the_runs_it_records(quick_run):
    rows = quick_run[0]["rows"]
    augment = rows["augment"]
    assert augment["images"] == 256
    ratio = augment["reference_seconds"][0] / augment["project_seconds"][0]
    assert augment["median"] == pytest.approx(ratio)
    speed = rows["training"]["images_per_second"]
    assert rows["training"]["median"] == pytest.approx(speed["project"][0] / speed["reference"][0])
    ratio = speed["project"][0] / speed["project_onednn_off"][0]
    assert rows["onednn"]["median"] == pytest.approx(ratio)
    # Each variant ran in its own process under its own setting, and TensorFlow obeyed it.
    runs = rows["training"]["runs"]
    settings = {
        name: (run[0]["onednn_variable"], run[0]["onednn_enabled"]) for name, run in runs.items()
    }
    assert settings == {
        "reference": ("1", True),
        "project": ("1", True),
        "project_onednn_off": ("0", False),
    }


def test_quick_run_memory_figures_are_consistent(quick_run):
    rows = quick_run[0]["rows"]
    imported = rows["training"]["runs"]["project"][0]["rss_after_import_mib"]
    assert rows["runtime"]["median"] == imported["VmRSS"]
    assert imported["VmRSS"] == pytest.approx(imported["RssAnon"] + imported["RssFile"], abs=1)
    # TensorFlow alone takes hundreds of MiB; training adds to it (a KiB/MiB slip would not).
    assert 100 < imported["VmRSS"] < rows["memory"]["median"] < 16_000
    assert rows["memory"]["images"] == 1_536
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert rows["noop"]["stages"] == len(stages)
    assert np.isfinite(rows["noop"]["median"])
