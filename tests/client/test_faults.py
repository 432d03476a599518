"""The client against a real loopback server that misbehaves: retries, Retry-After, mapping."""

from __future__ import annotations

import errno
import io
import threading
import time

import pytest

from dominofs import errors
from dominofs.api import DominoClient
from dominofs.fastget import FastGet, FastResponse
from dominofs.models import RunRequest
from dominofs.plainhttp import PlainHTTP

from .hostile import Answer, hostile_server

KEY = "hostile-secret-key-42"
COMMITS = ["a" * 40]


def _client(url: str, **kw: float) -> DominoClient:
    opts = {"backoff": 0.01, "max_backoff": 0.05, "read_timeout": 2.0, **kw}
    return DominoClient(url, KEY, **opts)  # type: ignore[arg-type]


def test_get_retried_through_503_and_429_honouring_retry_after() -> None:
    plan = [
        Answer(503, {"message": "busy"}, {"Retry-After": "0.3"}),
        Answer(429, {"message": "slow down"}, {"Retry-After": "0"}),
        Answer(200, COMMITS),
    ]
    with hostile_server(plan) as srv, _client(srv.url) as c:
        started = time.monotonic()
        assert c.project("alice/demo").commits() == COMMITS
        assert time.monotonic() - started >= 0.3  # Retry-After was waited for
        assert len(srv.seen) == 3


def test_retries_give_up_with_server_error() -> None:
    plan = [Answer(500, {"message": "boom"})] * 5
    with hostile_server(plan) as srv, _client(srv.url, retries=2) as c:
        with pytest.raises(errors.ServerError, match="boom") as info:
            c.project("alice/demo").commits()
        assert len(srv.seen) == 3
        assert info.value.errno == errno.EIO
        assert KEY not in str(info.value)


def test_starting_a_run_is_never_retried() -> None:
    with hostile_server([Answer(503, {"message": "busy"}), Answer(200, {"runId": "x"})]) as srv:
        with _client(srv.url) as c, pytest.raises(errors.ServerError):
            c.project("alice/demo").start_run(RunRequest(command=("main.py",)))
        assert [s[0] for s in srv.seen] == ["POST"]


def test_upload_retry_resends_the_same_bytes() -> None:
    ok = {"path": "a.txt", "size": 5, "key": "b" * 40, "lastModified": 1}
    with hostile_server([Answer(502), Answer(201, ok)]) as srv, _client(srv.url) as c:
        result = c.project("alice/demo").upload("a.txt", io.BytesIO(b"hello"), size=5)
        assert result.key == "b" * 40
        assert [s[3] for s in srv.seen] == [b"hello", b"hello"]


def test_upload_after_the_server_closed_an_idle_connection_opens_a_new_one() -> None:
    # Servers close idle keep-alive connections; the next upload must not be sent into the
    # closed one (that would cost a failed attempt, and with no retries left, an error).
    ok = {"path": "a.txt", "size": 1, "key": "b" * 40, "lastModified": 1}
    plan = [Answer(201, ok, hang_up=True), Answer(201, ok)]
    with hostile_server(plan) as srv, _client(srv.url, retries=0) as c:
        pc = c.project("alice/demo")
        pc.upload("a.txt", io.BytesIO(b"x"), size=1)
        assert srv.hung_up.wait(5)
        assert pc.upload("b.txt", io.BytesIO(b"y"), size=1).key == "b" * 40
        assert [s[3] for s in srv.seen] == [b"x", b"y"]
        assert srv.connections == 2


def test_blobs_read_to_their_end_share_one_connection() -> None:
    plan = [Answer(200, b"x" * 5000), Answer(200, b"y" * 5000), Answer(200, COMMITS)]
    with hostile_server(plan) as srv, _client(srv.url) as c:
        pc = c.project("alice/demo")
        for byte in (b"x", b"y"):
            stream = pc.iter_blob("a" * 40)
            buf, got = bytearray(1 << 16), b""
            while n := stream.readinto(buf):
                got += bytes(buf[:n])
            assert got == byte * 5000
        assert srv.connections == 1
        # Blobs go over the plain-http keep-alive path; JSON calls through requests' pool.
        assert pc.commits() == COMMITS
        assert srv.connections == 2


def test_an_answer_finished_on_another_thread_frees_the_asking_threads_connection() -> None:
    # A libfuse worker keeps its thread state now, so a keep-alive connection's bookkeeping
    # must follow the thread that asked, whichever thread reads the answer to its end.
    body = b"z" * 5000
    with hostile_server([Answer(200, body)] * 4) as srv:
        fg = FastGet(srv.url, {}, connect_timeout=5, read_timeout=5)
        first = fg.get("/a", {})  # this thread's connection, its answer not read yet
        asked: list[FastResponse] = []
        t = threading.Thread(target=lambda: asked.append(fg.get("/b", {})))
        t.start()
        t.join(10)
        other = asked[0]
        assert other.read(len(body)) == body
        other.release_conn()  # finished here, asked there
        third = fg.get("/c", {})  # `first` still holds this thread's connection
        assert third.read(len(body)) == body
        third.release_conn()
        assert first.read(len(body)) == body
        first.release_conn()
        fourth = fg.get("/d", {})  # this thread's connection again
        assert fourth.read(len(body)) == body
        fourth.release_conn()
        assert srv.connections == 3
        fg.close()


