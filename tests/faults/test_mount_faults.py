"""The mount's read side (a real FUSE mount in its own process) under injected server faults.

Reads retry, then fail with EIO (or EACCES for a refused key); they never hang past the client's
timeout, never cache or show a bad blob, and the mount stays up: once the faults are cleared the
same path gives the right bytes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LocalServer
from tests.mount.conftest import Env, Mount, answers, fuse_available

from .conftest import Faults, wait_for

pytestmark = [pytest.mark.fuse, pytest.mark.slow, pytest.mark.timeout(90)]

READ_TIMEOUT = "1"  # seconds: a stalled read must end well inside the test's budget


@pytest.fixture
def menv(server: LocalServer, tmp_path: Path) -> Iterator[Env]:
    if not fuse_available():
        pytest.skip("needs /dev/fuse and fusermount3")
    from dominofs.api import DominoClient
    from tests.conftest import ALICE_KEY

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOMINO", "NOTIFY_SOCKET"))}
    env.update(
        DOMINO_API_HOST=server.url,
        DOMINO_USER_API_KEY=ALICE_KEY,
        DOMINOFS_STATE_DIR=str(tmp_path / "state"),
        DOMINOFS_CACHE_DIR=str(tmp_path / "cache"),
        DOMINOFS_READ_TIMEOUT=READ_TIMEOUT,
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


def payload(name: str, size: int = 1 << 20) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def mount(menv: Env, *extra: str) -> Mount:
    return menv.mount("--read-only", "--poll-interval", "0.5", *extra)


def read(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def read_error(path: Path) -> int:
    """The errno a whole read of `path` fails with (the test fails if it succeeds)."""
    with pytest.raises(OSError, match=r"\[Errno \d+\]") as info:
        read(path)
    return int(info.value.errno or 0)


def assert_up(m: Mount) -> None:
    assert answers(m.path), m.log_text()
    assert m.proc is not None
    assert m.proc.poll() is None, m.log_text()


@pytest.mark.parametrize(
    "spec", ["blobs:status=503:retry_after=0:count=2", "blobs:drop=1:count=1"], ids=str
)
def test_a_transient_blob_fault_is_retried_invisibly(menv: Env, faults: Faults, spec: str) -> None:
    data = payload("t.bin")
    menv.put("t.bin", data)
    m = mount(menv)
    faults.set(spec)
    assert read(m.path / "t.bin") == data
    assert faults.hits() >= 1


@pytest.mark.parametrize(
    ("server", "spec", "size"),
    [
        ("blobs", "blobs:status=500", 1 << 20),
        ("blobs", "blobs:truncate=1", 1 << 20),
        ("blobs", "blobs:flip=1", 4000),  # one page, one read: nothing served before the check
        # Pages served before the hash check must not survive it (no keep_cache on the next
        # open; the kernel drops the inode's pages when the download fails).
        ("blobs", "blobs:flip=1", 1 << 20),
        # A server without the blob route: the file comes by path, and is checked the same way.
        ("content", "content:flip=1", 1 << 20),
    ],
    ids=["lasting-500", "truncated", "flipped-byte-small", "flipped-byte-large", "content-flip"],
    indirect=["server"],
)
def test_a_bad_blob_is_eio_and_never_cached(
    menv: Env, server: LocalServer, faults: Faults, spec: str, size: int
) -> None:
    data = payload(spec, size)
    menv.put("bad.bin", data)
    m = mount(menv)
    faults.set(spec)
    started = time.monotonic()
    assert read_error(m.path / "bad.bin") == errno.EIO
    assert time.monotonic() - started < 30
    assert_up(m)
    # A second try while the fault lasts fails again: nothing bad was kept.
    assert read_error(m.path / "bad.bin") == errno.EIO
    faults.clear()
    server.reset_stats()
    assert read(m.path / "bad.bin") == data
    assert server.requests_count(server.read_route) >= 1  # fetched again, not from a cache
    assert_up(m)


def test_a_stalled_blob_gives_eio_within_the_client_timeout(menv: Env, faults: Faults) -> None:
    data = payload("stall.bin", 4096)
    menv.put("stall.bin", data)
    m = mount(menv)
    faults.set("blobs:stall=60")
    started = time.monotonic()
    assert read_error(m.path / "stall.bin") == errno.EIO
    # (read timeout x (1 + retries) + backoff) per kernel read: far below the stall, no hang.
    assert time.monotonic() - started < 30
    assert_up(m)
    faults.clear()
    assert read(m.path / "stall.bin") == data


def test_an_expired_key_refuses_new_reads_but_serves_the_cache(menv: Env, faults: Faults) -> None:
    cached, fresh = payload("cached.txt", 5000), payload("fresh.txt", 5000)
    menv.put("cached.txt", cached)
    menv.put("fresh.txt", fresh)
    m = mount(menv)
    assert read(m.path / "cached.txt") == cached
    faults.set("*:auth_after=0")
    assert read(m.path / "cached.txt") == cached  # a cache hit needs no server
    assert read_error(m.path / "fresh.txt") in (errno.EACCES, errno.EIO)
    assert_up(m)
    faults.clear()
    assert read(m.path / "fresh.txt") == fresh


def test_listing_faults_keep_the_old_tree_until_the_server_answers(
    menv: Env, faults: Faults
) -> None:
    menv.put("old.txt", b"old\n")
    m = mount(menv)
    assert (m.path / "old.txt").exists()
    faults.set("files:status=500")
    menv.put("new.txt", b"new\n")  # the head moves; listing it fails
    wait_for(lambda: faults.hits() >= 1, 20, "a failed listing")
    assert read(m.path / "old.txt") == b"old\n"
    assert "new.txt" not in os.listdir(m.path)
    assert_up(m)
    faults.clear()
    wait_for(lambda: (m.path / "new.txt").exists(), 20, "the new file to appear")
    assert read(m.path / "new.txt") == b"new\n"


def test_latency_and_random_503s_still_read_right(menv: Env, faults: Faults) -> None:
    files = {f"d/f{i}.bin": payload(f"f{i}", 20_000 + i) for i in range(8)}
    for path, data in files.items():
        menv.put(path, data)
    m = mount(menv)
    faults.set("*:latency=0.05;blobs:status=503:retry_after=0:rate=0.3:seed=5")
    for path, data in files.items():
        assert read(m.path / path) == data
    assert faults.hits(1) >= 1
