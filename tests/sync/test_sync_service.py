"""The service's own machinery: inotify overflow -> rescan, sd_notify, `dominofs status`."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from dominofs.api import ProjectClient
from tests.conftest import LocalServer
from tests.sync.conftest import SyncProc, remote_bytes, remote_files, run_cli, wait_for


@pytest.mark.slow
def test_inotify_overflow_triggers_a_full_rescan(
    make_sync: Callable[..., SyncProc], server: LocalServer, remote: ProjectClient
) -> None:
    max_events = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if max_events > 100_000:
        pytest.skip("inotify queue too large to overflow quickly here")
    sp = make_sync()
    noise = [sp.root / ".a.swp", sp.root / ".b.swp"]  # ignored files: events without uploads
    for p in noise:
        p.write_bytes(b"")
    sp.start()
    sp.wait_idle()
    assert sp.proc is not None
    os.kill(sp.proc.pid, signal.SIGSTOP)  # nothing reads the inotify queue now
    try:
        for i in range(max_events + 2000):  # alternate files so the kernel cannot merge events
            os.utime(noise[i % 2])
        for i in range(5):  # these events are lost in the overflow
            (sp.root / f"lost{i}.txt").write_bytes(f"after overflow {i}".encode())
    finally:
        os.kill(sp.proc.pid, signal.SIGCONT)
    wait_for(lambda: all(f"lost{i}.txt" in remote_files(remote) for i in range(5)), 60, "rescan")
    assert remote_bytes(remote, "lost3.txt") == b"after overflow 3"
    assert "overflow" in sp.output().lower()
    assert sp.terminate() == 0


@pytest.mark.slow
def test_sd_notify_ready_status_and_watchdog(
    make_sync: Callable[..., SyncProc], tmp_path: Path
) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    try:
        sp = make_sync()
        sp.env["NOTIFY_SOCKET"] = str(sock_path)
        sp.env["WATCHDOG_USEC"] = "400000"
        sp.start()
        messages: list[str] = []

        def got(prefix: str) -> bool:
            try:
                while True:
                    messages.append(sock.recv(4096).decode())
            except TimeoutError:
                pass
            return any(m.startswith(prefix) for m in messages)

        wait_for(lambda: got("READY=1"), 20, "READY=1")
        assert any("STATUS=watching" in m for m in messages)
        wait_for(lambda: sum(m == "WATCHDOG=1" for m in messages) >= 2 or got("x"), 20, "pings")
        assert sp.terminate() == 0
        wait_for(lambda: got("STOPPING=1"), 5, "STOPPING=1")
    finally:
        sock.close()


@pytest.mark.slow
def test_status_command_lists_the_sync_and_waits(
    make_sync: Callable[..., SyncProc], server: LocalServer
) -> None:
    sp = make_sync().start()
    sp.wait_idle()
    r = run_cli(sp.env, "status", "--json")
    assert r.returncode == 0, r.stderr
    [item] = json.loads(r.stdout)
    assert item["kind"] == "sync"
    assert item["project"] == "alice/demo"
    assert item["path"] == str(sp.root)
    assert item["pending_uploads"] == 0
    assert item["server_reachable"] is True
    server.stop()
    (sp.root / "pending.txt").write_bytes(b"waiting for the server")
    wait_for(lambda: sp.status().get("pending_uploads") == 1, what="pending")
    wait_for(lambda: sp.status().get("server_reachable") is False, what="unreachable")
    r = run_cli(sp.env, "status", "--wait", "--timeout", "0.5")
    assert r.returncode == 1
    assert "pending" in r.stderr
    r = run_cli(sp.env, "status")
    assert "1 pending" in r.stdout
    assert "server unreachable" in r.stdout
    server.start(port=server.port)
    r = run_cli(sp.env, "status", "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    assert sp.terminate() == 0