def test_an_upload_while_this_threads_blob_is_open_gets_a_connection_of_its_own() -> None:
    # The thread's kept connection is still reading the blob: a PUT sent into it would
    # find the blob's answer where its own should be.
    body = b"q" * 5000
    ok = {"path": "b.txt", "size": 1, "key": "b" * 40, "lastModified": 1}
    with hostile_server([Answer(200, body), Answer(201, ok)]) as srv:
        plain = PlainHTTP(srv.url, {}, connect_timeout=5, read_timeout=5)
        stream = plain.open("/a", {})
        answer = plain.send("PUT", "/b", b"x", {}, max_body=1 << 20)
        assert answer.status == 201
        assert stream.read(len(body)) == body
        stream.release_conn()
        assert srv.connections == 2
        plain.close()


def test_a_chunked_blob_is_read_through_http_client() -> None:
    # Blob GETs parse the answer's head themselves; one not framed by Content-Length is asked
    # for again over http.client, which reads chunks.
    plan = [Answer(200, b"c" * 5000, chunked=True), Answer(200, b"c" * 5000, chunked=True)]
    with hostile_server(plan) as srv, _client(srv.url) as c:
        assert b"".join(c.project("alice/demo").iter_blob("a" * 40)) == b"c" * 5000
        assert len(srv.seen) == 2


def test_dropped_connection_and_stall_are_unreachable() -> None:
    plan = [Answer(drop=True)] * 4
    with hostile_server(plan) as srv, _client(srv.url, retries=1) as c:
        with pytest.raises(errors.Unreachable):
            c.project("alice/demo").commits()
    with hostile_server([Answer(200, COMMITS, stall=3)]) as srv:
        with _client(srv.url, retries=0, read_timeout=0.5) as c:
            started = time.monotonic()
            with pytest.raises(errors.Unreachable, match="cannot reach"):
                c.project("alice/demo").commits()
            assert time.monotonic() - started < 2.5


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, errors.BadRequest), (401, errors.AuthError), (403, errors.Forbidden),
     (404, errors.NotFound), (409, errors.Conflict)],
)  # fmt: skip
def test_status_mapping(status: int, cls: type[errors.DominoError]) -> None:
    with hostile_server([Answer(status, {"message": "why"})]) as srv, _client(srv.url) as c:
        with pytest.raises(cls) as info:
            c.project("alice/demo").commits()
        msg = str(info.value)
        assert srv.url in msg
        assert "alice/demo" in msg
        assert "\n" not in msg
        assert KEY not in msg
        assert len(srv.seen) == 1  # a 4xx is not retried


def test_non_json_and_wrong_shapes_are_server_errors() -> None:
    plan = [Answer(200, b"<html>oops</html>"), Answer(200, {"not": "a list"})]
    with hostile_server(plan) as srv, _client(srv.url) as c:
        p = c.project("alice/demo")
        with pytest.raises(errors.ServerError, match="not JSON"):
            p.commits()
        with pytest.raises(errors.ServerError, match="not a list"):
            p.commits()


def test_hostile_listing_entries_are_skipped() -> None:
    good = {"path": "ok/file.csv", "size": 3, "key": "c" * 40, "lastModified": 5}
    data = [
        good,
        {"path": "../../etc/passwd", "size": 1, "key": "d" * 40},
        {"path": "/abs/../x", "size": 1, "key": "d" * 40},
        {"path": "nul\0byte", "size": 1, "key": "d" * 40},
        {"path": "neg", "size": -1, "key": "d" * 40},
        {"path": "huge", "size": 1 << 60, "key": "d" * 40},
        {"path": "nokey", "size": 1},
        {"path": "slashkey", "size": 1, "key": "../x"},
        {"path": "ok/file.csv", "size": 9, "key": "e" * 40},
        {"path": "ok", "size": 1, "key": "f" * 40},
        "not an object",
        {"path": "y" * 300, "size": 1, "key": "d" * 40},
    ]
    with hostile_server([Answer(200, {"data": data})]) as srv, _client(srv.url) as c:
        files = c.project("alice/demo").list_files("a" * 40)
    assert [(f.path, f.size, f.key) for f in files] == [("ok/file.csv", 3, "c" * 40)]


def test_blob_stream_falls_back_when_range_is_ignored() -> None:
    with hostile_server([Answer(200, b"0123456789")]) as srv, _client(srv.url) as c:
        data = b"".join(c.project("alice/demo").iter_blob("a" * 40, offset=4, chunk_size=3))
        assert data == b"456789"
        assert srv.seen[0][2].get("Range") == "bytes=4-"


def test_blob_readinto_skips_when_range_is_ignored() -> None:
    with hostile_server([Answer(200, b"0123456789")]) as srv, _client(srv.url) as c:
        stream = c.project("alice/demo").iter_blob("a" * 40, offset=4)
        buf = bytearray(4)
        got = b""
        while n := stream.readinto(buf):
            got += buf[:n]
        assert got == b"456789"


@pytest.mark.parametrize("how", ["iterate", "readinto"])
def test_blob_cut_short_is_a_server_error(how: str) -> None:
    with hostile_server([Answer(200, b"x" * 1000, missing=500)]) as srv, _client(srv.url) as c:
        stream = c.project("alice/demo").iter_blob("a" * 40)
        buf = bytearray(4096)

        def drain() -> None:
            if how == "iterate":
                b"".join(stream)
            while stream.readinto(buf):
                pass

        with pytest.raises(errors.ServerError, match="broke off"):
            drain()


def test_key_is_sent_in_header_only() -> None:
    with hostile_server([Answer(200, COMMITS)]) as srv, _client(srv.url) as c:
        c.project("alice/demo").commits()
        _method, path, headers, _ = srv.seen[0]
        assert headers["X-Domino-Api-Key"] == KEY
        assert KEY not in path
        assert "dominofs" in repr(c).lower() or KEY not in repr(c)
