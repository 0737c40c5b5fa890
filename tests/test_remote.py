"""Shared storage: push to a local-directory DVC remote, clone elsewhere, pull, nothing reruns."""

from __future__ import annotations

import subprocess

from tests.conftest import dvc


def test_push_clone_pull_round_trip(project, tmp_path):
    remote = tmp_path / "remote"
    dvc(project, "remote", "add", "--default", "storage", str(remote))
    dvc(project, "repro")
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "pipeline run"], cwd=project, check=True)
    dvc(project, "push")
    assert any(remote.rglob("*")), "the remote holds nothing after dvc push"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    assert not (clone / "models/baseline.keras").exists()
    dvc(clone, "pull")
    assert (clone / "models/regularized.keras").is_file()
    assert (clone / "data/augment/train_images.npy").is_file()
    assert "up to date" in dvc(clone, "status").stdout
    assert "Running stage" not in dvc(clone, "repro").stdout
