"""Shared fixtures: the real local server as a subprocess on a free loopback port.

Every test talks to this server over HTTP; nothing mocks our HTTP layer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

ALICE_KEY = "alice-test-key-0123456789"
BOB_KEY = "bob-test-key-9876543210"

# How a server serves file bytes: the v1 blob route, or (as a deployment that has dropped it)
# only the content route by path. A test runs against both with `@BOTH_ROUTES`.
SERVER_KINDS = {"blobs": [], "content": ["--no-v1-blobs"]}
BOTH_ROUTES = pytest.mark.parametrize("server", list(SERVER_KINDS), indirect=True)


def write_users_file(path: Path, users: dict[str, str]) -> Path:
    """Write NAME:KEY lines to path with mode 0600 from the first byte; keys never go in argv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(f"{name}:{key}\n" for name, key in users.items())
    return path


@dataclass
class LocalServer:
    """A running `dominofs serve`: where it listens, its data dir, and how to restart it."""

    data_dir: Path
    extra_args: list[str] = field(default_factory=list)
    url: str = ""
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    output: list[str] = field(default_factory=list)
    _drainer: threading.Thread | None = None

    def start(self, *, port: int | None = None) -> None:
        users_file = write_users_file(
            self.data_dir.parent / f"{self.data_dir.name}.users",
            {"alice": ALICE_KEY, "bob": BOB_KEY},
        )
        cmd = [
            sys.executable, "-m", "dominofs.server",
            "--data", str(self.data_dir),
            "--bind", "127.0.0.1",
            "--port", str(port if port is not None else self.port),
            "--users-file", str(users_file),
            "--project", "alice/demo",
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        line = _readline_with_timeout(self.proc, 30.0)
        prefix = "dominofs serve: listening on "
        if not line.startswith(prefix):
            self.stop()
            raise RuntimeError(f"server did not start: {line!r} {''.join(self.output)}")
        self.url = line[len(prefix) :].strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        # Drain its output so a chatty server never blocks on a full pipe.
        self._drainer = threading.Thread(target=self._drain, args=(self.proc,), daemon=True)
        self._drainer.start()

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line)

    def stop(self) -> int:
        """SIGTERM and wait (SIGKILL after 10 s); returns the exit code (0 if not running)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        code = self.proc.returncode
        self._reap()
        return code

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a word, as in a crash."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self._reap()

    def _reap(self) -> None:
        assert self.proc is not None
        try:  # runs it started live in its process group; none may outlive the test
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self._drainer is not None:
            self._drainer.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def stats(self) -> dict[str, object]:
        r = requests.get(f"{self.url}/_stats", timeout=5)
        r.raise_for_status()
        data: dict[str, object] = r.json()
        return data

    @property
    def read_route(self) -> str:
        """The /_stats name of the route that serves file bytes on this server."""
        return "GET content" if "--no-v1-blobs" in self.extra_args else "GET blobs"

    def requests_count(self, name: str) -> int:
        counts = self.stats()["requests"]
        assert isinstance(counts, dict)
        return int(counts.get(name, 0))

    def reset_stats(self) -> None:
        requests.post(f"{self.url}/_stats/reset", timeout=5).raise_for_status()


def _readline_with_timeout(proc: subprocess.Popen[str], timeout: float) -> str:
    result: list[str] = []
    t = threading.Thread(
        target=lambda: result.append(proc.stdout.readline() if proc.stdout else ""), daemon=True
    )
    t.start()
    t.join(timeout)
    return result[0] if result else ""


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    """A fresh local server with users alice and bob and the project alice/demo; a SERVER_KINDS
    name as the indirect parameter picks how it serves file bytes (default: "blobs")."""
    srv = LocalServer(
        tmp_path / "server-data", list(SERVER_KINDS[getattr(request, "param", "blobs")])
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[object]:
    """Factory for servers with extra flags (e.g. --no-delete); all stopped in teardown."""
    started: list[LocalServer] = []

    def make(*extra: str, name: str = "server-data") -> LocalServer:
        srv = LocalServer(tmp_path / name, list(extra))
        srv.start()
        started.append(srv)
        return srv

    try:
        yield make
    finally:
        for srv in started:
            srv.stop()
