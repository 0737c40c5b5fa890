"""Helpers of the fault tests: watched child processes, conditions to wait on, file digests."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


class Watched:
    """A child process in its own process group; a thread collects its stdout lines."""

    def __init__(self, command: list[str], *, cwd: Path, stderr: Path) -> None:
        with stderr.open("w") as handle:
            self.process = subprocess.Popen(
                command,
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=handle,
                text=True,
                start_new_session=True,
            )
        self.stderr = stderr
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def has_line(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for line in list(self.lines))

    def wait_until(self, condition: Callable[[], bool], *, timeout: float = 600) -> None:
        """Return as soon as `condition()` holds; fail if the process ends first or time is up."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    "the run ended or timed out before the moment to interrupt it:\n"
                    + "\n".join(self.lines[-20:])
                    + self.stderr.read_text()[-2000:]
                )
            time.sleep(0.005)

    def kill(self) -> None:
        """SIGKILL the whole process group: dvc and the stage it runs."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.finish(timeout=60)

    def finish(self, *, timeout: float) -> int:
        self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return self.process.returncode


def cpu_used_after(run: Watched, line: str, *, seconds: float) -> Callable[[], bool]:
    """A condition: the process has used `seconds` of CPU time since it printed `line`."""
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    start: list[float] = []

    def cpu_seconds() -> float:
        # Fields after the command name: utime and stime are the 12th and 13th.
        stat = Path(f"/proc/{run.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / ticks_per_second

    def condition() -> bool:
        if not start:
            if not run.has_line(line):
                return False
            start.append(cpu_seconds())
        return cpu_seconds() >= start[0] + seconds

    return condition


def dvc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def snapshot(project: Path) -> dict[str, str]:
    """sha256 of dvc.lock and of every file under data/, models/, metrics/ and docs/."""
    files = [project / "dvc.lock"] + [
        path
        for folder in ("data", "models", "metrics", "docs")
        for path in sorted((project / folder).rglob("*"))
        if path.is_file()
    ]
    return {
        str(path.relative_to(project)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in files
    }


def assert_same_files(found: dict[str, str], expected: dict[str, str]) -> None:
    differing = sorted(
        name for name in found.keys() | expected.keys() if found.get(name) != expected.get(name)
    )
    assert differing == [], differing


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of atomic writes (".<name>.<random>") under `folder`, outside .git/.dvc."""
    return [
        path
        for path in folder.rglob(".*")
        if path.is_file()
        and path.name not in (".gitignore", ".dvcignore")
        and path.relative_to(folder).parts[0] not in (".git", ".dvc")
    ]
