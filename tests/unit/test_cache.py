"""cache.py with a tiny in-process fetcher: one download per key, streaming, LRU, pins, integrity.

The fetcher here stands in for `Remote.iter_blob` only so these tests can hold a download at a
chosen byte; tests/unit/test_vfs_read.py and tests/mount/ drive the cache with the real client.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dominofs.cache import BlobCache, BlobReader
from dominofs.errors import IntegrityError, Unreachable

MiB = 1 << 20


def blob(n: int, seed: int = 0) -> tuple[str, bytes]:
    data = (bytes([seed % 251]) + os.urandom(31)) * (n // 32) + b"x" * (n % 32)
    return hashlib.sha1(data).hexdigest(), data


class FakeFetcher:
    """Serves blobs from memory in 64 KiB chunks; can hold after `hold_after` bytes."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.calls: list[tuple[str, int]] = []
        self.hold_after: int | None = None
        self.release = threading.Event()
        self.fail: Exception | None = None
        self.lock = threading.Lock()

    def __call__(self, key: str, offset: int) -> Iterator[bytes]:
        with self.lock:
            self.calls.append((key, offset))
        if self.fail is not None:
            raise self.fail
        return self._gen(self.blobs[key], offset)

    def _gen(self, data: bytes, offset: int) -> Iterator[bytes]:
        pos = offset
        while pos < len(data):
            if self.hold_after is not None and offset == 0 and pos >= self.hold_after:
                assert self.release.wait(20)
            yield data[pos : pos + 65536]
            pos += 65536


def make(tmp_path: Path, fetch: FakeFetcher, limit: int = 100 * MiB) -> BlobCache:
    return BlobCache(tmp_path / "cache", size_limit=limit, fetch=fetch, wait_timeout=10)


def adopt_files(cache: BlobCache, folder: Path, blobs: list[tuple[str, bytes]], tag: str) -> None:
    """Write each blob to its own file in `folder` and hand it to the cache to adopt."""
    for i, (key, data) in enumerate(blobs):
        f = folder / f"{tag}{i}"
        f.write_bytes(data)
        assert cache.adopt(key, f, len(data))


def moved_in(cache: BlobCache, timeout: float = 20.0) -> None:
    """Wait until the cache's adopter has moved every adopted file into the index."""
    deadline = time.monotonic() + timeout
    while cache._adopting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not cache._adopting


def read_all(cache: BlobCache, key: str, size: int) -> bytes:
    r = cache.open(key, size)
    try:
        out, off = bytearray(), 0
        while off < size:
            b = r.read(128 * 1024, off)
            assert b, "short read"
            out += b
            off += len(b)
        return bytes(out)
    finally:
        r.close()
        assert cache.flush(), "the cache did not settle"  # the index is written in the background


def test_concurrent_readers_share_one_download(tmp_path: Path) -> None:
    key, data = blob(3 * MiB + 17)
    fetch = FakeFetcher({key: data})
    fetch.hold_after = MiB
    cache = make(tmp_path, fetch)
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(read_all(cache, key, len(data))))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    fetch.release.set()
    for t in threads:
        t.join(30)
    assert results == [data] * 8
    assert fetch.calls == [(key, 0)]
    assert cache.contains(key)
    assert read_all(cache, key, len(data)) == data
    assert fetch.calls == [(key, 0)]
    assert cache.hits >= 1
    cache.close()


def test_reader_is_served_before_the_download_finishes(tmp_path: Path) -> None:
    key, data = blob(4 * MiB)
    fetch = FakeFetcher({key: data})
    fetch.hold_after = 256 * 1024
    cache = make(tmp_path, fetch)
    r = cache.open(key, len(data))
    assert r.read(100, 0) == data[:100]  # returns while the rest is held back
    assert not cache.contains(key)
    fetch.release.set()
    assert r.read(100, len(data) - 100) == data[-100:]
    r.close()
    cache.close()


def test_far_read_uses_a_range_request(tmp_path: Path) -> None:
    key, data = blob(40 * MiB)
    fetch = FakeFetcher({key: data})
    fetch.hold_after = MiB
    cache = make(tmp_path, fetch)
    r = cache.open(key, len(data))
    far = 30 * MiB + 5
    assert r.read(4096, far) == data[far : far + 4096]
    assert any(off > 0 for _, off in fetch.calls)
    fetch.release.set()
    assert r.read(10, len(data) - 10) == data[-10:]
    r.close()
    assert read_all(cache, key, len(data)) == data
    cache.close()


