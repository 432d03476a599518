"""Runs really execute: statuses, logs, output commits, diagnostics and the time limit."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from .conftest import Srv

PROJECT = "alice/work"


def start(s: requests.Session, srv: Srv, command: list[str], **extra: Any) -> str:
    r = s.post(f"{srv.project_url(PROJECT)}/runs", json={"command": command, **extra})
    assert r.status_code == 200, r.text
    run_id: str = r.json()["runId"]
    return run_id


def wait(s: requests.Session, srv: Srv, run_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = s.get(f"{srv.project_url(PROJECT)}/runs/{run_id}").json()
        if run["isCompleted"]:
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.05)


def put(s: requests.Session, srv: Srv, path: str, data: bytes, project: str = PROJECT) -> None:
    s.put(f"{srv.project_url(project)}/{path}", data=data).raise_for_status()


def listing(s: requests.Session, srv: Srv, commit: str) -> dict[str, Any]:
    data = s.get(f"{srv.project_url(PROJECT)}/files/{commit}/").json()["data"]
    return {f["path"]: f for f in data}


def test_run_record_has_every_key_at_once(alice: requests.Session, srv: Srv) -> None:
    run_id = start(alice, srv, ["sleep 0.3"], isDirect=True)
    early = alice.get(f"{srv.project_url(PROJECT)}/runs/{run_id}").json()
    keys = {
        "id", "projectId", "number", "startingUserId", "queued", "started", "completed",
        "status", "commitId", "executor", "outputCommitId", "title", "isArchived",
        "postProcessedTimestamp", "diagnosticStatistics", "isCompleted", "hardwareTierId",
        "notebookName", "command",
    }  # fmt: skip
    assert keys <= set(early)
    assert early["status"] in {"Queued", "Preparing", "Running"}
    assert early["completed"] is None
    assert early["outputCommitId"] is None
    done = wait(alice, srv, run_id)
    assert done["status"] == "Succeeded"
    assert done["completed"] == done["postProcessedTimestamp"]
    assert done["started"] >= done["queued"]


def test_failing_run_is_failed_with_output_commit(alice: requests.Session, srv: Srv) -> None:
    put(
        alice,
        srv,
        "fail.py",
        b"import sys\nprint('to stdout')\nsys.stderr.write('to stderr\\n')\nsys.exit(2)\n",
    )
    run = wait(alice, srv, start(alice, srv, ["fail.py"]))
    assert run["status"] == "Failed"
    assert run["outputCommitId"] == run["commitId"]
    logs = alice.get(f"{srv.project_url(PROJECT)}/run/{run['id']}/stdout").json()
    assert "to stdout" in logs["stdout"]
    assert "to stderr" in logs["stdout"]  # stdout includes stderr
    assert "exited with code 2" in logs["setup"]


def test_run_outputs_become_a_commit(alice: requests.Session, srv: Srv) -> None:
    script = (
        b"import json, os\n"
        b"os.makedirs('results', exist_ok=True)\n"
        b"json.dump({'acc': 0.9}, open('results/metrics.json', 'w'))\n"
        b"json.dump({'R^2': 0.99, 'loss': 1}, open('dominostats.json', 'w'))\n"
        b"open('junk.pyc', 'w').write('ignored by .dominoignore')\n"
        b"os.remove('to_delete.txt')\n"
    )
    put(alice, srv, "train.py", script)
    put(alice, srv, "to_delete.txt", b"bye")
    run = wait(alice, srv, start(alice, srv, ["train.py"], title="train"))
    assert run["status"] == "Succeeded"
    assert run["outputCommitId"] != run["commitId"]
    assert alice.get(f"{srv.project_url(PROJECT)}/commits").json()[0] == run["outputCommitId"]
    files = listing(alice, srv, run["outputCommitId"])
    assert alice.get(files["results/metrics.json"]["url"]).json() == {"acc": 0.9}
    assert "junk.pyc" not in files
    assert "to_delete.txt" not in files
    assert "train.py" in files
    stats = run["diagnosticStatistics"]
    assert stats["isError"] is False
    assert {"key": "R^2", "value": "0.99"} in stats["data"]


def test_shell_and_direct_runs(alice: requests.Session, srv: Srv) -> None:
    put(alice, srv, "greet.sh", b'echo "hi $1"\n')
    run = wait(alice, srv, start(alice, srv, ["greet.sh", "you"]))
    out = alice.get(f"{srv.project_url(PROJECT)}/run/{run['id']}/stdout").json()["stdout"]
    assert out == "hi you\n"
    direct = wait(alice, srv, start(alice, srv, ["echo", "one;", "echo", "two"], isDirect=True))
    out = alice.get(f"{srv.project_url(PROJECT)}/run/{direct['id']}/stdout").json()["stdout"]
    assert out == "one\ntwo\n"


def test_preview_lines(alice: requests.Session, srv: Srv) -> None:
    run = wait(alice, srv, start(alice, srv, ["seq 1 50"], isDirect=True))
    url = f"{srv.project_url(PROJECT)}/run/{run['id']}/stdout"
    assert alice.get(url, params={"previewNumberOfLines": 3}).json()["stdout"] == "48\n49\n50\n"
    assert alice.get(url, params={"previewNumberOfLines": "x"}).status_code == 400


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["missing.py"], "File not found"),
        (["no-such-program-xyz"], "Could not start"),
        (["analysis.R"], "Rscript"),
    ],
)
def test_runs_that_cannot_start_are_error(
    alice: requests.Session, srv: Srv, command: list[str], message: str
) -> None:
    put(alice, srv, "analysis.R", b"print(1)\n")
    run = wait(alice, srv, start(alice, srv, command))
    setup = alice.get(f"{srv.project_url(PROJECT)}/run/{run['id']}/stdout").json()["setup"]
    assert message in setup
    if message == "Rscript" and "Rscript is not installed" not in setup:
        assert run["status"] in {"Succeeded", "Failed"}  # a machine with R really ran it
        return
    assert run["status"] == "Error"
    assert run["outputCommitId"] == run["commitId"]
    assert run["completed"] is not None


def test_run_at_an_older_commit(alice: requests.Session, srv: Srv) -> None:
    put(alice, srv, "version.txt", b"old")
    old = alice.get(f"{srv.project_url(PROJECT)}/commits").json()[0]
    put(alice, srv, "version.txt", b"new")
    run = wait(alice, srv, start(alice, srv, ["cat version.txt"], isDirect=True, commitId=old))
    assert run["commitId"] == old
    out = alice.get(f"{srv.project_url(PROJECT)}/run/{run['id']}/stdout").json()["stdout"]
    assert out == "old"


def test_runs_list_newest_first(alice: requests.Session, srv: Srv) -> None:
    ids = [start(alice, srv, ["true"], isDirect=True) for _ in range(3)]
    listed = alice.get(f"{srv.project_url(PROJECT)}/runs").json()
    assert listed["objectType"] == "list"
    numbers = [r["number"] for r in listed["data"]]
    assert numbers == sorted(numbers, reverse=True)
    assert [r["id"] for r in listed["data"][:3]] == ids[::-1]
    for run_id in ids:
        wait(alice, srv, run_id)


def test_time_limit_stops_run(start_server: Callable[..., Srv]) -> None:
    server = start_server("--run-time-limit", "1", "--project", "alice/work")
    with server.session() as s:
        started = time.monotonic()
        run_id = start(s, server, ["sleep 30 & sleep 30; echo never"], isDirect=True)
        run = wait(s, server, run_id, timeout=15)
        assert run["status"] == "Stopped"
        assert time.monotonic() - started < 10
        assert run["outputCommitId"] == run["commitId"]
        setup = s.get(f"{server.project_url(PROJECT)}/run/{run_id}/stdout").json()["setup"]
        assert "exceeded the limit" in setup
