"""Remote -> local and both-sides changes: pulls, conflicts, the delete guard, --no-delete,
and a hostile server whose listing tries to escape DIR."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dominofs.api import DominoClient, ProjectClient
from tests.conftest import ALICE_KEY, LocalServer
from tests.sync.conftest import FAST, SyncProc, remote_bytes, remote_files, run_cli, wait_for


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def upload(remote: ProjectClient, path: str, data: bytes) -> None:
    remote.upload(path, io.BytesIO(data), size=len(data))


@pytest.mark.slow
def test_remote_change_comes_down_atomically_and_both_sides_change_conflicts(
    make_sync: Callable[..., SyncProc], server: LocalServer, remote: ProjectClient
) -> None:
    sp = make_sync()
    write(sp.root / "a.txt", b"v1")
    write(sp.root / "b.csv", b"b1")
    sp.start()
    sp.wait_idle()
    inode = os.stat(sp.root / "a.txt").st_ino
    upload(remote, "a.txt", b"changed on the server")
    upload(remote, "new/remote.txt", b"new remote file")
    wait_for(lambda: (sp.root / "a.txt").read_bytes() == b"changed on the server")
    wait_for(lambda: (sp.root / "new" / "remote.txt").exists())
    assert os.stat(sp.root / "a.txt").st_ino != inode  # replaced by rename, never written over
    assert list((sp.root / ".dominofs" / "tmp").iterdir()) == []
    sp.wait_idle()
    assert sp.terminate() == 0

    # Both sides change b.csv while the service is down.
    upload(remote, "b.csv", b"theirs")
    write(sp.root / "b.csv", b"ours")
    sp.start()
    wait_for(lambda: sp.status().get("conflicts"), what="a conflict in status")
    [conflict] = sp.status()["conflicts"]
    cpath = conflict["conflict_path"]
    assert cpath.startswith("b.conflict-")
    assert cpath.endswith(".csv")
    wait_for(lambda: (sp.root / "b.csv").read_bytes() == b"theirs", what="theirs downloaded")
    assert remote_bytes(remote, "b.csv") == b"theirs"
    assert remote_bytes(remote, cpath) == b"ours"
    assert (sp.root / cpath).read_bytes() == b"ours"
    sp.wait_idle()
    assert sp.terminate() == 0
    r = run_cli(sp.env, "status", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout) == []


@pytest.mark.slow
@pytest.mark.parametrize("pause", [0.0, 1.2], ids=["at-once", "in-slices"])
def test_mass_delete_guard_holds_until_confirmed(
    make_sync: Callable[..., SyncProc], server: LocalServer, remote: ProjectClient, pause: float
) -> None:
    sp = make_sync()
    for i in range(60):
        write(sp.root / "many" / f"f{i:02d}.txt", b"x")
    write(sp.root / "keep.txt", b"keep")
    sp.start()
    wait_for(lambda: len(remote_files(remote)) == 63, what="all uploaded")
    sp.wait_idle()
    for i in range(60):
        os.unlink(sp.root / "many" / f"f{i:02d}.txt")
        if pause and i % 20 == 19:
            # A slow rm: the whole deletion takes longer than the guard's grace, each slice
            # of it is under the limit; it must still be judged as one.
            time.sleep(pause)
    wait_for(lambda: sp.status().get("held_deletes_count") == 60, what="deletes held")
    assert "limit" in sp.status()["held_reason"]
    assert server.requests_count("DELETE upload") == 0
    r = run_cli(sp.env, "status")
    assert "60 deletions held" in r.stdout
    assert "--confirm-deletes" in r.stdout
    r = run_cli(sp.env, "sync", "alice/demo", str(sp.root), "--confirm-deletes")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len(remote_files(remote)) == 3, what="deletes sent")
    wait_for(lambda: sp.status().get("held_deletes_count") == 0)
    assert "keep.txt" in remote_files(remote)
    assert sp.terminate() == 0


@pytest.mark.slow
def test_no_delete_server_keeps_deletions_local(
    make_sync: Callable[..., SyncProc], make_server: Any
) -> None:
    srv = make_server("--no-delete", name="nodelete")
    client = DominoClient(srv.url, ALICE_KEY, retries=0)
    remote = client.project("alice/demo")
    sp = make_sync(srv=srv)
    write(sp.root / "gone.txt", b"x")
    write(sp.root / "stay.txt", b"y")
    sp.start()
    wait_for(lambda: "gone.txt" in remote_files(remote))
    sp.wait_idle()
    os.unlink(sp.root / "gone.txt")
    wait_for(lambda: sp.status().get("deletions_kept_local") == ["gone.txt"], what="kept local")
    assert "gone.txt" in remote_files(remote)
    upload(remote, "stay.txt", b"y2")  # a later remote change still comes down...
    wait_for(lambda: (sp.root / "stay.txt").read_bytes() == b"y2")
    assert not (sp.root / "gone.txt").exists()  # ...but the deleted file is not brought back
    r = run_cli(sp.env, "status")
    assert "deletion kept local" in r.stdout
    assert "gone.txt" in r.stdout
    assert sp.terminate() == 0
    client.close()


class _Hostile(BaseHTTPRequestHandler):
    """A server whose listing names paths outside any folder."""

    blobs = {"k" * 40: b"safe", "e" * 40: b"evil"}
    listing = [
        {"path": "ok/safe.txt", "size": 4, "key": "k" * 40, "lastModified": 1},
        {"path": "../escape.txt", "size": 4, "key": "e" * 40, "lastModified": 1},
        {"path": "ok/../../escape2.txt", "size": 4, "key": "e" * 40, "lastModified": 1},
        {"path": "/tmp/abs-escape.txt", "size": 4, "key": "e" * 40, "lastModified": 1},
        {"path": "nul\u0000.txt", "size": 4, "key": "e" * 40, "lastModified": 1},
        {"path": "link/through.txt", "size": 4, "key": "e" * 40, "lastModified": 1},
    ]

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.endswith("/commits"):
            self._send(json.dumps(["c" * 40]).encode())
        elif "/files/" in self.path:
            self._send(json.dumps({"objectType": "list", "data": self.listing}).encode())
        elif "/blobs/" in self.path:
            self._send(self.blobs.get(self.path.rsplit("/", 1)[1], b""), "application/octet-stream")
        else:
            self.send_error(404)


@pytest.fixture
def hostile() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    t.join(5)


def test_hostile_listing_never_writes_outside_dir(tmp_path: Path, hostile: str) -> None:
    from tests.sync.conftest import sync_env

    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "work" / "dir"
    root.mkdir(parents=True)
    os.symlink(outside, root / "link")  # a link inside DIR must not lead a download out
    env = sync_env(tmp_path, LocalServer(tmp_path / "unused"))
    env["DOMINO_API_HOST"] = hostile
    r = run_cli(env, "sync", "alice/demo", str(root), *FAST, "--once")
    assert (root / "ok" / "safe.txt").read_bytes() == b"safe"
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "work" / "escape.txt").exists()
    assert not (tmp_path / "escape2.txt").exists()
    assert not Path("/tmp/abs-escape.txt").exists()
    # A leading "/" is tolerated by the wire contract (CONTRACT §2): it lands inside DIR.
    found = [p for p in tmp_path.rglob("*escape*")]
    assert all(p.is_relative_to(root) and not p.is_symlink() for p in found), found
    assert "refusing" in r.stderr or "skipped" in r.stderr
