"""Shared storage: push to a local-directory DVC remote, clone elsewhere, pull, nothing reruns."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml

from tests.conftest import commit_all, dvc

# Outputs with `cache: false`: kept in git, so a clone has them before any pull.
IN_GIT = (
    "metrics/test.json",
    "metrics/train/baseline/metrics.json",
    "metrics/train/regularized/metrics.json",
    "metrics/train/regularized/plots/metrics/eval/accuracy.tsv",
    "metrics/plots/baseline_predictions.csv",
)


def digests(project: Path) -> dict[str, str]:
    """sha256 of every file under data/, models/ and metrics/."""
    return {
        str(path.relative_to(project)): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in ("data", "models", "metrics")
        for path in sorted((project / folder).rglob("*"))
        if path.is_file()
    }


def cached_outputs(project: Path) -> dict[str, str]:
    """Each output of dvc.lock under data/ and models/ (all cached) -> its md5."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
        if out["path"].startswith(("data/", "models/"))
    }


def test_push_clone_pull_round_trip(project, tmp_path):
    remote = tmp_path / "remote"
    dvc(project, "remote", "add", "--default", "storage", str(remote))
    dvc(project, "repro")
    commit_all(project, "pipeline run")
    dvc(project, "push")
    # Every cached output is in the remote under its md5 (directories as a ".dir" listing).
    outputs = cached_outputs(project)
    assert {"data/raw", "models/baseline.keras", "models/regularized.keras"} <= set(outputs)
    for path, md5 in outputs.items():
        assert (remote / "files/md5" / md5[:2] / md5[2:]).is_file(), path

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    for name in IN_GIT:
        assert (clone / name).read_bytes() == (project / name).read_bytes(), name
    assert not (clone / "models/baseline.keras").exists()
    assert not (clone / "data/augment/train_images.npy").exists()

    dvc(clone, "pull")
    assert digests(clone) == digests(project)
    assert dvc(clone, "status").stdout.strip().endswith("up to date.")
    assert "Running stage" not in dvc(clone, "repro").stdout
    shown = [dvc(folder, "metrics", "show", "--json").stdout for folder in (project, clone)]
    assert shown[0] == shown[1]
