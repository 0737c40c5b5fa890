"""Download the four MNIST files from the first mirror that serves verified content."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from tqdm import tqdm

from mnist_cnn import io, params

MIRROR_ENV = "MNIST_MIRROR"
CHUNK_BYTES = 1 << 16
# The last line of a failed fetch: what to do next, which depends on why it failed.
OFFLINE_HINT = (
    "No mirror served {file}. If this machine is offline, download the four MNIST .gz files "
    f"elsewhere, put them in one folder here, set {MIRROR_ENV}=/path/to/that/folder (a URL "
    "works too) and rerun `dvc repro`."
)
MISMATCH_HINT = (
    "A mirror served a file that is not MNIST's: its sha256 differs from fetch.sha256 in "
    "params.yaml (another data set or a damaged copy). Put MNIST's original .gz files in a "
    f"folder, set {MIRROR_ENV}=/path/to/that/folder and rerun `dvc repro`; do not change "
    "fetch.sha256 to match."
)


class FetchError(io.StageError):
    """No mirror served a file whose content matches its expected sha256."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mirror_candidates(*, mirrors: list[str], override: str | None) -> list[str]:
    """The mirrors to try in order: the MNIST_MIRROR override first, when set."""
    candidates = list(mirrors)
    if override:
        # A bare folder path is turned into a file:// URL so one code path reads both.
        if "://" not in override:
            override = Path(override).resolve().as_uri()
        candidates.insert(0, override)
    return candidates


def download(url: str, *, timeout_seconds: float, label: str) -> bytes:
    """Return the body at `url`, showing a progress bar on stderr."""
    with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length else None
        chunks = []
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=label,
            leave=False,
            file=sys.stderr,
            disable=None,
        ) as progress:
            while chunk := response.read(CHUNK_BYTES):
                chunks.append(chunk)
                progress.update(len(chunk))
    body = b"".join(chunks)
    if total is not None and len(body) != total:
        raise OSError(f"truncated body ({len(body)} of {total} bytes)")
    return body


def _reason(error: BaseException) -> str:
    """A short, human reason for a failed attempt."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return "timed out"
        return f"unreachable ({reason})"
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


def fetch_file(
    *, name: str, expected_sha256: str, mirrors: list[str], timeout_seconds: float
) -> bytes:
    """Return the decompressed content of `name`.gz from the first mirror that verifies."""
    reasons = []
    mismatched = False
    for mirror in mirrors:
        url = f"{mirror.rstrip('/')}/{name}.gz"
        try:
            compressed = download(url, timeout_seconds=timeout_seconds, label=f"{name}.gz")
            content = gzip.decompress(compressed)
        except (OSError, EOFError, zlib.error, ValueError) as error:
            reasons.append(f"{url}: {_reason(error)}")
            continue
        digest = sha256_of(content)
        if digest != expected_sha256:
            mismatched = True
            reasons.append(
                f"{url}: checksum mismatch "
                f"(expected {expected_sha256[:12]}..., got {digest[:12]}...)"
            )
            continue
        return content
    details = "\n  ".join(reasons) if reasons else "no mirrors configured"
    hint = MISMATCH_HINT if mismatched else OFFLINE_HINT.format(file=f"{name}.gz")
    raise FetchError(f"could not fetch {name}.gz from any mirror:\n  {details}\n{hint}")


def fetch_all(
    *, out_dir: Path, sha256: dict[str, str], mirrors: list[str], timeout_seconds: float
) -> None:
    """Make `out_dir` hold the four verified, decompressed IDX files."""
    for name, expected in sha256.items():
        target = out_dir / name
        if target.exists() and sha256_of(target.read_bytes()) == expected:
            print(f"{target}: present and verified, not downloaded again")
            continue
        content = fetch_file(
            name=name, expected_sha256=expected, mirrors=mirrors, timeout_seconds=timeout_seconds
        )
        io.write_bytes(target, content)
        print(f"{target}: {len(content):,} bytes, sha256 verified")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    config = params.load(args.params)["fetch"]
    fetch_all(
        out_dir=args.out_dir,
        sha256=config["sha256"],
        mirrors=mirror_candidates(mirrors=config["mirrors"], override=os.environ.get(MIRROR_ENV)),
        timeout_seconds=config["timeout_seconds"],
    )


if __name__ == "__main__":
    io.run(main)