def test_finished_download_is_moved_not_copied(tmp_path: Path) -> None:
    key, data = blob(2 * MiB)
    fetch = FakeFetcher({key: data})
    fetch.hold_after = MiB
    cache = make(tmp_path, fetch)
    r = cache.open(key, len(data))
    partial = os.fstat(r._fd).st_ino
    fetch.release.set()
    assert r.read(10, len(data) - 10) == data[-10:]
    r.close()
    r2 = cache.open(key, len(data))
    assert os.fstat(r2._fd).st_ino == partial
    r2.close()
    cache.close()


def test_hash_mismatch_is_not_cached_and_the_next_read_retries(tmp_path: Path) -> None:
    key, data = blob(MiB)
    fetch = FakeFetcher({key: b"y" + data[1:]})
    cache = make(tmp_path, fetch)
    with pytest.raises(IntegrityError):
        read_all(cache, key, len(data))
    assert not cache.contains(key)
    # One failure, or two when a read came after the first had failed and retried it.
    failures = cache.integrity_failures
    assert failures in (1, 2)
    fetch.blobs[key] = data
    assert read_all(cache, key, len(data)) == data
    assert cache.contains(key)
    assert len(fetch.calls) == failures + 1
    cache.close()


def test_short_download_is_not_cached(tmp_path: Path) -> None:
    key, data = blob(MiB)
    fetch = FakeFetcher({key: data[:-1000]})
    cache = make(tmp_path, fetch)
    r = cache.open(key, len(data))
    with pytest.raises(IntegrityError):
        r.read(100, len(data) - 100)
    assert not cache.contains(key)
    fetch.blobs[key] = data
    assert r.read(100, len(data) - 100) == data[-100:]  # the same handle retries
    r.close()
    assert cache.contains(key)
    cache.close()


def test_unreachable_fails_then_recovers(tmp_path: Path) -> None:
    key, data = blob(MiB)
    fetch = FakeFetcher({key: data})
    fetch.fail = Unreachable("server away")
    cache = make(tmp_path, fetch)
    with pytest.raises(Unreachable):
        read_all(cache, key, len(data))
    fetch.fail = None
    assert read_all(cache, key, len(data)) == data
    cache.close()


def test_least_recently_used_is_evicted(tmp_path: Path) -> None:
    blobs = dict(blob(MiB, seed) for seed in range(4))
    keys = list(blobs)
    fetch = FakeFetcher(blobs)
    cache = make(tmp_path, fetch, limit=int(3.5 * MiB))
    for k in keys[:3]:
        read_all(cache, k, MiB)
    read_all(cache, keys[0], MiB)  # keys[0] is now more recently used than keys[1]
    read_all(cache, keys[3], MiB)
    assert cache.contains(keys[0])
    assert not cache.contains(keys[1])
    assert cache.contains(keys[2])
    assert cache.contains(keys[3])
    assert cache.volume() <= 3.5 * MiB
    cache.close()


def test_blob_open_for_reading_is_never_evicted(tmp_path: Path) -> None:
    blobs = dict(blob(MiB, seed) for seed in range(4))
    keys = list(blobs)
    fetch = FakeFetcher(blobs)
    cache = make(tmp_path, fetch, limit=int(2.5 * MiB))
    read_all(cache, keys[0], MiB)
    pinned = cache.open(keys[0], MiB)
    for k in keys[1:]:
        read_all(cache, k, MiB)
    assert cache.contains(keys[0])
    assert pinned.read(MiB, 0) == blobs[keys[0]]
    pinned.close()
    cache.close()


