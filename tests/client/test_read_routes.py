"""Which route reads a file: the v1 blob route, else the content route by path, found out once.

Against the real server started with --no-v1-blobs (a deployment that has dropped the route),
and against the scripted hostile server for answers the local server never gives.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dominofs import errors
from dominofs.api import DominoClient, ProjectClient

from ..conftest import ALICE_KEY, LocalServer
from .hostile import Answer, Hostile, hostile_server

KEY = "hostile-secret-key-42"
COMMIT = "c" * 40
LISTING = {"data": [{"path": "d/f.txt", "size": 10, "key": "a" * 40, "lastModified": 1}]}
FOUND = {"id": "0123456789abcdef01234567", "name": "demo", "ownerUsername": "alice"}


@pytest.fixture
def content_server(make_server: object) -> LocalServer:
    srv: LocalServer = make_server("--no-v1-blobs", name="no-v1-blobs")  # type: ignore[operator]
    return srv


@pytest.fixture
def alice(content_server: LocalServer) -> Iterator[DominoClient]:
    with DominoClient(content_server.url, ALICE_KEY, read_timeout=10) as client:
        yield client


def test_the_missing_blob_route_is_found_out_once_per_server(
    content_server: LocalServer, alice: DominoClient
) -> None:
    pc = alice.project("alice/demo")
    files = {f"f{i}.txt": f"file {i}".encode() for i in range(3)}
    for path, data in files.items():
        pc.upload(path, io.BytesIO(data), size=len(data))
    head = pc.head_commit()
    keys = {f.path: f.key for f in pc.list_files(head)}
    content_server.reset_stats()
    for path, data in files.items():
        assert b"".join(pc.iter_blob(keys[path])) == data
    again = alice.project("alice/demo")  # another project client of the same server
    again.list_files(head)
    assert b"".join(again.iter_blob(keys["f0.txt"])) == files["f0.txt"]
    counts = content_server.stats()["requests"]
    assert isinstance(counts, dict)
    assert counts.get("GET blobs") == 1  # the first read only
    assert counts.get("GET content") == 4
    assert counts.get("GET v4") == 2  # the project id, once per project client
    assert alice.blob_route_gone
    with pytest.raises(errors.NotFound, match="no listing"):
        pc.iter_blob("0" * 40)


def test_a_listing_loaded_elsewhere_is_learned_and_old_commits_stay_readable(
    content_server: LocalServer, alice: DominoClient
) -> None:
    pc = alice.project("alice/demo")
    pc.upload("v.txt", io.BytesIO(b"version one"))
    old_commit = pc.head_commit()
    old = pc.list_files(old_commit)
    pc.upload("v.txt", io.BytesIO(b"version two"))
    pc.list_files(pc.head_commit())
    old_key = next(f.key for f in old if f.path == "v.txt")
    assert b"".join(pc.iter_blob(old_key)) == b"version one"  # at the commit that listed it
    with DominoClient(content_server.url, ALICE_KEY) as fresh_client:
        fresh = fresh_client.project("alice/demo")
        with pytest.raises(errors.NotFound):
            fresh.iter_blob(old_key)  # never listed: the blob route's 404 is all it has
        fresh.learn(old_commit, old)  # as a mount does with the listing it saved
        assert b"".join(fresh.iter_blob(old_key, offset=8)) == b"one"


def test_the_blob_route_serves_alone_where_it_exists(server: LocalServer) -> None:
    with DominoClient(server.url, ALICE_KEY) as client:
        pc = client.project("alice/demo")
        pc.upload("b.txt", io.BytesIO(b"bytes"))
        (f,) = pc.list_files(pc.head_commit(), "b.txt")
        server.reset_stats()
        assert b"".join(pc.iter_blob(f.key)) == b"bytes"
        with pytest.raises(errors.NotFound):
            pc.iter_blob("0" * 40)
        assert server.requests_count("GET blobs") == 2
        assert server.requests_count("GET content") == server.requests_count("GET v4") == 0
        assert not client.blob_route_gone


def _client(url: str) -> DominoClient:
    return DominoClient(url, KEY, backoff=0.01, read_timeout=2.0)


@contextmanager
def listed(plan: list[Answer]) -> Iterator[tuple[Hostile, DominoClient, ProjectClient]]:
    """A client of a hostile server that has listed LISTING (its first answer), then `plan`."""
    with hostile_server([Answer(200, LISTING), *plan]) as srv, _client(srv.url) as c:
        pc = c.project("alice/demo")
        pc.list_files(COMMIT)
        yield srv, c, pc


def test_a_404_on_both_routes_is_not_found_and_changes_nothing() -> None:
    plan = [
        Answer(404, {"message": "blob not found"}),
        Answer(200, FOUND),
        Answer(404, {"message": "file not found"}),
        Answer(200, b"0123456789"),
    ]
    with listed(plan) as (srv, c, pc):
        with pytest.raises(errors.NotFound, match="blob not found"):
            pc.iter_blob("a" * 40)
        assert not c.blob_route_gone
        assert b"".join(pc.iter_blob("a" * 40)) == b"0123456789"  # the blob route again
        paths = [seen[1] for seen in srv.seen]
    assert paths[1] == paths[4] == f"/v1/projects/alice/demo/blobs/{'a' * 40}"
    assert paths[2].startswith("/v4/gateway/projects/findProjectByOwnerAndName?")
    assert paths[3] == f"/api/projects/v1/projects/{FOUND['id']}/files/{COMMIT}/d/f.txt/content"


def test_a_content_route_that_ignores_range_is_skipped_and_capped_locally() -> None:
    plan = [
        Answer(404, {"message": "no such route"}),
        Answer(200, FOUND),
        Answer(200, b"0123456789"),
        Answer(200, b"0123456789"),
    ]
    with listed(plan) as (srv, _c, pc):
        assert b"".join(pc.iter_blob("a" * 40, offset=2, length=3)) == b"234"
        stream, buf = pc.iter_blob("a" * 40, offset=6, length=100), bytearray(2)
        got = b""
        while n := stream.readinto(buf):
            got += buf[:n]
        assert got == b"6789"
        ranges = [seen[2].get("Range") for seen in srv.seen]
    assert ranges[1:] == ["bytes=2-4", None, "bytes=2-4", "bytes=6-105"]
    assert len(srv.seen) == 5  # after the first read, straight to the content route


def test_a_project_lookup_without_an_id_is_a_server_error() -> None:
    with listed([Answer(404, {"message": "no such route"}), Answer(200, {})]) as (_srv, c, pc):
        with pytest.raises(errors.ServerError, match="no project id"):
            pc.iter_blob("a" * 40)
        assert not c.blob_route_gone


def test_commits_as_objects_with_an_id_are_accepted() -> None:
    plan = [
        Answer(200, [{"id": "b" * 40, "name": "new"}, {"id": "a" * 40}]),
        Answer(200, ["b" * 40, {"id": 7}]),
    ]
    with hostile_server(plan) as srv, _client(srv.url) as c:
        pc = c.project("alice/demo")
        assert pc.commits() == ["b" * 40, "a" * 40]
        with pytest.raises(errors.ServerError, match="not a list of commit ids"):
            pc.commits()
