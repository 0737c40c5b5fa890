"""Fixtures: tiny synthetic MNIST-format IDX files and a loopback HTTP mirror."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

# mnist_cnn sets TensorFlow's process-wide environment, which TensorFlow reads once when it
# loads: importing it here puts it before every test module's TensorFlow or Keras import.
import mnist_cnn  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


def idx_bytes(array: np.ndarray, *, magic: int) -> bytes:
    """Encode a uint8 array as an IDX file with the given magic number."""
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def synthetic_digits(count: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable MNIST look-alikes: noise plus a bright bar whose height encodes the class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.uint8)
    images = rng.integers(0, 40, (count, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 4 + 2 * label : 6 + 2 * label, 6:22] = 255
    return images, labels


def synthetic_mnist(*, train: int, test: int, seed: int = 0) -> dict[str, bytes]:
    """Decompressed IDX contents of a tiny synthetic MNIST."""
    files = {}
    for offset, (prefix, count) in enumerate((("train", train), ("t10k", test))):
        images, labels = synthetic_digits(count, seed=seed + offset)
        files[f"{prefix}-images-idx3-ubyte"] = idx_bytes(images, magic=2051)
        files[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(labels, magic=2049)
    return files


def write_mirror(folder: Path, files: dict[str, bytes]) -> dict[str, str]:
    """Write gzipped files into `folder`; return their decompressed sha256 values."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(content, mtime=0))
    return {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}


@pytest.fixture(scope="session")
def tiny_files() -> dict[str, bytes]:
    return synthetic_mnist(train=300, test=100)


@pytest.fixture
def tiny_mirror(tmp_path: Path, tiny_files) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "mirror"
    return folder, write_mirror(folder, tiny_files)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves routes from `self.server.routes`: path -> (status, body, declared length)."""

    def do_GET(self) -> None:  # noqa: N802
        status, body, length = self.server.routes.get(self.path, (404, b"not found", None))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server():
    """A real HTTP server on loopback; tests fill `server.routes`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.routes = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def tiny_params(*, sha256: dict[str, str], **sections) -> dict:
    """The project's params.yaml with tiny-data overrides."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["fetch"]["sha256"] = sha256
    params["fetch"]["mirrors"] = []
    params["split"].update(test_size=100, validation_size=50)
    params["train"].update(epochs=1, batch_size=32)
    params["evaluate"].update(batch_size=64, max_misclassified=20)
    for section, values in sections.items():
        params[section].update(values)
    return params


def make_project(destination: Path, params: dict) -> Path:
    """Copy the project's pipeline into `destination` as a fresh git + DVC repository."""
    destination.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, destination / name)
    for package in ("stages", "mnist_cnn"):
        shutil.copytree(
            ROOT / package, destination / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(destination, "init", "-q")
    git(destination, "config", "user.name", "test")
    git(destination, "config", "user.email", "test@example.com")
    dvc(destination, "init", "-q")
    # The project's own plot templates live in .dvc/plots.
    shutil.copytree(ROOT / ".dvc" / "plots", destination / ".dvc" / "plots")
    dvc(destination, "config", "core.autostage", "true")
    git(destination, "add", "-A")
    git(destination, "commit", "-q", "-m", "project under test")
    return destination


@pytest.fixture
def project(tmp_path: Path, tiny_mirror, monkeypatch) -> Path:
    """A copy of the project in its own git repository, its params pointed at tiny data."""
    mirror, sha256 = tiny_mirror
    monkeypatch.setenv("MNIST_MIRROR", str(mirror))
    return make_project(tmp_path / "project", tiny_params(sha256=sha256))


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True)


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the dvc of this interpreter's environment in `cwd`."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def update_params(project: Path, **sections: dict) -> dict:
    """Update sections of `project`'s params.yaml and commit it; return the new params."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    git(project, "add", "params.yaml")
    git(project, "commit", "-q", "-m", f"params: {sorted(sections)}")
    return params


def commit_all(project: Path, message: str) -> None:
    """Commit everything in `project`'s work tree (the pipeline's git-tracked results)."""
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", message)
