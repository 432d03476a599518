"""Helpers for the fault tests: switch the real server's faults through /_faults, and wait.

Faults come from the server (STYLE §8): nothing here patches the client. Every test starts and
ends with no faults in force.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from dominofs.api import ProjectClient
from tests.conftest import LocalServer
from tests.harness import wait_for

__all__ = ["Faults", "faults", "history_of", "wait_for"]


class Faults:
    """The /_faults route of one LocalServer."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return f"{self.server.url}/_faults"

    def set(self, spec: str) -> None:
        r = requests.put(self.url, json={"spec": spec}, timeout=5)
        assert r.status_code == 200, r.text

    def clear(self) -> None:
        requests.delete(self.url, timeout=5).raise_for_status()

    def rules(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = requests.get(self.url, timeout=5).json()["rules"]
        return data

    def hits(self, index: int | None = None) -> int:
        """How many requests rule `index` (default: any rule) has hit."""
        rules = self.rules()
        if index is None:
            return sum(int(r["hits"]) for r in rules)
        return int(rules[index]["hits"]) if len(rules) > index else 0


@pytest.fixture
def faults(server: LocalServer) -> Iterator[Faults]:
    f = Faults(server)
    f.clear()
    yield f
    if server.proc is not None:
        f.clear()


def history_of(remote: ProjectClient, path: str) -> list[str]:
    """The distinct keys `path` had, commit by commit, oldest first (a re-send adds none)."""
    keys: list[str] = []
    for cid in reversed(remote.commits()):
        key = next((f.key for f in remote.list_files(cid, path) if f.path == path), None)
        if key is not None and (not keys or keys[-1] != key):
            keys.append(key)
    return keys
