"""The wire, route by route, with raw requests: auth, errors, Range, stats, concurrency."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from .conftest import ALICE, BOB, Srv


def raw(srv: Srv, method: str, target: str, body: bytes | None = None,
        key: str | None = ALICE) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """Send a request target exactly as given (requests would normalise `..`)."""
    parts = urlsplit(srv.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    headers = {"X-Domino-Api-Key": key} if key else {}
    try:
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def assert_json_error(resp: requests.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    message: str = resp.json()["message"]
    assert message
    return message


def head_files(s: requests.Session, srv: Srv, project: str = "alice/demo") -> dict[str, Any]:
    commits = s.get(f"{srv.project_url(project)}/commits").json()
    listing = s.get(f"{srv.project_url(project)}/files/{commits[0]}/").json()
    return {f["path"]: f for f in listing["data"]}


def test_version_with_and_without_key(srv: Srv) -> None:
    plain = requests.get(f"{srv.url}/version", timeout=5).json()
    keyed = requests.get(f"{srv.url}/version", headers={"X-Domino-Api-Key": ALICE}).json()
    assert plain["version"] == keyed["version"] == "5.10.0"
    assert {"buildId", "commitId", "timestamp"} <= set(plain)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-Domino-Api-Key": "nope"}, 401),
        ({"Authorization": "Basic !!!notbase64"}, 401),
        ({"X-Domino-Api-Key": BOB}, 403),
        ({"Authorization": "Basic " + base64.b64encode(f":{BOB}".encode()).decode()}, 403),
        ({"Authorization": "Basic " + base64.b64encode(f"anyone:{ALICE}".encode()).decode()}, 200),
        ({"Authorization": f"Bearer {ALICE}"}, 200),
        ({"Authorization": f"Bearer {BOB}"}, 403),
    ],
)
def test_auth(srv: Srv, headers: dict[str, str], status: int) -> None:
    r = requests.get(f"{srv.project_url()}/commits", headers=headers, timeout=5)
    if status == 200:
        assert r.status_code == 200
        assert isinstance(r.json(), list)
    else:
        assert_json_error(r, status)


def test_unknown_owner_or_project_is_404(alice: requests.Session, srv: Srv) -> None:
    assert_json_error(alice.get(f"{srv.url}/v1/projects/alice/nothing/commits"), 404)
    assert_json_error(alice.get(f"{srv.url}/v1/projects/nobody/demo/commits"), 404)


def test_bob_sees_his_own_project_only(srv: Srv) -> None:
    with srv.session(BOB) as bob:
        assert bob.get(f"{srv.project_url('bob/private')}/commits").status_code == 200
    with srv.session(ALICE) as s:
        assert_json_error(s.get(f"{srv.project_url('bob/private')}/commits"), 403)


@pytest.mark.parametrize(
    "target",
    [
        "/v1/projects/alice/demo/a/../b.txt",
        "/v1/projects/alice/demo/./b.txt",
        "/v1/projects/alice/demo/a/%2e%2e/b.txt",
        "/v1/projects/alice/demo/bad%00name.txt",
        "/v1/projects/alice/demo/a%2F..%2Fb",
        "/v1/projects/alice/demo/%FF%FE",
        "/v1/projects/alice/demo//",
    ],
)
def test_bad_upload_paths_are_400(srv: Srv, target: str) -> None:
    status, headers, body = raw(srv, "PUT", target, b"x")
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["message"]


def test_listing_tolerates_slashes(alice: requests.Session, srv: Srv) -> None:
    alice.put(f"{srv.project_url()}/slashes/f.txt", data=b"x").raise_for_status()
    commit = alice.get(f"{srv.project_url()}/commits").json()[0]
    for target in (f"files/{commit}//slashes/", f"files/{commit}/slashes", f"files/{commit}///"):
        status, _, body = raw(srv, "GET", f"/v1/projects/alice/demo/{target}")
        assert status == 200
        assert "slashes/f.txt" in [f["path"] for f in json.loads(body)["data"]]
    head = alice.get(f"{srv.project_url()}/files/head/slashes").json()["data"]
    assert [f["path"] for f in head] == ["slashes/f.txt"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/files/" + "0" * 40 + "/", {}, 404),
        ("GET", "/blobs/" + "0" * 40, {}, 404),
        ("GET", "/blobs/not-a-key", {}, 404),
        ("GET", "/runs/" + "0" * 24, {}, 404),
        ("GET", "/run/" + "0" * 24 + "/stdout", {}, 404),
        ("POST", "/runs", {"data": b"{not json"}, 400),
        ("POST", "/runs", {"json": {}}, 400),
        ("POST", "/runs", {"json": {"command": []}}, 400),
        ("POST", "/runs", {"json": {"command": "main.py"}}, 400),
        ("POST", "/runs", {"json": {"command": ["a", 1]}}, 400),
        ("POST", "/runs", {"json": {"command": ["a"], "isDirect": "yes"}}, 400),
        ("POST", "/runs", {"json": {"command": ["a"], "commitId": "f" * 40}}, 404),
        ("GET", "/some/file.txt", {}, 405),
        ("POST", "/commits", {}, 405),
        ("PATCH", "/commits", {}, 405),
        ("DELETE", "/does/not/exist.txt", {}, 404),
    ],
)
def test_error_classes(
    alice: requests.Session, srv: Srv, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    assert_json_error(alice.request(method, srv.project_url() + path, **kwargs), status)


def test_unknown_route_and_top_level_errors_are_json(alice: requests.Session, srv: Srv) -> None:
    assert_json_error(alice.get(f"{srv.url}/nothing/here"), 404)
    assert_json_error(alice.post(f"{srv.url}/version"), 405)
    assert_json_error(alice.get(f"{srv.url}/v1/search"), 400)
    assert_json_error(alice.get(f"{srv.url}/v1/search", params={"query": "x", "area": "bad"}), 400)
    stdout = alice.get(f"{srv.project_url()}/run/x/stdout", params={"previewNumberOfLines": "-1"})
    assert_json_error(stdout, 404)


def test_file_and_folder_may_not_share_a_name(alice: requests.Session, srv: Srv) -> None:
    alice.put(f"{srv.project_url()}/clash/inner.txt", data=b"1").raise_for_status()
    assert "folder" in assert_json_error(alice.put(f"{srv.project_url()}/clash", data=b"2"), 400)
    deeper = alice.put(f"{srv.project_url()}/clash/inner.txt/deeper", data=b"3")
    assert "is a file" in assert_json_error(deeper, 400)
    assert head_files(alice, srv)["clash/inner.txt"]["size"] == 1


def test_put_under_any_first_segment(alice: requests.Session, srv: Srv) -> None:
    r = alice.put(f"{srv.project_url()}/runs/notes.txt", data=b"a file, not a run")
    assert r.status_code == 201
    r = alice.put(f"{srv.project_url()}/files/plus+sign.txt", data=b"plus")
    assert r.json()["path"] == "files/plus+sign.txt"
    files = head_files(alice, srv)
    assert {"runs/notes.txt", "files/plus+sign.txt"} <= set(files)


def test_overwrite_creates_new_commit(alice: requests.Session, srv: Srv) -> None:
    url = f"{srv.project_url()}/over.txt"
    first = alice.put(url, data=b"one").json()
    before = alice.get(f"{srv.project_url()}/commits").json()
    second = alice.put(url, data=b"two!").json()
    after = alice.get(f"{srv.project_url()}/commits").json()
    assert after[1:] == before
    assert first["key"] != second["key"]
    assert head_files(alice, srv)["over.txt"]["size"] == 4
    # the old version is still readable through its old commit
    old = alice.get(f"{srv.project_url()}/files/{before[0]}/over.txt").json()["data"][0]
    assert alice.get(old["url"]).content == b"one"


def test_range_requests(alice: requests.Session, srv: Srv) -> None:
    data = bytes(range(256)) * 40
    key = alice.put(f"{srv.project_url()}/range.bin", data=data).json()["key"]
    r = alice.get(f"{srv.project_url()}/blobs/{key}", headers={"Range": "bytes=100-299"})
    assert r.status_code == 206
    assert r.content == data[100:300]
    assert r.headers["Content-Range"] == f"bytes 100-299/{len(data)}"
    full = alice.get(f"{srv.project_url()}/blobs/{key}")
    assert full.headers["Content-Type"] == "application/octet-stream"
    assert full.content == data


def test_blob_of_another_project_is_404(srv: Srv) -> None:
    with srv.session(BOB) as bob:
        key = bob.put(f"{srv.project_url('bob/private')}/secret.txt", data=b"bob only").json()[
            "key"
        ]
    with srv.session(ALICE) as s:
        assert_json_error(s.get(f"{srv.project_url()}/blobs/{key}"), 404)


def test_twenty_concurrent_uploads_all_land(alice: requests.Session, srv: Srv) -> None:
    errors: list[BaseException] = []

    def put(i: int) -> None:
        try:
            with srv.session() as s:
                s.put(
                    f"{srv.project_url()}/concurrent/f{i:02d}.txt", data=b"x" * i
                ).raise_for_status()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    files = head_files(alice, srv)
    assert {f"concurrent/f{i:02d}.txt" for i in range(20)} <= set(files)
    assert files["concurrent/f07.txt"]["size"] == 7


def test_a_client_gone_mid_upload_leaves_no_trace(alice: requests.Session, srv: Srv) -> None:
    parts = urlsplit(srv.url)
    before = len(srv.output)
    with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=10) as sock:
        sock.sendall(
            f"PUT /v1/projects/alice/demo/gone/half.bin HTTP/1.1\r\nHost: x\r\n"
            f"X-Domino-Api-Key: {ALICE}\r\nContent-Length: 1048576\r\n\r\n".encode()
            + b"a" * 300_000
        )
    # The server goes on serving, committed nothing, kept no temporary file, logged no traceback.
    assert alice.put(f"{srv.project_url()}/gone/after.bin", data=b"ok").status_code == 201
    files = head_files(alice, srv)
    assert "gone/after.bin" in files
    assert "gone/half.bin" not in files
    assert not list((srv.data_dir / "tmp").glob("upload-*"))
    assert "Traceback" not in "".join(srv.output[before:])


def test_delete_file_and_folder(alice: requests.Session, srv: Srv) -> None:
    for name in ("gone/a.txt", "gone/b/c.txt", "kept.txt"):
        alice.put(f"{srv.project_url()}/{name}", data=b"x").raise_for_status()
    assert alice.delete(f"{srv.project_url()}/kept.txt").status_code == 200
    assert alice.delete(f"{srv.project_url()}/gone").status_code == 200
    files = head_files(alice, srv)
    assert not any(p.startswith("gone/") or p == "kept.txt" for p in files)
    assert_json_error(alice.delete(f"{srv.project_url()}/gone"), 404)


def test_stats_count_requests(alice: requests.Session, srv: Srv) -> None:
    assert requests.post(f"{srv.url}/_stats/reset", timeout=5).status_code == 200
    key = alice.put(f"{srv.project_url()}/stats.txt", data=b"12345").json()["key"]
    alice.get(f"{srv.project_url()}/blobs/{key}")
    alice.get(f"{srv.project_url()}/commits")
    requests.get(f"{srv.url}/version", timeout=5)
    snapshot = requests.get(f"{srv.url}/_stats", timeout=5).json()
    counts = snapshot["requests"]
    assert counts["PUT upload"] == 1
    assert counts["GET blobs"] == 1
    assert counts["GET commits"] == 1
    assert counts["GET version"] == 1
    assert snapshot["bytes_received"] >= 5
    assert snapshot["bytes_sent"] >= 5


def test_v4_lookup_and_content_route(alice: requests.Session, srv: Srv) -> None:
    alice.put(f"{srv.project_url()}/v4/data.txt", data=b"via v4").raise_for_status()
    found = alice.get(
        f"{srv.url}/v4/gateway/projects/findProjectByOwnerAndName",
        params={"ownerName": "alice", "projectName": "demo"},
    ).json()
    assert len(found["id"]) == 24
    commit = alice.get(f"{srv.project_url()}/commits").json()[0]
    url = f"{srv.url}/api/projects/v1/projects/{found['id']}/files/{commit}//v4/data.txt/content"
    assert alice.get(url).content == b"via v4"


def test_no_v1_blobs_drops_the_blob_route_only(start_server: Callable[..., Srv]) -> None:
    srv = start_server("--no-v1-blobs")
    with srv.session() as alice:
        data = bytes(range(256)) * 40
        put = alice.put(f"{srv.project_url()}/d/f.bin", data=data).json()
        commit = alice.get(f"{srv.project_url()}/commits").json()[0]
        assert head_files(alice, srv)["d/f.bin"]["key"] == put["key"]
        srv.reset_stats()
        gone = alice.get(f"{srv.project_url()}/blobs/{put['key']}")
        # Just as a route the server never had: nothing tells it from a deployment without it.
        assert assert_json_error(gone, 404) == f"no such route: GET {urlsplit(gone.url).path}"
        pid = alice.get(
            f"{srv.url}/v4/gateway/projects/findProjectByOwnerAndName",
            params={"ownerName": "alice", "projectName": "demo"},
        ).json()["id"]
        url = f"{srv.url}/api/projects/v1/projects/{pid}/files/{commit}/d/f.bin/content"
        assert alice.get(url).content == data
        part = alice.get(url, headers={"Range": "bytes=100-199"})
        assert (part.status_code, part.content) == (206, data[100:200])
        counts = srv.stats()["requests"]
        assert counts == {"GET blobs": 1, "GET v4": 1, "GET content": 2, "POST stats": 1}


def test_search_areas(srv: Srv) -> None:
    with srv.session() as s:
        s.put(
            f"{srv.project_url('alice/search')}/docs/needle-notes.md", data=b"nothing"
        ).raise_for_status()
        s.put(
            f"{srv.project_url('alice/search')}/body.txt", data=b"a HAYSTACK line"
        ).raise_for_status()
        files = s.get(f"{srv.url}/v1/search", params={"query": "haystack", "area": "file"}).json()
        assert files["objectType"] == "list"
        assert [h["path"] for h in files["data"] if h["projectId"]] == ["body.txt"]
        named = s.get(f"{srv.url}/v1/search", params={"query": "needle", "area": "file"}).json()
        assert "docs/needle-notes.md" in [h["displayText"] for h in named["data"]]
        projects = s.get(f"{srv.url}/v1/search", params={"query": "searc", "area": "project"})
        hit = projects.json()["data"][0]
        assert hit["displayText"] == "alice/search"
        assert set(hit) == {"id", "projectId", "displayText", "ownerId", "path", "link", "area"}
        comments = s.get(f"{srv.url}/v1/search", params={"query": "x", "area": "comment"}).json()
        assert comments["data"] == []
    with srv.session(BOB) as bob:  # bob owns no project with that text
        r = bob.get(f"{srv.url}/v1/search", params={"query": "haystack", "area": "file"})
        assert r.json()["data"] == []


def test_endpoint_errors_and_worker_survival(srv: Srv) -> None:
    code = (
        b"import os\n"
        b"calls = []\n"
        b"def f(x):\n"
        b"    calls.append(x)\n"
        b"    if x == 'boom':\n"
        b"        raise ValueError('bad input boom')\n"
        b"    if x == 'die':\n"
        b"        os._exit(1)\n"
        b"    print('user output must not break the protocol')\n"
        b"    return len(calls)\n"
    )
    ep = f"{srv.url}/v1/alice/search/endpoint"
    with srv.session() as s:
        s.delete(ep).raise_for_status()
        assert_json_error(s.post(ep, json={"parameters": [1]}), 404)
        s.put(f"{srv.project_url('alice/search')}/ep.py", data=code).raise_for_status()
        bad = s.post(
            f"{ep}/publishRelease", json={"bindingDefinition": {"file": "no.py", "function": "f"}}
        )
        assert_json_error(bad, 400)
        ok = s.post(
            f"{ep}/publishRelease",
            json={"commitId": None, "bindingDefinition": {"file": "ep.py", "function": "f"}},
        )
        assert ok.status_code == 200
        first = s.post(ep, json={"parameters": ["a"]})
        assert first.json()["result"] == 1
        assert len(first.json()["requestId"]) == 16
        assert first.json()["requestId"].isupper()
        assert first.json()["release"]["file"] == "ep.py"
        for header in (
            "Domino-Deserialization-Time",
            "Domino-User-Code-Time",
            "Domino-Serialization-Time",
        ):
            assert int(first.headers[header]) >= 0
        assert "bad input boom" in assert_json_error(s.post(ep, json={"parameters": ["boom"]}), 500)
        assert (
            s.post(ep, json={"parameters": ["b"]}).json()["result"] == 3
        )  # same worker, loaded once
        assert_json_error(s.post(ep, json={"parameters": ["die"]}), 500)
        assert s.post(ep, json={"parameters": ["c"]}).json()["result"] == 1  # a fresh worker
        assert_json_error(s.post(ep, json={"params": []}), 400)
        assert s.delete(ep).status_code == 200
        assert s.get(f"{ep}/state").json()["isPublished"] is False


def test_large_streamed_upload(alice: requests.Session, srv: Srv) -> None:
    chunk = bytes(range(256)) * 4096  # 1 MiB
    count = 12

    def body() -> Iterator[bytes]:  # chunked transfer: the server cannot know the size ahead
        for _ in range(count):
            yield chunk

    r = alice.put(f"{srv.project_url()}/big/streamed.bin", data=body())
    assert r.status_code == 201
    expected = hashlib.sha1(chunk * count).hexdigest()
    assert r.json()["key"] == expected
    assert r.json()["size"] == len(chunk) * count
    got = alice.get(
        r.json()["url"], headers={"Range": f"bytes={len(chunk) * 5}-{len(chunk) * 5 + 9}"}
    )
    assert got.content == chunk[:10]