def test_eviction_walks_past_more_pinned_blobs_than_one_batch(tmp_path: Path) -> None:
    # Eviction reads the oldest rows a batch at a time: blobs open for reading at the front of
    # the order (more than a batch of them) are skipped, and the next oldest go.
    size = 40 * 1024  # kept in files (smaller ones live in the index)
    old = [blob(size, seed) for seed in range(70)]
    new = [blob(size, seed) for seed in range(70, 170)]
    cache = make(tmp_path, FakeFetcher({}), limit=1 << 30)
    adopt_files(cache, tmp_path, old, "o")
    moved_in(cache)
    readers = [cache.open(key, len(data)) for key, data in old]  # pinned, and used just now
    time.sleep(0.05)
    adopt_files(cache, tmp_path, new, "n")
    moved_in(cache)
    cache.size_limit = cache.volume() - 10 * size  # about ten blobs too many
    cache._cull()
    assert all(cache.contains(key) for key, _ in old)
    gone = [key for key, _ in new if not cache.contains(key)]
    assert 10 <= len(gone) <= 12
    assert gone == [key for key, _ in new[: len(gone)]]  # the oldest unpinned ones
    for r in readers:
        r.close()
    cache.close()


def test_empty_blob_needs_no_download(tmp_path: Path) -> None:
    fetch = FakeFetcher({})
    cache = make(tmp_path, fetch)
    r = cache.open(hashlib.sha1(b"").hexdigest(), 0)
    assert r.read(10, 0) == b""
    r.close()
    assert fetch.calls == []
    cache.close()


def test_cache_dir_is_private(tmp_path: Path) -> None:
    key, data = blob(MiB)
    cache = make(tmp_path, FakeFetcher({key: data}))
    assert read_all(cache, key, len(data)) == data
    assert cache.contains(key)
    root = tmp_path / "cache"
    modes = {str(root): root.stat().st_mode & 0o777}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            modes[os.path.relpath(path, root)] = os.stat(path).st_mode & 0o777
    assert any(p.startswith("blobs/") and p.endswith(".val") for p in modes)  # a blob file
    assert "blobs/cache.db" in modes
    wrong = {
        p: oct(m) for p, m in modes.items() if m != (0o700 if os.path.isdir(root / p) else 0o600)
    }
    assert not wrong, wrong
    cache.close()


def test_an_existing_index_is_made_private(tmp_path: Path) -> None:
    cache = make(tmp_path, FakeFetcher({}))
    cache.close()
    db = tmp_path / "cache" / "blobs" / "cache.db"
    os.chmod(db, 0o644)
    cache = make(tmp_path, FakeFetcher({}))
    assert db.stat().st_mode & 0o777 == 0o600
    cache.close()


def test_big_blob_hashed_off_thread_is_verified(tmp_path: Path) -> None:
    """Blobs of 8 MiB and more are hashed in a thread of their own: still checked, still retried."""
    key, data = blob(9 * MiB)
    fetch = FakeFetcher({key: data[:-1] + b"\0"})
    cache = make(tmp_path, fetch)
    with pytest.raises(IntegrityError):
        read_all(cache, key, len(data))
    assert not cache.contains(key)
    fetch.blobs[key] = data
    assert read_all(cache, key, len(data)) == data
    assert cache.contains(key)
    cache.close()


def test_many_waiting_readers_each_get_their_bytes(tmp_path: Path) -> None:
    """Readers waiting at different offsets are woken as their own bytes arrive."""
    key, data = blob(4 * MiB)
    fetch = FakeFetcher({key: data})
    fetch.hold_after = 0
    cache = make(tmp_path, fetch)
    readers = [cache.open(key, len(data)) for _ in range(8)]
    got: dict[int, bytes] = {}

    def read(i: int) -> None:
        got[i] = readers[i].read(128 * 1024, i * 256 * 1024)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    fetch.release.set()
    for t in threads:
        t.join(10)
    assert all(got[i] == data[i * 256 * 1024 : i * 256 * 1024 + 128 * 1024] for i in range(8))
    for r in readers:
        r.close()
    assert fetch.calls == [(key, 0)]
    cache.close()


