"""The sync service (a real subprocess) against the real server with injected faults.

The promise under test: whatever the server does, and wherever the service is killed with
SIGKILL, the final content reaches the server exactly once (or is re-sent identically), nothing
is lost, nothing is duplicated, no conflict copy appears, and the service never dies on its own.
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dominofs.api import DominoClient, ProjectClient
from tests.conftest import ALICE_KEY, LocalServer
from tests.sync.conftest import SyncProc, run_cli, sync_env

from .conftest import Faults, history_of, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


@pytest.fixture
def remote(server: LocalServer) -> Iterator[ProjectClient]:
    client = DominoClient(server.url, ALICE_KEY, retries=2, backoff=0.05)
    yield client.project("alice/demo")
    client.close()


@pytest.fixture
def make_sync(tmp_path: Path, server: LocalServer) -> Iterator[Callable[..., SyncProc]]:
    started: list[SyncProc] = []

    def make() -> SyncProc:
        root = tmp_path / "dir"
        root.mkdir(exist_ok=True)
        sp = SyncProc(root, sync_env(tmp_path, server))
        started.append(sp)
        return sp

    yield make
    for sp in started:
        if sp.proc is not None and sp.proc.poll() is None:
            sp.kill()


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def remote_keys(remote: ProjectClient) -> dict[str, str]:
    return {f.path: f.key for f in remote.list_files(remote.commits()[0])}


def landed(remote: ProjectClient, want: dict[str, bytes]) -> bool:
    keys = remote_keys(remote)
    return all(keys.get(p) == sha1(d) for p, d in want.items())


def assert_once(remote: ProjectClient, want: dict[str, bytes]) -> None:
    """Each path reached its final content in one step, and no conflict copy exists."""
    for path, data in want.items():
        assert history_of(remote, path) == [sha1(data)], path
    assert not [p for p in remote_keys(remote) if ".conflict-" in p]


def queued(root: Path, path: str) -> bool:
    db = root / ".dominofs" / "outbox" / "outbox.db"
    if not db.exists():
        return False
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT 1 FROM entries WHERE path = ?", (path,)).fetchone() is not None
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()


def queued_or_failed(sync: SyncProc) -> Callable[[], bool]:
    def check() -> bool:
        status = sync.status()
        return bool(status.get("pending_uploads") or status.get("failed"))

    return check


# -- transient server faults while the service runs ---------------------------------------------

TRANSIENT = {
    "503": "upload:status=503:retry_after=0",
    "429-retry-after": "upload:status=429:retry_after=0.2",
    "500": "upload:status=500",
    "reset-mid-body": "upload:drop=1",
    "2xx-lost": "upload:lose=1:count=1",
    "listing-500": "files:status=500;commits:status=500",
    "expired-key": "*:auth_after=0",
}


@pytest.mark.parametrize("spec", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_uploads_land_once_after_a_transient_fault(
    faults: Faults, make_sync: Callable[..., SyncProc], remote: ProjectClient, spec: str
) -> None:
    sync = make_sync().start()
    faults.set(spec)
    want = {"a.txt": b"alpha " * 1000, "sub/b.csv": b"x,y\n1,2\n" * 100}
    for path, data in want.items():
        target = sync.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    wait_for(lambda: faults.hits() >= 1, 20, "the fault to hit an upload")
    if "lose" not in spec:
        # While the fault lasts the changes stay queued and the service says why.
        wait_for(lambda: sync.status().get("last_error"), 20, "the error in status.json")
        wait_for(queued_or_failed(sync), 20, "the changes in the queue")
    faults.clear()
    wait_for(lambda: landed(remote, want), 40, "the uploads to land")
    sync.wait_idle(30)
    assert sync.proc is not None
    assert sync.proc.poll() is None, sync.output()
    assert_once(remote, want)
    assert sync.status()["failed"] == []


def test_latency_everywhere_delays_but_loses_nothing(
    faults: Faults, make_sync: Callable[..., SyncProc], remote: ProjectClient
) -> None:
    sync = make_sync().start()
    faults.set("*:latency=0.2")
    want = {f"f{i}.txt": f"file {i}\n".encode() * 50 for i in range(6)}
    for path, data in want.items():
        (sync.root / path).write_bytes(data)
    (sync.root / "f0.txt").write_bytes(b"edited\n")  # a second save before the upload
    want["f0.txt"] = b"edited\n"
    wait_for(lambda: landed(remote, want), 40, "the uploads to land")
    faults.clear()
    sync.wait_idle(30)
    for path, data in want.items():
        assert history_of(remote, path)[-1] == sha1(data)
    assert not [p for p in remote_keys(remote) if ".conflict-" in p]


def test_corrupt_download_never_reaches_the_folder(
    server: LocalServer,
    faults: Faults,
    make_sync: Callable[..., SyncProc],
    remote: ProjectClient,
) -> None:
    sync = make_sync().start()
    good = b"remote content\n" * 500
    faults.set("blobs:flip=1")
    remote.upload("remote.txt", io.BytesIO(good), size=len(good))
    wait_for(lambda: faults.hits() >= 1, 20, "the download to be corrupted")
    target = sync.root / "remote.txt"
    # However often it retries meanwhile, a corrupt copy never appears in the folder.
    wait_for(lambda: faults.hits() >= 2, 20, "a second (retried) download")
    for _ in range(20):
        assert not target.exists()
        time.sleep(0.1)
    faults.clear()
    wait_for(lambda: target.exists() and target.read_bytes() == good, 30, "the right bytes")
    sync.wait_idle(30)
    assert history_of(remote, "remote.txt") == [sha1(good)]  # nothing was sent back


def test_sync_once_keeps_the_queue_under_a_fault_then_finishes(
    tmp_path: Path, server: LocalServer, faults: Faults, remote: ProjectClient
) -> None:
    root = tmp_path / "once"
    root.mkdir()
    (root / "note.md").write_bytes(b"# once\n")
    env = sync_env(tmp_path, server)
    faults.set("upload:status=503:retry_after=0")
    first = run_cli(env, "sync", "alice/demo", str(root), "--once", "--once-timeout", "3",
                    "--max-backoff", "0.3")  # fmt: skip
    assert first.returncode != 0
    assert "queue" in first.stderr or "queued" in first.stderr, first.stderr
    assert "Traceback" not in first.stderr
    assert first.stderr.splitlines()[-1].startswith("dominofs: error:")  # one line, no trace
    assert queued(root, "note.md")
    faults.clear()
    second = run_cli(env, "sync", "alice/demo", str(root), "--once", "--max-backoff", "0.3")
    assert second.returncode == 0, second.stderr
    assert_once(remote, {"note.md": b"# once\n"})
    assert not queued(root, "note.md")


# -- kill -9 at each step of an upload ----------------------------------------------------------


def restart_and_check(sync: SyncProc, remote: ProjectClient, want: dict[str, bytes]) -> None:
    sync.start()
    wait_for(lambda: landed(remote, want), 40, "the uploads to land after the restart")
    sync.wait_idle(30)
    assert_once(remote, want)


def test_kill_before_enqueue(
    server: LocalServer, make_sync: Callable[..., SyncProc], remote: ProjectClient
) -> None:
    sync = make_sync().start("--upload-delay", "30")
    want = {"k1.txt": b"before enqueue\n"}
    (sync.root / "k1.txt").write_bytes(want["k1.txt"])
    wait_for(lambda: sync.status().get("state") == "watching", 10, "the service")
    assert not queued(sync.root, "k1.txt")  # seen or not, it is still inside its debounce
    sync.kill()
    assert "k1.txt" not in remote_keys(remote)
    restart_and_check(sync, remote, want)


def test_kill_after_enqueue_before_the_put(
    server: LocalServer,
    faults: Faults,
    make_sync: Callable[..., SyncProc],
    remote: ProjectClient,
) -> None:
    sync = make_sync().start()
    server.reset_stats()
    faults.set("files:stall=60")  # the conflict check before the PUT hangs
    want = {"k2.txt": b"after enqueue\n"}
    (sync.root / "k2.txt").write_bytes(want["k2.txt"])
    wait_for(lambda: queued(sync.root, "k2.txt") and faults.hits() >= 1, 20, "a queued entry")
    sync.kill()
    faults.clear()
    assert server.requests_count("PUT upload") == 0
    restart_and_check(sync, remote, want)


def test_kill_mid_body(
    server: LocalServer,
    faults: Faults,
    make_sync: Callable[..., SyncProc],
    remote: ProjectClient,
) -> None:
    sync = make_sync().start()
    data = hashlib.sha256(b"seed").digest() * (24 * 1024 * 1024 // 32)  # 24 MiB: not all
    want = {"k3.bin": data}  # of it fits in the socket buffers while the server stalls
    faults.set("upload:stall=60")
    (sync.root / "k3.bin").write_bytes(data)
    wait_for(lambda: faults.hits() >= 1, 30, "the PUT to reach the server")
    sync.kill()
    faults.clear()
    # The server now reads a body that breaks off: it must never commit a part of it.
    wait_for(lambda: server.requests_count("PUT upload") >= 1, 20, "the broken PUT to end")
    assert remote_keys(remote).get("k3.bin") in (None, sha1(data))
    restart_and_check(sync, remote, want)


def test_kill_after_the_2xx_before_the_queue_commit(
    server: LocalServer,
    faults: Faults,
    make_sync: Callable[..., SyncProc],
    remote: ProjectClient,
) -> None:
    sync = make_sync().start()
    server.reset_stats()
    faults.set("upload:late=60")  # the server commits, then holds the answer
    want = {"k4.txt": b"committed, answer pending\n"}
    (sync.root / "k4.txt").write_bytes(want["k4.txt"])
    wait_for(lambda: "k4.txt" in remote_keys(remote), 20, "the server to commit")
    assert queued(sync.root, "k4.txt")  # the service has not heard back yet
    sync.kill()
    faults.clear()
    restart_and_check(sync, remote, want)
    # The restarted service recognised its own upload instead of sending it again.
    assert server.requests_count("PUT upload") == 1
