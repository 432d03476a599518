"""python-domino 2.2.0, unmodified, against the local server: every v1 call it makes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from domino import Domino  # type: ignore[import-untyped]
from domino.exceptions import RunFailedException  # type: ignore[import-untyped]

from .conftest import ALICE, Srv


def _close(d: Domino) -> None:
    d.request_manager.request_session.close()


@pytest.fixture
def dom(srv: Srv) -> Iterator[Domino]:
    d = Domino("alice/demo", api_key=ALICE, host=srv.url)
    yield d
    _close(d)


@pytest.fixture
def work(srv: Srv) -> Iterator[Domino]:
    """A client on alice/work, where runs happen (so they do not disturb alice/demo)."""
    d = Domino("alice/work", api_key=ALICE, host=srv.url)
    yield d
    _close(d)


def _by_path(listing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in listing["data"]}


def test_construction_reads_version(dom: Domino) -> None:
    assert dom._version == "5.10.0"


def test_construction_with_bad_key_fails(srv: Srv) -> None:
    d = Domino("alice/demo", api_key="wrong", host=srv.url)  # /version needs no key
    with pytest.raises(requests.HTTPError) as info:
        d.commits_list()
    _close(d)
    assert info.value.response.status_code == 401


def test_commits_list_and_root_listing(dom: Domino) -> None:
    commits = dom.commits_list()
    assert commits
    assert all(isinstance(c, str) and len(c) == 40 for c in commits)
    files = _by_path(dom.files_list(commits[-1]))  # default path "/" -> ".../files/<c>//"
    assert {".dominoignore", "README.md"} <= set(files)
    ignore = dom.blobs_get(files[".dominoignore"]["key"]).read().decode()
    assert "ignore certain files" in ignore


def test_upload_nested_spaces_and_non_ascii(dom: Domino) -> None:
    names = ["new/deep/folder/a.txt", "with space/b c.txt", "ünï/cødé ✓.txt"]
    for i, name in enumerate(names):
        resp = dom.files_upload(name, f"content {i}".encode())
        assert resp.status_code == 201
        assert resp.json()["path"] == name
    head = dom.commits_list()[0]
    files = _by_path(dom.files_list(head))
    for i, name in enumerate(names):
        assert dom.blobs_get(files[name]["key"]).read() == f"content {i}".encode()


def test_files_list_folder_and_single_file(dom: Domino) -> None:
    dom.files_upload("/results/x.csv", b"1,2\n")
    dom.files_upload("/results/sub/y.csv", b"3,4\n")
    dom.files_upload("/resultsother.txt", b"not in the folder")
    head = dom.commits_list()[0]
    folder = [f["path"] for f in dom.files_list(head, "results/")["data"]]
    assert folder == ["results/sub/y.csv", "results/x.csv"]
    single = dom.files_list(head, "/results/x.csv")["data"]
    assert [f["path"] for f in single] == ["results/x.csv"]
    assert single[0]["size"] == 4


def test_upload_response_matches_listing(dom: Domino) -> None:
    resp = dom.files_upload("listing/check.bin", b"\x00\x01binary")
    body = resp.json()
    assert resp.headers["Location"] == body["url"]
    entry = _by_path(dom.files_list(dom.commits_list()[0], "listing"))["listing/check.bin"]
    assert entry == body


def test_runs_start_status_list_stdout(work: Domino) -> None:
    work.files_upload("hello.py", b"import sys\nprint('hello', sys.argv[1:])\n")
    started = work.runs_start(["hello.py", "a", "b"], title="greeting")
    run_id = started["runId"]
    assert started["message"].startswith("Run for project alice/work started.")
    assert run_id in [r["id"] for r in work.runs_list()["data"]]  # visible at once
    deadline = time.monotonic() + 20
    while not work.runs_status(run_id)["isCompleted"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    run = work.runs_status(run_id)
    assert run["status"] == "Succeeded"
    assert run["title"] == "greeting"
    assert run["outputCommitId"] == run["commitId"]  # nothing written
    assert "hello ['a', 'b']" in work.runs_stdout(run_id)
    assert "Preparing checkout of commit" in work.get_run_log(run_id)


def test_runs_start_blocking_success_and_failure(work: Domino) -> None:
    work.files_upload("ok.sh", b"echo fine\n")
    resp = work.runs_start_blocking(["ok.sh"], poll_freq=0.2, max_poll_time=30)
    assert work.runs_status(resp["runId"])["status"] == "Succeeded"
    work.files_upload("bad.py", b"raise SystemExit(3)\n")
    with pytest.raises(RunFailedException):
        work.runs_start_blocking(["bad.py"], poll_freq=0.2, max_poll_time=30)


def test_endpoint_publish_state_unpublish(work: Domino, srv: Srv) -> None:
    work.files_upload("model.py", b"def predict(a, b=1):\n    return {'sum': a + b}\n")
    assert work.endpoint_publish("model.py", "predict")
    state = work.endpoint_state()
    assert state["isPublished"] is True
    assert state["release"]["function"] == "predict"
    with srv.session() as s:
        r = s.post(f"{srv.url}/v1/alice/work/endpoint", json={"parameters": [2, 5]})
    assert r.status_code == 200
    assert r.json()["result"] == {"sum": 7}
    assert work.endpoint_unpublish().ok
    assert work.endpoint_state() == {"isPublished": False, "release": None}
