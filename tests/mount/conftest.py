"""Real FUSE mounts of the real local server, each in its own process, always unmounted."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dominofs.api import DominoClient, ProjectClient
from tests.conftest import ALICE_KEY, LocalServer

pytestmark = pytest.mark.fuse


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and (
        subprocess.run(["which", "fusermount3"], capture_output=True, check=False).returncode == 0
    )


@dataclass
class Mount:
    path: Path
    proc: subprocess.Popen[bytes] | None
    log: Path

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def answers(path: Path) -> bool:
    try:
        # statvfs reaches the daemon: a dead mount fails it with ENOTCONN.
        return os.path.ismount(path) and os.statvfs(path) is not None
    except OSError:
        return False


def force_unmount(path: Path) -> None:
    for flag in ("-u", "-uz"):
        try:
            os.statvfs(path)
            if not os.path.ismount(path):
                return
        except OSError:
            pass  # ENOTCONN: a dead mount, unmount it
        subprocess.run(["fusermount3", flag, str(path)], capture_output=True, check=False)


@dataclass
class Env:
    server: LocalServer
    root: Path
    env: dict[str, str]
    mounts: list[Mount]
    remote: ProjectClient

    def put(self, path: str, data: bytes) -> None:
        self.remote.upload(path, io.BytesIO(data), size=len(data))

    def cli(
        self, *args: str, key: str | None = ALICE_KEY, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if key is None:
            env.pop("DOMINO_USER_API_KEY", None)
        else:
            env["DOMINO_USER_API_KEY"] = key
        return subprocess.run(
            [sys.executable, "-m", "dominofs", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def mount(
        self, *extra: str, name: str = "mnt", project: str = "alice/demo", wait: bool = True
    ) -> Mount:
        """`dominofs mount --foreground` in its own process; returns once the mount answers."""
        mp = self.root / name
        mp.mkdir(exist_ok=True)
        log = self.root / f"{name}-{len(self.mounts)}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dominofs", "-v", "mount", "--foreground",
                 project, str(mp), *extra],
                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fh,
                start_new_session=True,
            )  # fmt: skip
        m = Mount(mp, proc, log)
        self.mounts.append(m)
        if wait:
            deadline = time.monotonic() + 30
            while not answers(mp):
                if proc.poll() is not None:
                    raise AssertionError(f"mount exited {proc.returncode}: {m.log_text()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"mount did not answer: {m.log_text()}")
                time.sleep(0.05)
        return m

    def unmount(self, m: Mount) -> None:
        force_unmount(m.path)
        if m.proc is not None:
            try:
                m.proc.wait(15)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(10)


@pytest.fixture
def fenv(server: LocalServer, tmp_path: Path) -> Iterator[Env]:
    if not fuse_available():
        pytest.skip("needs /dev/fuse and fusermount3")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOMINO", "NOTIFY_SOCKET"))}
    env.update(
        DOMINO_API_HOST=server.url,
        DOMINO_USER_API_KEY=ALICE_KEY,
        DOMINOFS_STATE_DIR=str(tmp_path / "state"),
        DOMINOFS_CACHE_DIR=str(tmp_path / "cache"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    client = DominoClient(server.url, ALICE_KEY)
    e = Env(server, tmp_path, env, [], client.project("alice/demo"))
    try:
        yield e
    finally:
        for m in e.mounts:
            e.unmount(m)
        client.close()


Wait = Callable[..., object]


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    """Poll `predicate` until it returns something truthy (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError as exc:
            last = exc
        if last and not isinstance(last, BaseException):
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or predicate}: last={last!r}")
