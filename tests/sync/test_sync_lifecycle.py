"""Restarts, kill -9, the server going away, SIGTERM, --once and --pull, through the service."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from dominofs.api import ProjectClient
from tests.conftest import BOTH_ROUTES, LocalServer
from tests.sync.conftest import FAST, SyncProc, remote_bytes, remote_files, run_cli, wait_for


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def queued(root: Path) -> int:
    db = sqlite3.connect(root / ".dominofs" / "outbox" / "outbox.db")
    try:
        (n,) = db.execute("SELECT COUNT(*) FROM entries").fetchone()
    finally:
        db.close()
    return int(n)


def once(sp: SyncProc, *extra: str) -> tuple[int, str]:
    r = run_cli(sp.env, "sync", "alice/demo", str(sp.root), *FAST, "--once", *extra)
    return r.returncode, r.stderr


@pytest.mark.slow
def test_restart_uploads_nothing_then_exactly_the_change(
    make_sync: Callable[..., SyncProc], server: LocalServer, remote: ProjectClient
) -> None:
    sp = make_sync()
    for i in range(30):
        write(sp.root / "d" / f"f{i}.txt", f"v1 {i}".encode())
    sp.start()
    sp.wait_idle()
    assert sp.terminate() == 0
    server.reset_stats()
    sp.start()  # nothing changed: stat only, no upload
    sp.wait_idle()
    assert sp.terminate() == 0
    assert server.requests_count("PUT upload") == 0
    assert server.requests_count("GET blobs") == 0
    write(sp.root / "d" / "f7.txt", b"changed while the service was down")
    os.utime(sp.root / "d" / "f8.txt")  # touched only: hashed, not uploaded
    sp.start()
    wait_for(lambda: remote_bytes(remote, "d/f7.txt") == b"changed while the service was down")
    sp.wait_idle()
    assert server.requests_count("PUT upload") == 1
    assert sp.terminate() == 0


@pytest.mark.slow
def test_kill9_during_a_burst_loses_nothing_and_sends_nothing_twice(
    make_sync: Callable[..., SyncProc], server: LocalServer, remote: ProjectClient
) -> None:
    sp = make_sync().start()
    before = len(remote.commits())
    n = 1000
    for i in range(n):
        write(sp.root / "burst" / f"f{i:04d}.txt", f"content {i}".encode())
    wait_for(lambda: server.requests_count("PUT upload") >= 50, 60, "uploads under way")
    sp.kill()
    assert queued(sp.root) > 0 or len(remote_files(remote)) < n + 2
    sp.start()
    wait_for(lambda: sum(p.startswith("burst/") for p in remote_files(remote)) == n, 180, "all")
    sp.wait_idle(60)
    assert sp.terminate() == 0
    files = remote_files(remote)
    for i in (0, n // 2, n - 1):
        assert remote_bytes(remote, f"burst/f{i:04d}.txt") == f"content {i}".encode()
    assert len(files) == n + 2
    assert len(remote.commits()) - before == n  # one commit per file: none landed twice


@pytest.mark.slow
def test_server_down_queues_then_lands_and_sigterm_keeps_queue(
    make_sync: Callable[..., SyncProc], server: LocalServer, remote: ProjectClient
) -> None:
    sp = make_sync().start()
    sp.wait_idle()
    server.stop()
    write(sp.root / "offline.txt", b"written while the server was down")
    write(sp.root / "offline2.txt", b"also")
    wait_for(lambda: sp.status().get("server_reachable") is False, what="unreachable in status")
    wait_for(lambda: sp.status().get("pending_uploads") == 2, what="two pending")
    assert sp.terminate() == 0  # SIGTERM: exit 0, the queue is kept
    assert queued(sp.root) == 2
    code, err = once(sp)
    assert code == 5, err  # --once against a server that is down: Unreachable
    assert "dominofs: error:" in err
    assert queued(sp.root) == 2
    server.start(port=server.port)
    sp.start()
    wait_for(lambda: remote_bytes(remote, "offline.txt") == b"written while the server was down")
    sp.wait_idle()
    assert remote_bytes(remote, "offline2.txt") == b"also"
    assert server.requests_count("PUT upload") == 2
    assert sp.terminate() == 0


@pytest.mark.slow
@BOTH_ROUTES
def test_pull_into_empty_dir_then_once_is_in_step(
    make_sync: Callable[..., SyncProc], server: LocalServer, remote: ProjectClient, tmp_path: Path
) -> None:
    import io

    remote.upload("data/x.csv", io.BytesIO(b"1,2\n"), size=4)
    sp = make_sync(tmp_path / "new" / "dir")
    sp.root.rmdir()
    server.reset_stats()
    code, err = once(sp, "--pull")
    assert code == 0, err
    assert (sp.root / "data" / "x.csv").read_bytes() == b"1,2\n"
    assert (sp.root / "README.md").exists()
    assert server.requests_count(server.read_route) == 3  # README, .dominoignore, x.csv
    server.reset_stats()
    code, err = once(sp)
    assert code == 0, err
    assert server.requests_count("PUT upload") == 0
    assert server.requests_count(server.read_route) == 0
    code, err = once(sp, "--pull")  # --pull refuses a folder that is not empty
    assert code == 2
    assert "empty" in err


@pytest.mark.slow
def test_once_exit_code_with_held_deletes(
    make_sync: Callable[..., SyncProc], server: LocalServer, remote: ProjectClient
) -> None:
    sp = make_sync()
    for i in range(55):
        write(sp.root / f"f{i}.txt", b"x")
    assert once(sp)[0] == 0
    for i in range(55):
        os.unlink(sp.root / f"f{i}.txt")
    code, err = once(sp)
    assert code == 1
    assert "--confirm-deletes" in err
    assert len(remote_files(remote)) == 57
    code, err = once(sp, "--confirm-deletes")
    assert code == 0, err
    assert set(remote_files(remote)) == {"README.md", ".dominoignore"}
