"""Real FUSE mounts of the real local server, each in its own process, always unmounted.

The process side (start, wait until it answers, unmount, kill) is tests/harness.py; the names it
exports are re-exported here for the tests that import them from this module.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from dominofs.api import DominoClient, ProjectClient
from tests.conftest import ALICE_KEY, LocalServer
from tests.harness import (
    Mount,
    answers,
    force_unmount,
    fuse_available,
    start_mount,
    stop_mount,
    wait_for,
)

__all__ = ["Env", "Mount", "answers", "force_unmount", "fuse_available", "fuse_env", "wait_for"]

pytestmark = pytest.mark.fuse


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
        self,
        *extra: str,
        name: str = "mnt",
        project: str = "alice/demo",
        wait: bool = True,
        at: Path | None = None,
    ) -> Mount:
        """`dominofs mount --foreground` in its own process; returns once the mount answers.
        `at`: the mount point (default: `name` in the test's own folder, which only its owner
        may enter)."""
        mp = at if at is not None else self.root / name
        argv = [sys.executable, "-m", "dominofs", "-v", "mount", "--foreground",
                project, str(mp), *extra]  # fmt: skip
        m = start_mount(argv, mp, self.root / f"{name}-{len(self.mounts)}.log", self.env, wait=wait)
        self.mounts.append(m)
        return m

    def unmount(self, m: Mount) -> None:
        stop_mount(m)


@contextmanager
def fuse_env(
    server: LocalServer, tmp_path: Path, project: str = "alice/demo", **extra_env: str
) -> Iterator[Env]:
    """An Env on `server`'s `project` (skipping without FUSE), with `extra_env` for its mounts;
    every mount it made is stopped on exit."""
    if not fuse_available():
        pytest.skip("needs /dev/fuse and fusermount3")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOMINO", "NOTIFY_SOCKET"))}
    env.update(
        DOMINO_API_HOST=server.url,
        DOMINO_USER_API_KEY=ALICE_KEY,
        DOMINOFS_STATE_DIR=str(tmp_path / "state"),
        DOMINOFS_CACHE_DIR=str(tmp_path / "cache"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        **extra_env,
    )
    client = DominoClient(server.url, ALICE_KEY)
    e = Env(server, tmp_path, env, [], client.project(project))
    try:
        yield e
    finally:
        for m in e.mounts:
            e.unmount(m)
        client.close()


@pytest.fixture
def fenv(server: LocalServer, tmp_path: Path) -> Iterator[Env]:
    with fuse_env(server, tmp_path) as e:
        yield e