class _IntoStream:
    """A fetch result that also offers `readinto`, as the real client's BlobStream does."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step
        self.into_calls = 0

    def __iter__(self) -> _IntoStream:  # Range extents iterate
        return self

    def __next__(self) -> bytes:
        if self._pos >= len(self._data):
            raise StopIteration
        self._pos += self._step
        return self._data[self._pos - self._step : self._pos]

    def readinto(self, buf: memoryview) -> int:
        self.into_calls += 1
        n = min(len(buf), self._step, len(self._data) - self._pos)
        buf[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


@pytest.mark.parametrize("size", [5000, 20 * MiB + 3])  # hashed inline / in the hasher thread
def test_download_uses_readinto_and_verifies(tmp_path: Path, size: int) -> None:
    key, data = blob(size)
    bad_key, bad_data = blob(size, seed=7)
    corrupt = bytearray(bad_data)
    corrupt[size // 2] ^= 1
    served = {key: data, bad_key: bytes(corrupt)}
    streams: list[_IntoStream] = []

    def fetch(k: str, offset: int) -> _IntoStream:
        streams.append(_IntoStream(served[k][offset:], 300_000))
        return streams[-1]

    cache = BlobCache(tmp_path / "cache", size_limit=100 * MiB, fetch=fetch, wait_timeout=10)
    try:
        assert read_all(cache, key, size) == data  # ring buffers reused: bytes still right
        assert cache.contains(key)
        assert streams[0].into_calls > 1
        with pytest.raises(IntegrityError):
            read_all(cache, bad_key, size)
        assert not cache.contains(bad_key)
        assert cache.integrity_failures >= 1
    finally:
        cache.close()


def test_readinto_download_longer_than_listed_is_refused(tmp_path: Path) -> None:
    key, data = blob(4096)
    cache = BlobCache(
        tmp_path / "cache",
        size_limit=MiB,
        fetch=lambda k, o: _IntoStream(data + b"more", 1 << 20),
        wait_timeout=10,
    )
    try:
        with pytest.raises(IntegrityError):
            read_all(cache, key, len(data))
        assert not cache.contains(key)
    finally:
        cache.close()


def test_read_into_fills_the_buffer_cold_and_cached(tmp_path: Path) -> None:
    key, data = blob(3 * MiB + 5)
    fetch = FakeFetcher({key: data})
    fetch.hold_after = MiB
    cache = make(tmp_path, fetch)
    r = cache.open(key, len(data))
    buf = bytearray(4096)
    assert r.read_into(memoryview(buf), 10) == 4096  # served while the rest is held back
    assert bytes(buf) == data[10:4106]
    fetch.release.set()
    tail = bytearray(100)
    assert r.read_into(memoryview(tail), len(data) - 40) == 40  # the verified end
    assert bytes(tail[:40]) == data[-40:]
    assert r.read_into(memoryview(tail), len(data)) == 0
    r.close()
    r = cache.open(key, len(data))
    assert r.complete
    out = bytearray(len(data))
    assert r.read_into(memoryview(out), 0) == len(data)
    assert bytes(out) == data
    r.close()
    cache.close()


def resident_bytes(path: str) -> int:
    """Bytes of `path` in the page cache, by util-linux fincore."""
    import subprocess

    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", path],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return int(out.stdout.split()[0])


@pytest.mark.skipif(not Path("/usr/bin/fincore").exists(), reason="needs util-linux fincore")
def test_big_download_keeps_only_its_tail_in_the_page_cache(tmp_path: Path) -> None:
    # The mount's own page cache holds what readers were served: the cache file must not
    # hold the same bytes in RAM a second time.
    key, data = blob(64 * MiB)
    cache = make(tmp_path, FakeFetcher({key: data}))
    assert read_all(cache, key, len(data)) == data
    r = cache.open(key, len(data))
    path = f"/proc/self/fd/{r._fd}"
    resident = resident_bytes(os.path.realpath(path))
    r.close()
    cache.close()
    assert resident <= 32 * MiB, resident


def test_adopted_file_is_served_at_once_then_moved_in_not_copied(tmp_path: Path) -> None:
    key, data = blob(MiB + 3)
    fetch = FakeFetcher({})
    cache = make(tmp_path, fetch)
    staged = tmp_path / "staged"
    staged.write_bytes(data)
    inode = staged.stat().st_ino
    assert cache.adopt(key, staged, len(data))
    assert cache.contains(key)
    assert read_all(cache, key, len(data)) == data  # pending or moved: never downloaded
    deadline = time.monotonic() + 10
    while staged.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not staged.exists()
    other = tmp_path / "other"
    other.write_bytes(data)
    # Already cached: the file is taken and dropped, the cached copy stays. (The key leaves the
    # adoption queue just after its file was renamed in: until then adopt refuses, untouched.)
    deadline = time.monotonic() + 10
    while not cache.adopt(key, other, len(data)):
        assert other.exists()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    deadline = time.monotonic() + 10
    while other.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not other.exists()
    r = cache.open(key, len(data))
    assert os.fstat(r._fd).st_ino == inode
    r.close()
    assert fetch.calls == []
    cache.close()


def test_close_moves_pending_adoptions_in(tmp_path: Path) -> None:
    blobs = [blob(64 * 1024, seed) for seed in range(50)]
    cache = make(tmp_path, FakeFetcher({}))
    adopt_files(cache, tmp_path, blobs, "s")
    cache.close()
    reopened = make(tmp_path, FakeFetcher({}))
    assert all(reopened.contains(key) for key, _ in blobs)
    assert all(read_all(reopened, key, len(data)) == data for key, data in blobs)
    reopened.close()


def test_blobs_live_one_folder_deep_and_eviction_keeps_the_folders(tmp_path: Path) -> None:
    # diskcache's own layout made a folder or two per blob (and removed them on eviction):
    # each is a new inode. Ours is one level of at most 256 folders, kept once made.
    size = 40 * 1024  # above the small blobs the index holds itself
    blobs = [blob(size, seed) for seed in range(300)]
    cache = make(tmp_path, FakeFetcher({}))
    adopt_files(cache, tmp_path, blobs, "s")
    cache.close()  # moves every adoption in
    root = tmp_path / "cache" / "blobs"

    def layout() -> tuple[set[str], list[Path]]:
        folders = [p for p in root.iterdir() if p.is_dir() and p.name != "partial"]
        return {d.name for d in folders}, [f for d in folders for f in d.iterdir()]

    folders, files = layout()
    assert len(files) == 300
    assert all(len(name) == 2 for name in folders)
    assert len(folders) <= 256
    assert all(f.is_file() and f.suffix == ".val" for f in files)

    # A small limit evicts most of them: the files go, every folder stays.
    small = make(tmp_path, FakeFetcher({}), limit=150 * size)  # the index counts too
    key, data = blob(size, 999)
    (tmp_path / "last").write_bytes(data)
    assert small.adopt(key, tmp_path / "last", len(data))
    small.close()
    after, left = layout()
    assert 0 < len(left) < 150
    assert folders <= after
    reopened = make(tmp_path, FakeFetcher({}))
    kept = [(k, d) for k, d in [*blobs, (key, data)] if reopened.contains(k)]
    assert len(kept) == len(left)
    assert all(read_all(reopened, k, len(d)) == d for k, d in kept)
    reopened.close()


def test_small_adopted_file_is_kept_in_the_index_and_its_file_let_go(tmp_path: Path) -> None:
    # The uploaded file's inode is not linked into the cache: the local layer reuses it.
    (key, data), (bad_key, bad), (new_key, new) = (blob(10 * 1024, s) for s in (1, 2, 3))
    cache = make(tmp_path, FakeFetcher({}))
    staged, short, changed = tmp_path / "staged", tmp_path / "short", tmp_path / "changed"
    staged.write_bytes(data)
    short.write_bytes(bad[:-1])  # not the size the upload reported
    changed.write_bytes(new[:-1] + b"!")  # a writer changed it after the upload: same size
    assert cache.adopt(key, staged, len(data))
    assert cache.adopt(bad_key, short, len(bad))
    assert cache.adopt(new_key, changed, len(new))
    moved_in(cache)
    assert not staged.exists()
    assert not short.exists()
    assert not changed.exists()
    assert read_all(cache, key, len(data)) == data
    assert not cache.contains(bad_key)
    assert not cache.contains(new_key)
    cache.close()
    blob_files = [f for f in (tmp_path / "cache" / "blobs").rglob("*.val")]
    assert blob_files == []
    reopened = make(tmp_path, FakeFetcher({}))
    assert read_all(reopened, key, len(data)) == data
    assert not reopened.contains(bad_key)
    reopened.close()


def test_a_file_that_cannot_move_in_does_not_keep_the_others_out(tmp_path: Path) -> None:
    blobs = [blob(4096, seed) for seed in range(3)]
    cache = make(tmp_path, FakeFetcher({}))
    for i, (key, data) in enumerate(blobs):
        f = tmp_path / f"s{i}"
        if i != 1:  # the middle one has vanished by the time it is moved
            f.write_bytes(data)
        assert cache.adopt(key, f, len(data))
    cache.close()
    reopened = make(tmp_path, FakeFetcher({}))
    assert [reopened.contains(key) for key, _ in blobs] == [True, False, True]
    assert read_all(reopened, blobs[2][0], 4096) == blobs[2][1]
    reopened.close()


def test_first_bytes_are_served_while_the_server_holds_the_rest(tmp_path: Path) -> None:
    # A real HTTP download (readinto into the cache's buffers): a first read waits only for
    # its own bytes, not for a whole receive buffer to fill.
    from dominofs.api import DominoClient
    from tests.client.hostile import Answer, hostile_server

    key, data = blob(3 * MiB)
    with hostile_server([Answer(200, data, pause=(100 * 1024, 30.0))]) as srv:
        client = DominoClient(srv.url, "k" * 20, retries=0, read_timeout=60)
        remote = client.project("alice/demo")
        cache = BlobCache(
            tmp_path / "cache",
            size_limit=100 * MiB,
            fetch=lambda k, offset: remote.iter_blob(k, offset=offset),
            wait_timeout=60,
        )
        reader = cache.open(key, len(data))
        started = time.monotonic()
        assert reader.read(100, 0) == data[:100]
        assert time.monotonic() - started < 10  # the server holds the rest for 30 s
        reader.close()
    # The server sent the rest on leaving its context: the download completes and verifies.
    assert read_all(cache, key, len(data)) == data
    cache.close()
    client.close()


def test_small_blobs_need_no_file_and_survive_a_reopen(tmp_path: Path) -> None:
    # A small blob is received into memory and kept in the index itself: no partial file, no
    # blob file (a new inode costs a millisecond of system CPU on this VM).
    blobs = dict(blob(10 * 1024, seed) for seed in range(20))
    fetch = FakeFetcher(blobs)
    cache = make(tmp_path, fetch)
    for key, data in blobs.items():
        assert read_all(cache, key, len(data)) == data
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix == ".val"]
    assert files == []
    assert not any((tmp_path / "cache" / "partial").iterdir())
    cache.close()
    again = make(tmp_path, fetch)
    assert all(read_all(again, k, len(d)) == d for k, d in blobs.items())
    assert len(fetch.calls) == len(blobs)  # every blob came from the index the second time
    again.close()


def test_a_corrupt_small_blob_is_never_cached(tmp_path: Path) -> None:
    key, data = blob(4096)
    fetch = FakeFetcher({key: b"z" + data[1:]})
    cache = make(tmp_path, fetch)
    with pytest.raises(IntegrityError):
        read_all(cache, key, len(data))
    assert not cache.contains(key)
    fetch.blobs[key] = data
    assert read_all(cache, key, len(data)) == data
    cache.close()


def test_reads_racing_after_a_failed_download_retry_it_once_and_keep_a_good_fd(
    tmp_path: Path,
) -> None:
    # The kernel sends one open file's reads on several threads at once: each that finds the
    # download failed retries it. The reader's fd must stay open for all of them.
    blobs = dict(blob(2 * MiB, seed) for seed in range(20))
    fetch = FakeFetcher(blobs)
    cache = make(tmp_path, fetch)
    for key, data in blobs.items():
        fetch.fail = Unreachable("down")
        r = cache.open(key, len(data))
        with pytest.raises(Unreachable):
            r.read(4096, 0)
        fetch.fail = None
        got, errors = racing_reads(r, [i * 65536 for i in range(8)], 65536)
        assert errors == []
        assert all(got[o] == data[o : o + 65536] for o in got)
        r.close()
    cache.close()


def racing_reads(
    r: BlobReader, offsets: list[int], size: int
) -> tuple[dict[int, bytes], list[BaseException]]:
    """`r.read(size, offset)` for each offset, on threads let go at once."""
    start = threading.Barrier(len(offsets))
    got: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def read_at(offset: int) -> None:
        start.wait()
        try:
            got[offset] = r.read(size, offset)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read_at, args=(o,)) for o in offsets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return got, errors
