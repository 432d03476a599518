"""Fixtures for the server tests: the real server as a subprocess on a free loopback port.

`srv` is one server shared by the whole module set (session scope) for tests that only add
state; tests that need a server of their own (restart, --no-delete, time limits) use
`start_server`. No mocks: every test speaks HTTP to the real thing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.conftest import write_users_file

ALICE = "alice-key"
BOB = "bob-key"
LISTENING = "dominofs serve: listening on "
BASE_ARGS = ["--project", "alice/demo"]


@dataclass
class Srv:
    """A running server process: its URL, data dir and collected output."""

    data: Path
    args: list[str]
    url: str = ""
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)
    _drainer: threading.Thread | None = None

    def start(self) -> None:
        users_file = write_users_file(
            self.data.parent / f"{self.data.name}.users", {"alice": ALICE, "bob": BOB}
        )
        cmd = [sys.executable, "-m", "dominofs.server", "--data", str(self.data), "--port", "0"]
        self.proc = subprocess.Popen(
            [*cmd, "--users-file", str(users_file), *BASE_ARGS, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        line = _readline(self.proc, 20.0)
        if not line.startswith(LISTENING):
            self.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.url = line[len(LISTENING) :].strip()
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        proc = self.proc
        if proc is not None and proc.stderr is not None:
            for line in proc.stderr:
                self.output.append(line)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            raise
        finally:
            self._close_pipes(proc)

    def _close_pipes(self, proc: subprocess.Popen[str]) -> None:
        if self._drainer is not None:
            self._drainer.join(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            self._close_pipes(proc)

    def session(self, key: str = ALICE) -> requests.Session:
        s = requests.Session()
        s.headers["X-Domino-Api-Key"] = key
        return s

    def project_url(self, project: str = "alice/demo") -> str:
        return f"{self.url}/v1/projects/{project}"

    def stats(self) -> dict[str, int]:
        counts: dict[str, int] = requests.get(f"{self.url}/_stats", timeout=5).json()["requests"]
        return counts


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    result: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        result.append(proc.stdout.readline())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else ""


@pytest.fixture(scope="session")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Srv]:
    """One shared server: alice/demo, alice/work, alice/search and bob/private."""
    extra = ["--project", "alice/work", "--project", "alice/search", "--project", "bob/private"]
    server = Srv(tmp_path_factory.mktemp("shared-server"), [*extra, "--run-time-limit", "30"])
    server.start()
    yield server
    assert server.stop() == 0


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Srv]]:
    """Factory for a private server on tmp_path/data (same data dir on every call)."""
    started: list[Srv] = []

    def start(*args: str) -> Srv:
        server = Srv(tmp_path / "data", list(args))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc is not None:
            server.stop()


@pytest.fixture
def alice(srv: Srv) -> Iterator[requests.Session]:
    with srv.session(ALICE) as s:
        yield s
