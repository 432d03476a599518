"""Helpers for the fault tests: switch the real server's faults through /_faults, and wait.

Faults come from the server (STYLE §8): nothing here patches the client. Every test starts and
ends with no faults in force.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from tests.conftest import LocalServer


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


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `cond` until it is truthy; a generous deadline, a quick poll."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except OSError as exc:
            last = exc
        if last and not isinstance(last, BaseException):
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: last={last!r}")
