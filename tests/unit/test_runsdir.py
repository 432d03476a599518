"""runsdir.py against the real local server: names, renderings, starting runs, parse_start."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from dominofs.api import DominoClient, ProjectClient
from dominofs.errors import UsageError
from dominofs.runsdir import RunsDir, parse_start
from tests.conftest import ALICE_KEY, LocalServer


@pytest.fixture
def remote(server: LocalServer) -> Iterator[ProjectClient]:
    client = DominoClient(server.url, ALICE_KEY)
    yield client.project("alice/demo")
    client.close()


def wait_for(predicate, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_empty_project_has_the_fixed_names(remote: ProjectClient) -> None:
    runs = RunsDir(remote)
    assert runs.names() == ["index.json", "latest.json", "start"]
    assert json.loads(runs.rendering("index.json").data) == []
    assert json.loads(runs.rendering("latest.json").data) is None
    assert runs.exists("start")
    assert not runs.exists("nope.json")
    assert not runs.exists("x.txt")


def test_start_a_run_and_follow_it_to_succeeded(remote: ProjectClient) -> None:
    runs = RunsDir(remote, fresh_seconds=0.0)
    run_id = runs.start(b'python -c "print(6 * 7)"\n')
    assert f"{run_id}.json" in runs.names()
    assert f"{run_id}.log" in runs.names()

    def done() -> dict[str, object] | None:
        data = json.loads(runs.rendering(f"{run_id}.json", max_age=0).data)
        return data if data["status"] == "Succeeded" else None

    run = wait_for(done)
    assert run["id"] == run_id
    assert run["isCompleted"] is True
    assert run["command"] == ["python", "-c", "print(6 * 7)"]
    assert "42" in runs.rendering(f"{run_id}.log", max_age=0).data.decode()
    latest = json.loads(runs.rendering("latest.json", max_age=0).data)
    assert latest["id"] == run_id
    index = json.loads(runs.rendering("index.json", max_age=0).data)
    assert [r["id"] for r in index] == [run_id]


def test_json_start_request_with_title(remote: ProjectClient) -> None:
    runs = RunsDir(remote)
    run_id = runs.start(json.dumps({"command": ["python", "-c", "pass"], "title": "t1"}).encode())
    assert remote.get_run(run_id).title == "t1"


def test_rendering_is_kept_until_asked_fresher(remote: ProjectClient) -> None:
    runs = RunsDir(remote)
    first = runs.rendering("index.json")
    assert runs.rendering("index.json") is first
    assert runs.rendering("index.json", max_age=60) is first
    assert runs.rendering("index.json", max_age=0) is not first


def test_parse_start_accepts_commands_and_json() -> None:
    assert parse_start(b"python train.py --lr 0.1").command == ("python", "train.py", "--lr", "0.1")
    req = parse_start(b'{"command": ["a.py", "x"], "title": "T", "isDirect": false}')
    assert req.command == ("a.py", "x")
    assert req.title == "T"
    assert parse_start(b'{"command": "python a.py"}').command == ("python", "a.py")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   \n",
        b"{not json",
        b'{"command": 5}',
        b'{"command": []}',
        b'{"title": "no command"}',
        b'["python", "a.py"]',
        b'{"command": ["a"], "title": 3}',
        b'{"command": ["a"], "bogus": 1}',
        b'python "unbalanced',
        b"\xff\xfe",
    ],
)
def test_parse_start_refuses_bad_requests(data: bytes) -> None:
    with pytest.raises(UsageError) as info:
        parse_start(data)
    assert info.value.errno == 22
