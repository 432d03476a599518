"""A restart loses nothing; runs cut off by a stop or a crash end as Error; clean shutdown."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from .conftest import Srv


def _wait_status(
    s: requests.Session, url: str, wanted: set[str], timeout: float = 10
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = s.get(url).json()
        if run["status"] in wanted:
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.05)


def test_restart_keeps_everything(start_server: Callable[..., Srv]) -> None:
    server = start_server()
    base = server.project_url()
    with server.session() as s:
        upload = s.put(f"{base}/keep/me.txt", data=b"persisted").json()
        s.put(f"{base}/model.py", data=b"def f(x):\n    return x * 2\n").raise_for_status()
        run_id = s.post(f"{base}/runs", json={"command": ["echo kept"], "isDirect": True}).json()[
            "runId"
        ]
        _wait_status(s, f"{base}/runs/{run_id}", {"Succeeded"})
        body = {"commitId": None, "bindingDefinition": {"file": "model.py", "function": "f"}}
        s.post(f"{server.url}/v1/alice/demo/endpoint/publishRelease", json=body).raise_for_status()
        commits = s.get(f"{base}/commits").json()
        runs = s.get(f"{base}/runs").json()["data"]
    assert server.stop() == 0

    again = start_server()  # same data dir, same --project (a no-op now)
    with again.session() as s:
        assert s.get(f"{again.project_url()}/commits").json() == commits
        listing = s.get(f"{again.project_url()}/files/{commits[0]}/keep").json()["data"]
        assert listing[0]["key"] == upload["key"]
        assert s.get(f"{again.project_url()}/blobs/{upload['key']}").content == b"persisted"
        assert s.get(f"{again.project_url()}/runs").json()["data"] == runs
        out = s.get(f"{again.project_url()}/run/{run_id}/stdout").json()
        assert out["stdout"] == "kept\n"
        assert "Preparing checkout" in out["setup"]
        state = s.get(f"{again.url}/v1/alice/demo/endpoint/state").json()
        assert state["isPublished"] is True
        call = s.post(f"{again.url}/v1/alice/demo/endpoint", json={"parameters": [21]})
        assert call.json()["result"] == 42


def test_stop_during_run_leaves_it_consistent(start_server: Callable[..., Srv]) -> None:
    server = start_server()
    with server.session() as s:
        body = {"command": ["sleep 20"], "isDirect": True}
        run_id = s.post(f"{server.project_url()}/runs", json=body).json()["runId"]
        url = f"{server.project_url()}/runs/{run_id}"
        _wait_status(s, url, {"Running"})
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 8  # the run's process group was killed, not awaited
    again = start_server()
    with again.session() as s:
        run = s.get(f"{again.project_url()}/runs/{run_id}").json()
    assert run["status"] == "Error"
    assert run["isCompleted"] is True
    assert run["outputCommitId"] == run["commitId"]


def test_crash_during_run_marks_it_error_on_restart(start_server: Callable[..., Srv]) -> None:
    server = start_server()
    with server.session() as s:
        body = {"command": ["sleep 2"], "isDirect": True}
        run_id = s.post(f"{server.project_url()}/runs", json=body).json()["runId"]
        _wait_status(s, f"{server.project_url()}/runs/{run_id}", {"Running"})
        s.put(f"{server.project_url()}/before-crash.txt", data=b"durable").raise_for_status()
    server.kill()
    again = start_server()
    with again.session() as s:
        run = s.get(f"{again.project_url()}/runs/{run_id}").json()
        head = s.get(f"{again.project_url()}/commits").json()[0]
        files = s.get(f"{again.project_url()}/files/{head}/before-crash.txt").json()["data"]
    assert run["status"] == "Error"
    assert run["completed"] is not None
    assert run["outputCommitId"] == run["commitId"]
    assert [f["size"] for f in files] == [7]


def test_no_delete_server_refuses_deletion(start_server: Callable[..., Srv]) -> None:
    server = start_server("--no-delete")
    with server.session() as s:
        s.put(f"{server.project_url()}/x.txt", data=b"x").raise_for_status()
        r = s.delete(f"{server.project_url()}/x.txt")
    assert r.status_code == 405
    assert r.json() == {"message": "deletion is not supported by this server"}


def test_stats_refused_off_loopback(start_server: Callable[..., Srv]) -> None:
    server = start_server("--bind", "0.0.0.0")
    port = server.url.rsplit(":", 1)[1]
    assert requests.get(f"http://127.0.0.1:{port}/_stats", timeout=5).status_code == 200
    addresses = [a for a in _host_addresses() if not a.startswith("127.")]
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address")
    r = requests.get(f"http://{addresses[0]}:{port}/_stats", timeout=5)
    assert r.status_code == 403
    assert "loopback" in r.json()["message"]


def _host_addresses() -> list[str]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # no packet is sent; this picks the outgoing address
            return [sock.getsockname()[0]]
        except OSError:
            return []


def test_ipv6_listening_line(start_server: Callable[..., Srv]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = start_server("--bind", "::1")
    except RuntimeError:
        pytest.skip("::1 cannot be bound here")
    assert server.url.startswith("http://[::1]:")
    assert requests.get(f"{server.url}/version", timeout=5).json()["version"] == "5.10.0"
