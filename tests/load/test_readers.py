"""64 concurrent readers over 1,000 distinct small files through a real mount (issue 7, Load)."""

from __future__ import annotations

import hashlib
import os
import random
import threading

import pytest

from dominofs.server.store import Store
from tests.load.build import add_small_files, small_content
from tests.load.conftest import LoadEnv
from tests.mount.conftest import answers

pytestmark = [pytest.mark.slow, pytest.mark.fuse, pytest.mark.timeout(120)]

FILES = 1_000
READERS = 64
READS_PER_FILE = 4  # every file is opened by 4 threads at about the same time


def test_64_readers_over_1000_files_fetch_each_blob_once(load_env: LoadEnv) -> None:
    files = {f"r{i // 100:02d}/file{i:04d}.txt": small_content(i) for i in range(FILES)}

    def build(store: Store) -> None:
        add_small_files(store, store.add_project("alice/load"), files)

    env = load_env(build)
    listing = {f.path: f.key for f in env.remote.list_files(env.remote.head_commit())}
    assert set(files) <= set(listing)
    m = env.mount("--poll-interval", "0", project="alice/load")
    env.server.reset_stats()

    # Reader t reads the files i with i % 16 == t % 16 in its own shuffled order, so each file
    # has READS_PER_FILE readers racing for it and all 64 threads run at once.
    paths = sorted(files)
    groups = READERS // READS_PER_FILE
    barrier = threading.Barrier(READERS)
    results: list[dict[str, bytes]] = [{} for _ in range(READERS)]
    errors: list[BaseException] = []

    def reader(t: int) -> None:
        mine = [p for i, p in enumerate(paths) if i % groups == t % groups]
        random.Random(t).shuffle(mine)
        try:
            barrier.wait(30)
            for p in mine:
                with open(m.path / p, "rb") as fh:
                    results[t][p] = fh.read()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(t,)) for t in range(READERS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(90)
    assert not any(th.is_alive() for th in threads), "a reader hung"
    assert errors == []

    reads = 0
    seen: set[str] = set()
    for got in results:
        for p, data in got.items():
            reads += 1
            seen.add(p)
            assert data == files[p], p
            assert hashlib.sha1(data).hexdigest() == listing[p], p
    assert reads == FILES * READS_PER_FILE
    assert seen == set(files)
    # One download per blob, however many readers raced for it.
    assert env.server.requests_count("GET blobs") == FILES
    assert env.server.requests_count("GET files") == 0

    # The mount still answers: a listing, a stat and a read, with no new download.
    assert answers(m.path)
    assert m.proc is not None
    assert m.proc.poll() is None
    assert len(os.listdir(m.path / "r05")) == 100
    assert (m.path / paths[123]).read_bytes() == files[paths[123]]
    assert env.server.requests_count("GET blobs") == FILES
