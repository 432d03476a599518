"""Fixtures for the server tests: the real server as a subprocess on a free loopback port.

`srv` is one server shared by the whole module set (session scope) for tests that only add
state; tests that need a server of their own (restart, --no-delete, time limits) use
`start_server`. No mocks: every test speaks HTTP to the real thing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ALICE_KEY, BOB_KEY, LocalServer

ALICE = ALICE_KEY
BOB = BOB_KEY


class Srv(LocalServer):
    """The shared LocalServer (alice/demo, users alice and bob), with HTTP helpers."""

    def session(self, key: str = ALICE) -> requests.Session:
        s = requests.Session()
        s.headers["X-Domino-Api-Key"] = key
        return s

    def project_url(self, project: str = "alice/demo") -> str:
        return f"{self.url}/v1/projects/{project}"


@pytest.fixture(scope="session")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Srv]:
    """One shared server: alice/demo, alice/work, alice/search and bob/private."""
    extra = ["--project", "alice/work", "--project", "alice/search", "--project", "bob/private"]
    server = Srv(tmp_path_factory.mktemp("shared-server"), [*extra, "--run-time-limit", "30"])
    server.start()
    yield server
    assert server.stop() == 0


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Srv]]:
    """Factory for a private server on tmp_path/data (same data dir on every call)."""
    started: list[Srv] = []

    def start(*args: str) -> Srv:
        server = Srv(tmp_path / "data", list(args))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc is not None:
            server.stop()


@pytest.fixture
def alice(srv: Srv) -> Iterator[requests.Session]:
    with srv.session(ALICE) as s:
        yield s
