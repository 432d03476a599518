"""Helpers for the sync-service tests: the service as a real subprocess on a real folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dominofs.api import DominoClient, ProjectClient
from tests.conftest import ALICE_KEY, LocalServer
from tests.harness import wait_for

FAST = ["--upload-delay", "0.3", "--poll-interval", "0.5", "--max-backoff", "0.5"]


def sync_env(tmp_path: Path, server: LocalServer) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOMINO", "NOTIFY_SOCKET"))}
    env.update(
        DOMINO_API_HOST=server.url,
        DOMINO_USER_API_KEY=ALICE_KEY,
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        XDG_CACHE_HOME=str(home / ".cache"),
        PYTHONPATH=os.getcwd(),
    )
    return env


@dataclass
class SyncProc:
    """A running `dominofs sync` subprocess on `root`."""

    root: Path
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def status_file(self) -> Path:
        return self.root / ".dominofs" / "status.json"

    def start(self, *extra: str, wait_ready: bool = True) -> SyncProc:
        if self.status_file.exists():
            self.status_file.unlink()
        self.log = self.root.parent / f"sync-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dominofs", "-v", "sync", "alice/demo", str(self.root),
                 *FAST, *self.args, *extra],
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if wait_ready:
            wait_for(lambda: self.status().get("state") == "watching" or self._dead(), 30, "ready")
            assert not self._dead(), self.output()
        return self

    def _dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def status(self) -> dict[str, Any]:
        try:
            data = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def idle(self) -> bool:
        s = self.status()
        return s.get("state") == "watching" and s.get("pending_uploads") == 0

    def wait_idle(self, timeout: float = 30.0) -> None:
        # Twice, a moment apart: a path still inside its debounce window is not in the queue yet.
        wait_for(self.idle, timeout, "an idle queue")
        time.sleep(0.6)
        wait_for(self.idle, timeout, "an idle queue")

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None


@pytest.fixture
def remote(server: LocalServer) -> Iterator[ProjectClient]:
    client = DominoClient(server.url, ALICE_KEY, retries=0)
    yield client.project("alice/demo")
    client.close()


@pytest.fixture
def make_sync(tmp_path: Path, server: LocalServer) -> Iterator[Callable[..., SyncProc]]:
    started: list[SyncProc] = []

    def make(root: Path | None = None, srv: LocalServer | None = None) -> SyncProc:
        root = root or tmp_path / "dir"
        root.mkdir(parents=True, exist_ok=True)
        sp = SyncProc(root, sync_env(tmp_path, srv or server))
        started.append(sp)
        return sp

    yield make
    for sp in started:
        if sp.proc is not None and sp.proc.poll() is None:
            sp.kill()


def remote_files(remote: ProjectClient) -> dict[str, str]:
    return {f.path: f.key for f in remote.list_files(remote.commits()[0])}


def remote_bytes(remote: ProjectClient, path: str) -> bytes | None:
    key = remote_files(remote).get(path)
    return None if key is None else b"".join(remote.iter_blob(key))


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dominofs", *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
