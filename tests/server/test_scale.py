"""Big projects stay fast: a 50,000-file commit lists in well under a second."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from dominofs.server.store import FileEntry, Store

from .conftest import ALICE, Srv

N_FILES = 50_000


@pytest.mark.slow
def test_listing_50k_files_under_a_second(start_server: Callable[..., Srv]) -> None:
    server = start_server()  # creates the data dir with alice/demo
    server.stop()
    store = Store.open(server.data)
    project = store.project("alice", "demo")
    assert project is not None
    key, size = store.blobs.ingest_bytes(b"tiny")
    changes: dict[str, FileEntry | None] = {
        f"data/d{i // 1000:03d}/file-{i:05d}.txt": FileEntry(key, size, 1_700_000_000_000)
        for i in range(N_FILES)
    }
    project.write_commit(changes, "many files")
    server.start()
    with server.session(ALICE) as s:
        head = s.get(f"{server.project_url()}/commits").json()[0]
        for attempt in range(2):  # cold (read from disk) and warm (cached)
            started = time.monotonic()
            r = s.get(f"{server.project_url()}/files/{head}//")
            elapsed = time.monotonic() - started
            assert r.status_code == 200
            assert len(r.json()["data"]) == N_FILES + 2
            assert elapsed < 1.0, f"attempt {attempt}: {elapsed:.2f}s"
        started = time.monotonic()
        sub = s.get(f"{server.project_url()}/files/{head}/data/d007").json()["data"]
        assert time.monotonic() - started < 1.0
        assert len(sub) == 1000
        # an upload on top of the big head also stays quick
        started = time.monotonic()
        s.put(f"{server.project_url()}/one-more.txt", data=b"x").raise_for_status()
        assert time.monotonic() - started < 2.0
