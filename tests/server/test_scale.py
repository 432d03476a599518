"""Big projects: a 50,000-file commit lists whole, filters by prefix and takes uploads."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dominofs.server.commits import FileEntry
from dominofs.server.store import Store

from .conftest import ALICE, Srv

N_FILES = 50_000


@pytest.mark.slow
def test_50k_file_commit_lists_filters_and_takes_uploads(
    start_server: Callable[..., Srv],
) -> None:
    # How fast this is lives in scripts/bench.py (a figure, not a timed test).
    server = start_server()  # creates the data dir with alice/demo
    server.stop()
    store = Store.open(server.data_dir)
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
        for _ in range(2):  # cold (read from disk) and warm (cached) answers agree
            r = s.get(f"{server.project_url()}/files/{head}//")
            assert r.status_code == 200
            paths = [e["path"] for e in r.json()["data"]]
            assert len(paths) == N_FILES + 2
            assert paths == sorted(paths)
        sub = s.get(f"{server.project_url()}/files/{head}/data/d007").json()["data"]
        assert len(sub) == 1000
        assert all(e["path"].startswith("data/d007/") for e in sub)
        s.put(f"{server.project_url()}/one-more.txt", data=b"x").raise_for_status()
        new_head = s.get(f"{server.project_url()}/commits").json()[0]
        after = s.get(f"{server.project_url()}/files/{new_head}//").json()["data"]
        assert len(after) == N_FILES + 3
