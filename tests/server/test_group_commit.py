"""Group commit: concurrent uploads to one project each get their own durable commit."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dominofs.server.commits import Conflict, FileEntry, NotFound
from dominofs.server.projects import SNAPSHOT_EVERY
from dominofs.server.store import Store

from .conftest import Srv


def _listing(s: object, url: str) -> dict[str, str]:
    data = s.get(url).json()["data"]  # type: ignore[attr-defined]
    return {f["path"]: f["key"] for f in data}


def test_fifty_concurrent_puts_are_fifty_durable_commits(
    start_server: Callable[..., Srv],
) -> None:
    server = start_server()
    base = server.project_url()
    with server.session() as s:
        before = s.get(f"{base}/commits").json()
    keys: dict[str, str] = {}
    errors: list[BaseException] = []
    go = threading.Barrier(50)

    def put(i: int) -> None:
        try:
            with server.session() as s:
                go.wait()
                r = s.put(f"{base}/many/f{i:02d}.txt", data=f"content {i}".encode())
                assert r.status_code == 201, r.text
                keys[f"many/f{i:02d}.txt"] = r.json()["key"]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    server.kill()  # right after every 201 arrived: no clean shutdown, no flush

    again = start_server()
    with again.session() as s:
        commits = s.get(f"{again.project_url()}/commits").json()
        assert commits[50:] == before
        new = commits[:50]
        assert len(set(new)) == 50
        # Oldest first: each listing is exactly its parent's plus one of the uploaded files.
        prev = _listing(s, f"{again.project_url()}/files/{before[0]}/")
        seen: set[str] = set()
        for cid in reversed(new):
            cur = _listing(s, f"{again.project_url()}/files/{cid}/")
            added = set(cur) - set(prev)
            assert len(added) == 1
            assert {p: cur[p] for p in prev} == prev
            (path,) = added
            assert cur[path] == keys[path]
            assert path not in seen
            seen.add(path)
            prev = cur
        assert seen == set(keys)
        for path, key in keys.items():
            i = int(path[-6:-4])
            blob = s.get(f"{again.project_url()}/blobs/{key}")
            assert blob.content == f"content {i}".encode()


def _entry(store: Store, i: int) -> FileEntry:
    key, size = store.blobs.ingest_bytes(f"blob {i}".encode())
    return FileEntry(key, size, 1000 + i)


def test_batch_with_failing_items_and_replay_after_reopen(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.add_user("alice", "k")
    project = store.add_project("alice/p")
    first = project.head
    results = project.write_commits(
        [
            ({"a/x.txt": _entry(store, 1)}, "one"),
            ({"a": _entry(store, 2)}, "clash"),  # a file where a folder is
            ({"nope.txt": None}, "missing"),
            ({"a/y.txt": _entry(store, 3), "README.md": None}, "two"),
            ({"a": None}, "drop folder"),
        ]
    )
    assert isinstance(results[1], Conflict)
    assert isinstance(results[2], NotFound)
    ids = [r for r in results if isinstance(r, str)]
    assert len(ids) == 3
    assert project.commits()[:4] == [*reversed(ids), first]
    for _ in range(SNAPSHOT_EVERY + 5):  # long enough to need a snapshot in the chain
        (cid,) = project.write_commits([({"b/n.txt": _entry(store, len(project.index))}, "n")])
        assert isinstance(cid, str)
    expected = {c: project.files(c)[0] for c in project.commits()}

    # A torn last line (a crash mid-append) is skipped, and the next append starts afresh.
    with open(project.dir / "commits.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": "torn')
    reopened = Store.open(tmp_path)
    again = reopened.projects["alice/p"]
    assert again.commits() == project.commits()
    assert {c: again.files(c)[0] for c in again.commits()} == expected
    assert set(again.files(ids[0])[0]) == {".dominoignore", "README.md", "a/x.txt"}
    assert set(again.files(ids[1])[0]) == {".dominoignore", "a/x.txt", "a/y.txt"}
    assert set(again.files(ids[2])[0]) == {".dominoignore"}
    (last,) = again.write_commits([({"after.txt": _entry(store, 9)}, "after torn")])
    assert Store.open(tmp_path).projects["alice/p"].head == last


@pytest.mark.parametrize("n", [1, 30])
def test_async_commit_queue(tmp_path: Path, n: int) -> None:
    store = Store.open(tmp_path)
    store.add_user("alice", "k")
    project = store.add_project("alice/p")

    async def main() -> list[str]:
        return await asyncio.gather(
            *(project.commit({f"f{i}.txt": _entry(store, i)}, f"put {i}") for i in range(n))
        )

    ids = asyncio.run(main())
    assert len(set(ids)) == n
    assert set(project.commits()[:n]) == set(ids)
    assert len(project.files(project.head)[0]) == 2 + n


def test_reads_commits_written_in_the_full_map_format(tmp_path: Path) -> None:
    """Data dirs from before group commit: full map per commit file, log lines without changes."""
    store = Store.open(tmp_path)
    store.add_user("alice", "k")
    project = store.add_project("alice/p")
    files = {p: list(e) for p, e in project.files(project.head)[0].items()}
    files["old.txt"] = list(_entry(store, 1))
    record = {"id": "ab" * 20, "parent": project.head, "time": 5, "message": "old"}
    (project.dir / "commits" / f"{'ab' * 20}.json").write_text(
        json.dumps({**record, "files": files})
    )
    with open(project.dir / "commits.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    (project.dir / "HEAD").write_text("ab" * 20)
    (project.dir / "keys.txt").write_text(files["old.txt"][0] + "\n")

    again = Store.open(tmp_path).projects["alice/p"]
    assert again.head == "ab" * 20
    (cid,) = again.write_commits([({"new.txt": _entry(store, 2)}, "new")])
    assert isinstance(cid, str)
    reopened = Store.open(tmp_path).projects["alice/p"]
    assert reopened.commits()[:2] == [cid, "ab" * 20]
    assert set(reopened.files(cid)[0]) == {".dominoignore", "README.md", "old.txt", "new.txt"}


def test_the_log_decides_the_head_and_a_commit_replaces_no_file(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.add_user("alice", "k")
    project = store.add_project("alice/p")
    log_inode = (project.dir / "commits.jsonl").stat().st_ino
    names = sorted(os.listdir(project.dir))
    for i in range(5):
        (cid,) = project.write_commits([({f"f{i}.txt": _entry(store, i)}, f"c{i}")])
    # Appends only: no file made or replaced per commit (each replacement freed an inode).
    assert (project.dir / "commits.jsonl").stat().st_ino == log_inode
    assert sorted(os.listdir(project.dir)) == names
    assert not (project.dir / "HEAD").exists()
    assert Store.open(tmp_path).projects["alice/p"].head == cid
    # A HEAD file an older version left behind the log does not win over it.
    (project.dir / "HEAD").write_text(project.commits()[1])
    assert Store.open(tmp_path).projects["alice/p"].head == cid


def test_commits_leave_sorting_to_the_listing_that_needs_it(tmp_path: Path) -> None:
    # A burst of sequential commits on a big project sorted every path once per commit; the
    # sort now waits for a listing of that commit, and happens once for it.
    store = Store.open(tmp_path)
    store.add_user("alice", "k")
    project = store.add_project("alice/p")
    for i in (3, 1, 2):
        project.write_commit({f"d/f{i}.txt": _entry(store, i)}, f"put {i}")
        assert project._cache[project.head]._paths is None
    files, paths = project.files(project.head)
    assert paths == [".dominoignore", "README.md", "d/f1.txt", "d/f2.txt", "d/f3.txt"]
    assert project.files(project.head)[1] is paths
    assert set(project.file_map(project.head)) == set(files)
