"""The client against the real local server: every route, streaming, Range, errors."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
import time
from collections.abc import Iterator

import pytest

from dominofs import errors
from dominofs.api import DominoClient
from dominofs.models import RunRequest

from ..conftest import ALICE_KEY, BOB_KEY, BOTH_ROUTES, LocalServer


@pytest.fixture
def alice(server: LocalServer) -> Iterator[DominoClient]:
    with DominoClient(server.url, ALICE_KEY, read_timeout=10) as client:
        yield client


def test_new_project_has_readme_and_dominoignore(alice: DominoClient) -> None:
    pc = alice.project("alice/demo")
    commits = pc.commits()
    assert len(commits) == 1
    assert len(commits[0]) == 40
    paths = [f.path for f in pc.list_files(commits[0])]
    assert paths == [".dominoignore", "README.md"]
    ignore = next(f for f in pc.list_files(commits[0], ".dominoignore"))
    assert b"ignore certain files" in b"".join(pc.iter_blob(ignore.key))


@BOTH_ROUTES
def test_upload_list_download_roundtrip(alice: DominoClient) -> None:
    pc = alice.project("alice/demo")
    data = os.urandom(3 * 1024 * 1024 + 17)
    result = pc.upload("data/nested deep/ünï cödé.bin", io.BytesIO(data), size=len(data))
    assert result.size == len(data)
    assert result.key == hashlib.sha1(data).hexdigest()
    head = pc.head_commit()
    files = {f.path: f for f in pc.list_files(head, "data")}
    assert set(files) == {"data/nested deep/ünï cödé.bin"}
    f = files["data/nested deep/ünï cödé.bin"]
    assert (f.size, f.key) == (len(data), result.key)
    chunks = list(pc.iter_blob(f.key, chunk_size=1 << 16))
    assert max(len(c) for c in chunks) <= 1 << 16  # streamed, not one big body
    assert b"".join(chunks) == data
    assert b"".join(pc.iter_blob(f.key, offset=len(data) - 100)) == data[-100:]
    assert b"".join(pc.iter_blob(f.key, offset=len(data))) == b""
    assert b"".join(pc.iter_blob(f.key, offset=5, length=10, chunk_size=4)) == data[5:15]
    assert b"".join(pc.iter_blob(f.key, offset=len(data) - 3, length=10)) == data[-3:]
    assert b"".join(pc.iter_blob(f.key, length=0)) == b""
    with pytest.raises(ValueError, match="length"):
        pc.iter_blob(f.key, length=-1)
    stream, buf, got = pc.iter_blob(f.key, offset=10), bytearray(1 << 16), bytearray()
    while n := stream.readinto(buf):
        got += buf[:n]
    assert got == data[10:]
    assert pc.iter_blob(f.key, offset=len(data)).readinto(buf) == 0
    stream, got = pc.iter_blob(f.key, offset=7, length=100_000), bytearray()
    while n := stream.readinto(buf):
        got += buf[:n]
    assert got == data[7:100_007]


@BOTH_ROUTES
def test_range_requests_are_served_as_ranges(server: LocalServer, alice: DominoClient) -> None:
    pc = alice.project("alice/demo")
    data = os.urandom(1 << 20)
    key = pc.upload("r.bin", io.BytesIO(data), size=len(data)).key
    pc.list_files(pc.head_commit())
    b"".join(pc.iter_blob(key, length=1))  # where the blob route is gone, it is found out here
    server.reset_stats()
    assert b"".join(pc.iter_blob(key, offset=1000)) == data[1000:]
    sent = server.stats()["bytes_sent"]
    assert isinstance(sent, int)
    assert sent < len(data)  # the server sent only the range
    server.reset_stats()
    assert b"".join(pc.iter_blob(key, offset=1000, length=4096)) == data[1000:5096]
    sent = server.stats()["bytes_sent"]
    assert isinstance(sent, int)
    assert 4096 <= sent < 5000  # bytes=1000-5095 (and the reset's answer), not the whole rest
    assert server.requests_count(server.read_route) == 1
    assert server.requests_count("GET blobs" if "content" in server.read_route else "GET v4") == 0


def test_bounded_range_reads(server: LocalServer, alice: DominoClient) -> None:
    pc = alice.project("alice/demo")
    data = os.urandom(1 << 20)
    key = pc.upload("b.bin", io.BytesIO(data), size=len(data)).key
    server.reset_stats()
    assert b"".join(pc.iter_blob(key, offset=1000, length=5000)) == data[1000:6000]
    sent = server.stats()["bytes_sent"]
    assert isinstance(sent, int)
    assert 5000 <= sent < 5000 + 500  # the range, and the small answer to the stats reset
    stream, buf, got = pc.iter_blob(key, length=70_000), bytearray(1 << 16), bytearray()
    while n := stream.readinto(buf):
        got += buf[:n]
    assert got == data[:70_000]
    assert b"".join(pc.iter_blob(key, offset=len(data) - 10, length=100)) == data[-10:]
    assert b"".join(pc.iter_blob(key, length=0)) == b""
    with pytest.raises(ValueError, match=">= 0"):
        pc.iter_blob(key, length=-1)


def test_bounded_reads_are_cut_where_range_is_ignored() -> None:
    """A peer that answers every Range with the whole blob (200): the client skips and cuts."""
    data = os.urandom(300_000)

    class WholeBody(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    peer = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WholeBody)
    thread = threading.Thread(target=peer.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{peer.server_address[1]}"
        with DominoClient(url, ALICE_KEY, read_timeout=10) as client:
            pc = client.project("alice/demo")
            assert b"".join(pc.iter_blob("k" * 40, offset=7, length=100_001)) == data[7:100_008]
            stream, buf, got = pc.iter_blob("k" * 40, offset=5, length=9), bytearray(64), b""
            while n := stream.readinto(buf):
                got += bytes(buf[:n])
            assert got == data[5:14]
    finally:
        peer.shutdown()
        peer.server_close()
        thread.join(5)


def test_delete_and_no_delete(server: LocalServer, make_server: object) -> None:
    pc = DominoClient(server.url, ALICE_KEY).project("alice/demo")
    pc.upload("gone.txt", io.BytesIO(b"x"))
    assert pc.delete("gone.txt") is True
    assert "gone.txt" not in [f.path for f in pc.list_files(pc.head_commit())]
    assert pc.delete("never-was.txt") is True  # already absent is what was asked
    strict = make_server("--no-delete", name="strict")  # type: ignore[operator]
    spc = DominoClient(strict.url, ALICE_KEY).project("alice/demo")
    spc.upload("kept.txt", io.BytesIO(b"x"))
    assert spc.delete("kept.txt") is False
    assert "kept.txt" in [f.path for f in spc.list_files(spc.head_commit())]


def test_errors_map_to_classes_without_the_key(server: LocalServer) -> None:
    wrong = DominoClient(server.url, "not-a-key").project("alice/demo")
    with pytest.raises(errors.AuthError) as info:
        wrong.commits()
    assert "not-a-key" not in str(info.value)
    bob = DominoClient(server.url, BOB_KEY)
    with pytest.raises((errors.Forbidden, errors.NotFound)):
        bob.project("alice/demo").commits()
    alice = DominoClient(server.url, ALICE_KEY)
    with pytest.raises(errors.NotFound):
        alice.project("alice/nope").commits()
    with pytest.raises(errors.NotFound):
        alice.project("alice/demo").list_files("0" * 40)
    with pytest.raises(errors.NotFound):
        b"".join(alice.project("alice/demo").iter_blob("0" * 40))
    with pytest.raises(errors.BadRequest):
        alice.project("alice/demo").start_run(RunRequest(command=()))


def test_unreachable_is_bounded() -> None:
    c = DominoClient("http://127.0.0.1:9", ALICE_KEY, retries=1, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(errors.Unreachable, match="cannot reach"):
        c.project("alice/demo").commits()
    assert time.monotonic() - started < 5


@pytest.mark.slow
def test_runs_and_endpoint(alice: DominoClient) -> None:
    pc = alice.project("alice/demo")
    code = b"import json, os\nos.makedirs('results', exist_ok=True)\n" \
           b"json.dump({'ok': 1}, open('results/m.json', 'w'))\nprint('trained')\n"  # fmt: skip
    pc.upload("train.py", io.BytesIO(code))
    pc.upload("model.py", io.BytesIO(b"def predict(a, b):\n    return {'sum': a + b}\n"))
    run_id = pc.start_run(RunRequest(command=("train.py",), title="first"))
    deadline = time.monotonic() + 60
    while not (run := pc.get_run(run_id)).finished:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert run.status == "Succeeded"
    assert run.output_commit_id
    assert run.output_commit_id != run.commit_id
    assert "trained" in pc.run_log(run_id).stdout
    assert pc.list_runs()[0].id == run_id
    paths = [f.path for f in pc.list_files(run.output_commit_id)]
    assert "results/m.json" in paths
    pc.publish_endpoint(pc.head_commit(), "model.py", "predict")
    assert pc.endpoint_state()["isPublished"] is True
    out = pc.call_endpoint([2, 3])
    assert out.result == {"sum": 5}
    assert len(out.request_id) == 16
    pc.unpublish_endpoint()
    assert pc.endpoint_state()["isPublished"] is False


def test_search_and_version(alice: DominoClient) -> None:
    assert alice.version() >= "4.1"
    hits = alice.search("demo", area="project")
    assert any(h.area == "project" and "demo" in h.display_text for h in hits)
