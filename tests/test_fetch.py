"""Fetch against a real loopback HTTP server: good and broken mirrors, timeouts, refusals."""

from __future__ import annotations

import gzip
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from stages.fetch import FetchError, fetch_all, fetch_file, mirror_candidates
from tests.conftest import ROOT, synthetic_mnist, tiny_params

DEFAULT_SHA256 = yaml.safe_load((ROOT / "params.yaml").read_text())["fetch"]["sha256"]

NAME = "train-labels-idx1-ubyte"
OFFLINE = "If this machine is offline"
MISMATCH = "its sha256 differs from fetch.sha256"


def offline_hint(name: str) -> str:
    return (
        f"No mirror served {name}.gz. If this machine is offline, download the four MNIST .gz "
        "files elsewhere, put them in one folder here, set MNIST_MIRROR=/path/to/that/folder "
        "(a URL works too) and rerun `dvc repro`."
    )


@pytest.fixture
def refusing_url():
    """A loopback URL that refuses connections, as an unreachable host does offline.

    A bound socket that never listens makes the kernel refuse connections to its port, and
    keeping it bound stops anything else from taking the port meanwhile.
    """
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{closed.getsockname()[1]}/mnist/"
    closed.close()


@pytest.fixture
def served(http_server, tiny_files):
    """The server's base URL, a good gz body and the expected sha256 of one file."""
    import hashlib

    content = tiny_files[NAME]
    body = gzip.compress(content)
    base = f"http://127.0.0.1:{http_server.server_port}"
    return base, body, hashlib.sha256(content).hexdigest()


