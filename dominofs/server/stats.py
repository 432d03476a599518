"""Request counters for GET /_stats, so tests and benchmarks can see what a client really asked.

Owns only in-memory counters (lost on restart, zeroed by POST /_stats/reset). Route names are
"<METHOD> <route>" with route one of version, commits, files, blobs, upload, runs, run, stdout,
endpoint, search (and a few extras such as v4 and content for the optional routes).
Must not import anything from dominofs outside dominofs/server.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class Stats:
    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.bytes_sent = 0
        self.bytes_received = 0

    def count(self, method: str, route: str) -> None:
        self.requests[f"{method} {route}"] += 1

    def reset(self) -> None:
        self.requests.clear()
        self.bytes_sent = 0
        self.bytes_received = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
        }
