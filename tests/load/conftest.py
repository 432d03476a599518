"""Load tests: a real local server whose data is built offline first, and real FUSE mounts.

`load_env(build)` opens a fresh data directory (on /dev/shm with `ram=BYTES`, if it has room),
lets `build(store)` fill it (see build.py), starts the server on it and returns the same `Env`
the mount tests use; every mount is unmounted and the server stopped in teardown.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from dominofs.api import DominoClient
from dominofs.server.store import Store
from tests.conftest import ALICE_KEY, LocalServer
from tests.load.build import open_store
from tests.mount.conftest import Env, fuse_available

Build = Callable[[Store], object]


class LoadEnv(Protocol):
    def __call__(self, build: Build, *, ram: int = 0) -> Env: ...


RAM_DIR = Path("/dev/shm")


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/PID/status (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def ram_room() -> int:
    """Free bytes in /dev/shm (0 when there is none)."""
    try:
        st = os.statvfs(RAM_DIR)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize if os.access(RAM_DIR, os.W_OK) else 0


@pytest.fixture
def load_env(tmp_path: Path) -> Iterator[LoadEnv]:
    """Factory: build a data dir offline, start the server on it, hand back a mount Env."""
    if not fuse_available():
        pytest.skip("needs /dev/fuse and fusermount3")
    made: list[tuple[Env, DominoClient]] = []
    servers: list[LocalServer] = []
    ram_dirs: list[Path] = []

    def start(build: Build, *, ram: int = 0) -> Env:
        data = tmp_path / "server-data"
        if ram and ram_room() >= ram + (2 << 30):
            # Test data only: 100,000 blob files take a second to create on tmpfs, 15 on disk.
            ram_dirs.append(Path(tempfile.mkdtemp(prefix="dominofs-load-", dir=RAM_DIR)))
            data = ram_dirs[-1] / "server-data"
        build(open_store(data))
        srv = LocalServer(data)
        servers.append(srv)
        srv.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOMINO", "NOTIFY_SOCKET"))}
        env.update(
            DOMINO_API_HOST=srv.url,
            DOMINO_USER_API_KEY=ALICE_KEY,
            DOMINOFS_STATE_DIR=str(tmp_path / "state"),
            DOMINOFS_CACHE_DIR=str(tmp_path / "cache"),
            XDG_CONFIG_HOME=str(tmp_path / "config"),
        )
        client = DominoClient(srv.url, ALICE_KEY)
        e = Env(srv, tmp_path, env, [], client.project("alice/load"))
        made.append((e, client))
        return e

    try:
        yield start
    finally:
        try:
            for e, client in made:
                for m in e.mounts:
                    e.unmount(m)
                client.close()
        finally:
            for srv in servers:
                srv.stop()
            # The big test data (blobs, the mount's cache) go now, not with pytest's old tmp dirs.
            for d in [*ram_dirs, tmp_path / "server-data", tmp_path / "cache"]:
                shutil.rmtree(d, ignore_errors=True)