def run_fetch(params: Path, out: Path, *, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The fetch stage as a command, with only `env` (and an empty PATH) in its environment."""
    return subprocess.run(
        [sys.executable, "-m", "stages.fetch", "--params", str(params), "--out-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, "PATH": ""},
    )


def test_falls_through_broken_mirrors_to_the_good_one(http_server, served, tiny_files):
    base, body, sha = served
    other = gzip.compress(synthetic_mnist(train=300, test=100, seed=9)[NAME])
    http_server.routes = {
        f"/forbidden/{NAME}.gz": (403, b"no", None),
        f"/truncated/{NAME}.gz": (200, body[: len(body) // 2], len(body)),
        f"/garbage/{NAME}.gz": (200, b"this is not gzip at all", None),
        f"/fashion/{NAME}.gz": (200, other, None),
        f"/good/{NAME}.gz": (200, body, None),
    }
    mirrors = [f"{base}/{m}/" for m in ("forbidden", "missing", "truncated", "garbage", "fashion")]
    content = fetch_file(
        name=NAME, expected_sha256=sha, mirrors=[*mirrors, f"{base}/good"], timeout_seconds=5
    )
    assert content == tiny_files[NAME]


def test_every_mirror_failing_names_file_and_reasons(http_server, served):
    base, body, sha = served
    flipped = bytearray(body)
    flipped[len(flipped) // 2] ^= 0xFF
    http_server.routes = {
        f"/forbidden/{NAME}.gz": (403, b"no", None),
        f"/flipped/{NAME}.gz": (200, bytes(flipped), None),
        f"/truncated/{NAME}.gz": (200, body[:-8], len(body)),
    }
    mirrors = [f"{base}/{m}" for m in ("forbidden", "missing", "flipped", "truncated")]
    with pytest.raises(FetchError) as error:
        fetch_file(name=NAME, expected_sha256=sha, mirrors=mirrors, timeout_seconds=5)
    message = str(error.value)
    assert message.startswith(f"could not fetch {NAME}.gz from any mirror")
    assert "forbidden" in message and "HTTP 403" in message
    assert "HTTP 404" in message
    assert "truncated body" in message
    # One line naming the file, one per mirror, then what to do next.
    assert len(message.splitlines()) == 2 + len(mirrors)
    assert message.splitlines()[-1] == offline_hint(NAME)
    assert MISMATCH not in message


def test_no_mirror_at_all_says_where_to_put_the_files():
    with pytest.raises(FetchError) as error:
        fetch_file(name=NAME, expected_sha256="0" * 64, mirrors=[], timeout_seconds=5)
    assert str(error.value).splitlines() == [
        f"could not fetch {NAME}.gz from any mirror:",
        "  no mirrors configured",
        offline_hint(NAME),
    ]


def test_wrong_content_is_refused(http_server, served):
    base, _, sha = served
    other = gzip.compress(synthetic_mnist(train=300, test=100, seed=9)[NAME])
    http_server.routes = {f"/fashion/{NAME}.gz": (200, other, None)}
    with pytest.raises(FetchError) as error:
        fetch_file(name=NAME, expected_sha256=sha, mirrors=[f"{base}/fashion"], timeout_seconds=5)
    lines = str(error.value).splitlines()
    assert "checksum mismatch" in lines[1] and len(lines) == 3
    assert MISMATCH in lines[2] and "MNIST_MIRROR=" in lines[2]
    assert OFFLINE not in str(error.value)


def test_wrong_content_beside_unreachable_mirrors_is_named_as_wrong_content(
    http_server, served, refusing_url
):
    base, _, sha = served
    other = gzip.compress(synthetic_mnist(train=300, test=100, seed=9)[NAME])
    http_server.routes = {f"/fashion/{NAME}.gz": (200, other, None)}
    mirrors = [refusing_url, f"{base}/fashion", refusing_url]
    with pytest.raises(FetchError) as error:
        fetch_file(name=NAME, expected_sha256=sha, mirrors=mirrors, timeout_seconds=5)
    lines = str(error.value).splitlines()
    assert [line.count("unreachable") for line in lines[1:4]] == [1, 0, 1]
    assert MISMATCH in lines[-1] and OFFLINE not in str(error.value)


def test_hanging_mirror_times_out_then_next_is_tried(http_server, served, tiny_files):
    base, body, sha = served
    http_server.routes = {f"/good/{NAME}.gz": (200, body, None)}
    # A server that accepts connections and never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
    hanging = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        content = fetch_file(
            name=NAME, expected_sha256=sha, mirrors=[hanging, f"{base}/good"], timeout_seconds=0.5
        )
        assert content == tiny_files[NAME]
        with pytest.raises(FetchError, match="timed out"):
            fetch_file(name=NAME, expected_sha256=sha, mirrors=[hanging], timeout_seconds=0.5)
    finally:
        silent.close()


def test_override_comes_first_and_folders_become_urls(tmp_path):
    mirrors = mirror_candidates(mirrors=["https://a/"], override=str(tmp_path))
    assert mirrors == [tmp_path.resolve().as_uri(), "https://a/"]
    assert mirror_candidates(mirrors=["https://a/"], override=None) == ["https://a/"]
    assert mirror_candidates(mirrors=[], override="http://m/")[0] == "http://m/"


def test_fetch_all_writes_verified_files_and_skips_present_ones(tmp_path, tiny_mirror, tiny_files):
    mirror, sha256 = tiny_mirror
    out = tmp_path / "raw"
    fetch_all(out_dir=out, sha256=sha256, mirrors=[mirror.as_uri()], timeout_seconds=5)
    for name, content in tiny_files.items():
        assert (out / name).read_bytes() == content
    # With the mirror gone, present and valid files are not downloaded again.
    for gz in mirror.iterdir():
        gz.unlink()
    fetch_all(out_dir=out, sha256=sha256, mirrors=[mirror.as_uri()], timeout_seconds=5)
    assert sorted(p.name for p in out.iterdir()) == sorted(tiny_files)


def test_stage_exits_non_zero_with_one_clear_error(tmp_path, tiny_mirror):
    mirror, sha256 = tiny_mirror
    sha256[NAME] = "0" * 64
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(sha256=sha256)))
    out = tmp_path / "raw"
    result = run_fetch(params, out, env={"MNIST_MIRROR": str(mirror)})
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: could not fetch {NAME}.gz from any mirror")
    assert "checksum mismatch" in result.stderr and "Traceback" not in result.stderr
    assert MISMATCH in result.stderr.splitlines()[-1] and OFFLINE not in result.stderr
    assert not (out / NAME).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_stage_offline_tells_what_to_do(tmp_path, refusing_url):
    """Without MNIST_MIRROR and with no mirror reachable, the error ends with the way out."""
    mirrors = [refusing_url, (tmp_path / "no such folder").as_uri()]
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(tiny_params(sha256=DEFAULT_SHA256, fetch={"mirrors": mirrors}))
    )
    out = tmp_path / "raw"
    result = run_fetch(params, out, env={})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    # The stage fetches the files in the order params.yaml lists them and stops at the first.
    first = next(iter(yaml.safe_load(params.read_text())["fetch"]["sha256"]))
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: could not fetch {first}.gz from any mirror:"
    assert lines[1].startswith(f"  {refusing_url}{first}.gz: unreachable (")
    assert lines[2].startswith(f"  {mirrors[1]}/{first}.gz: unreachable (")
    assert lines[3:] == [offline_hint(first)]
    assert not out.exists() or not list(out.iterdir())
