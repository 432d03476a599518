"""1,000 queued uploads drained against the real server with bounded concurrency (issue 7, Load).

The outbox talks to the real local server through the real client. The only instrument is a
ProjectClient subclass that counts how many of its uploads are under way at once and then does
the real PUT: nothing about HTTP is replaced.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from dominofs.api import DominoClient, ProjectClient
from dominofs.models import ProjectRef, UploadResult
from dominofs.outbox import Outbox
from tests.conftest import ALICE_KEY, LocalServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

UPLOADS = 1_000
CONCURRENCY = 4


class CountingProject(ProjectClient):
    """The real ProjectClient; upload() also records how many run at once and what was sent."""

    def __init__(self, client: DominoClient, ref: ProjectRef) -> None:
        super().__init__(client, ref)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.sent: Counter[str] = Counter()

    def upload(self, path: str, data: IO[bytes], *, size: int | None = None) -> UploadResult:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.sent[path] += 1
        try:
            return super().upload(path, data, size=size)
        finally:
            with self._lock:
                self.in_flight -= 1


@pytest.fixture
def client(server: LocalServer) -> Iterator[DominoClient]:
    c = DominoClient(server.url, ALICE_KEY)
    yield c
    c.close()


def content(i: int) -> bytes:
    return f"upload {i}\n".encode() * (1 + i % 40)


def test_1000_queued_uploads_drain_once_each_within_the_concurrency(
    server: LocalServer, client: DominoClient, tmp_path: Path
) -> None:
    remote = CountingProject(client, ProjectRef.parse("alice/demo"))
    box = Outbox(tmp_path / "outbox", remote, concurrency=CONCURRENCY)
    try:
        paths = {f"q{i // 100:02d}/u{i:04d}.txt": content(i) for i in range(UPLOADS)}
        for path, data in paths.items():
            staged = box.staging_path()
            staged.write_bytes(data)
            box.enqueue_upload(path, staged, base_key=None)
        assert box.pending_count() == UPLOADS
        server.reset_stats()
        t = time.monotonic()
        box.start()
        assert box.wait_idle(timeout=150), f"{box.pending_count()} still queued"
        drain_s = time.monotonic() - t
        assert box.completed == UPLOADS
        assert box.entries() == []
        assert box.conflicts() == []
    finally:
        box.close()

    # Each upload sent exactly once, never more than CONCURRENCY at a time (and truly parallel).
    assert server.requests_count("PUT upload") == UPLOADS
    assert set(remote.sent) == set(paths)
    assert max(remote.sent.values()) == 1
    assert 2 <= remote.max_in_flight <= CONCURRENCY, remote.max_in_flight
    # Everything is in the final listing, with the bytes we queued.
    listing = {f.path: f for f in remote.list_files(remote.head_commit())}
    for path, data in paths.items():
        assert listing[path].key == hashlib.sha1(data).hexdigest(), path
        assert listing[path].size == len(data)
    assert sorted(listing) == sorted({*paths, "README.md", ".dominoignore"})
    assert drain_s < 120
    assert list((tmp_path / "outbox" / "staged").iterdir()) == []
