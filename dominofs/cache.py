"""The blob cache: blob bytes on local disk, keyed by blob key, size-bounded, least recently used.

Owns: the cache directory (shared by every mount of the user), one download per key however
many readers, serving readers while their bytes are still arriving, Range requests for reads
far ahead of the download, integrity checks before anything enters the cache, pinning of blobs
open for reading, and eviction. Must not know paths, trees, FUSE or HTTP: bytes come from a
`Fetch` callable (cli hands down `Remote.iter_blob`), and every failure is an errors.* error.

Layout and why:
- The index and the size/LRU bookkeeping are a diskcache.Cache (`eviction_policy=
  'least-recently-used'`; diskcache's default is least-recently-stored). Every blob is stored as
  a file diskcache accounts and deletes, in one level of 256 folders kept once made (diskcache's
  own two random levels made a new folder, a new inode, for nearly every blob).
- A download streams into `partial/<random>` inside the same directory (same filesystem). When it
  is complete and verified, `BlobDisk.store` *renames* that file into diskcache's layout: the
  bytes are moved, never copied (diskcache's `set(read=True)` would copy them). A short download
  or a hash mismatch is unlinked and never enters the index; the next read retries.
- Readers keep an fd of the blob file and read it with `os.pread` (or `preadv` straight into
  libfuse's buffer): once a blob is complete the read path takes no lock and makes no copy
  beyond the one pread does. Pages well behind a big download's end are written back and
  dropped (pagecache.py): the mount's page cache keeps what readers were served, so the bytes
  are not held in RAM twice. The fd survives the rename
  into the cache, so a reader that started on a partial download never needs to reopen.
- Eviction is ours, not diskcache's auto-cull (`cull_limit=0`): we walk the LRU order (the
  `access_time` column diskcache keeps for this policy) and skip pinned keys, so a blob open for
  reading in this process is never evicted from under its reader. Another process sharing the
  cache cannot see our pins; if it evicts such a blob, POSIX keeps the unlinked inode alive for
  our open fd, so the reader still never notices.
- Keys that look like a SHA-1 (40 hex) are verified against sha1(content) when `verify` is set
  (the local server's keys are sha1 of content). Bytes served to a reader before the download
  finished are not yet verified; they never reach the cache if the hash turns out wrong.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache

from .cachedisk import BlobDisk, MoveIn, private_index, read_small
from .config import ensure_private_dir
from .downloads import SMALL_BLOB, Downloads, Fetch, Workers, _Download
from .errors import Unreachable

log = logging.getLogger(__name__)

_ADOPT_BATCH = 256  # adopted files moved into the index per SQLite transaction
_CULL_BATCH = 64  # eviction candidates read per query, oldest first
_SMALL_BYTES = 32 << 20  # small blobs also kept in memory, at most (their hits read no index)
_KNOWN_MAX = 1 << 20  # blob files whose place this process remembers (no index read on a hit)
_TOUCH_EVERY = 2.0  # seconds between writes of the hits' last-use times


class BlobReader:
    """An open blob: `read` answers from the local file (or, for a small blob, from memory),
    waiting only for bytes not yet here."""

    __slots__ = ("_cache", "_dl", "_fd", "_mem", "_open", "key", "size")

    def __init__(
        self,
        cache: BlobCache,
        key: str,
        size: int,
        fd: int,
        dl: _Download | None,
        mem: bytes | bytearray | None = None,
    ):
        self._cache = cache
        self.key = key
        self.size = size
        self._fd = fd
        self._dl = dl
        self._mem = mem if mem is not None or dl is None else dl.mem
        self._open = True

    def read(self, size: int, offset: int) -> bytes:
        """Up to `size` bytes at `offset` (fewer only at the end of the blob).

        Raises:
            DominoError: the download failed (Unreachable, IntegrityError, NotFound, ...).
        """
        dl = self._dl
        if dl is not None and not dl.arrived >= offset + size < self.size:
            size = self._cache._await(self, size, offset)  # may replace the fd (a retry)
        mem = self._mem
        if mem is not None:
            return bytes(mem[offset : offset + size])
        return os.pread(self._fd, size, offset)  # the fast path: no lock, one copy

    def read_into(self, buf: memoryview, offset: int) -> int:
        """Like `read`, into `buf` (its length is the size asked for); returns the count.

        The FUSE read path: the bytes go from the page cache straight into libfuse's buffer.
        """
        dl = self._dl
        size = len(buf)
        if dl is not None and not dl.arrived >= offset + size < self.size:
            size = self._cache._await(self, size, offset)  # may replace the fd (a retry)
            if not size:
                return 0
        mem = self._mem
        if mem is not None:
            chunk = memoryview(mem)[offset : offset + size]
            buf[: len(chunk)] = chunk
            return len(chunk)
        return os.preadv(self._fd, (buf[:size],), offset)

    @property
    def complete(self) -> bool:
        """True when the whole blob is here and verified (a cache hit, or its download done)."""
        dl = self._dl
        return dl is None or dl.done

    def close(self) -> None:
        self._cache._release(self)


class BlobCache(Downloads):
    """Blob bytes on disk, shared by every mount of the user (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        size_limit: int,
        fetch: Fetch,
        verify: bool = True,
        wait_timeout: float = 60.0,
        range_gap: int = 8 << 20,
        range_span: int = 32 << 20,
    ) -> None:
        self.directory = ensure_private_dir(Path(directory))
        self._partial = ensure_private_dir(self.directory / "partial")
        self.size_limit = size_limit
        self._fetch = fetch
        self._verify = verify
        self._wait_timeout = wait_timeout
        self._range_gap = range_gap
        self._range_span = range_span
        self._dc = diskcache.Cache(
            str(private_index(self.directory / "blobs")),
            disk=BlobDisk,
            size_limit=size_limit,
            eviction_policy="least-recently-used",
            cull_limit=0,  # we cull ourselves, skipping pinned keys
        )
        self._lock = threading.Lock()  # guards _inflight, _pins, counters
        # One index write at a time from this process: SQLite's busy handler would otherwise
        # put concurrent writers (a burst of uploads adopted at once) to sleep for ms each.
        self._retry_lock = threading.Lock()  # one reattach of a failed download at a time
        self._index_lock = threading.Lock()
        self._inflight: dict[str, _Download] = {}
        self._workers = Workers("blob")
        # key -> (path, size) of adopted files not yet in the index; served from `path`.
        self._adopting: dict[str, tuple[str, int]] = {}
        self._moving: set[str] = set()
        self._adopt_wake = threading.Condition(self._lock)
        self._adopter: threading.Thread | None = None
        self._settled = threading.Condition(self._lock)  # the adopter finished a round
        self._settling = False
        self._pins: dict[str, int] = {}
        self._known: dict[str, str] = {}  # key -> its blob file (no index read on a hit)
        self._small: OrderedDict[str, bytes | bytearray] = OrderedDict()  # small blobs, LRU
        self._small_bytes = 0
        self._small_lock = threading.Lock()  # taken after self._lock, never before it
        self._touched: dict[str, float] = {}  # key -> last use, not written to the index yet
        self._closed = False
        self.hits = 0
        self.misses = 0
        self.downloads = 0
        self.prefetched = 0
        self.range_requests = 0
        self.bytes_downloaded = 0
        self.integrity_failures = 0
        self.last_error: str | None = None
        # Called (on the download thread, no lock held) with the key of a download that failed
        # after serving some bytes: whoever let those bytes be cached elsewhere drops them.
        self.on_failed: Callable[[str], None] | None = None
        self._clean_partials()

    # -- public --------------------------------------------------------------------------

    def open(self, key: str, size: int) -> BlobReader:
        """Open blob `key` of `size` bytes for reading; starts its download on a miss.

        Never waits for bytes: the first read does. Raises DominoError only when closing.
        """
        if self._closed:
            raise Unreachable("the mount is shutting down")
        if size == 0:
            return BlobReader(self, key, 0, os.open(os.devnull, os.O_RDONLY), None)
        reader = self._open_cached(key, size)
        if reader is not None:
            return reader
        with self._lock:
            self._pins[key] = self._pins.get(key, 0) + 1
        try:
            return self._attach(key, size)
        except BaseException:
            self._unpin(key)
            raise

    def adopt(self, key: str, path: Path, size: int) -> bool:
        """Make the finished file `path` (same filesystem) blob `key`: it is moved into the
        cache by a background thread, and served from where it is until then.

        The caller vouches that the bytes are the blob's (an upload's staged file) and hands
        `path` over: nothing else may rename or remove it. Returns False, leaving `path` alone,
        when the key is being downloaded or adopted. A key already in the index is not looked
        up here (one SQL read per upload, on the uploader's thread): the move drops `path`.
        """
        with self._lock:
            if self._closed or key in self._inflight or key in self._adopting:
                return False
            self._adopting[key] = (str(path), size)
            self._wake_adopter()
        return True

    def prefetch(self, key: str, size: int) -> bool:
        """Start downloading `key` for a reader expected soon, unless it is cached or on its
        way. Nothing waits for it and nothing pins it. True when a download started."""
        if self._closed or size <= 0 or key in self._known:
            return False
        with self._lock:
            if key in self._inflight or key in self._adopting:
                return False
        if key in self._dc:
            return False
        with self._lock:
            if self._closed or key in self._inflight or key in self._adopting:
                return False
            self._start(key, size, miss=False)
            self.prefetched += 1
        return True

    def downloading(self, key: str) -> bool:
        """True while `key`'s download is in flight."""
        return key in self._inflight

    def drop(self, key: str) -> None:
        """Forget `key` unless a reader has it open (a prefetch nobody read)."""
        with self._lock:
            if key in self._pins or key in self._inflight or key in self._adopting:
                return
        self._known.pop(key, None)
        self._touched.pop(key, None)
        self._forget_small(key)
        with self._index_lock, contextlib.suppress(OSError, sqlite3.Error, diskcache.Timeout):
            self._dc.delete(key)

    def contains(self, key: str) -> bool:
        """True when the whole blob is in the cache (or being moved into it)."""
        return key in self._adopting or key in self._dc

    def _stored(self, dl: _Download) -> None:
        """A verified download: served from its partial file (a small one from memory) until
        the adopter moves it in."""
        with self._lock:
            if dl.mem is not None:
                self._keep_small(dl.key, dl.mem)
            self._adopting[dl.key] = (dl.path, dl.size)
            self._wake_adopter()

    def _wake_adopter(self) -> None:
        """Caller holds self._lock."""
        if self._adopter is None or not self._adopter.is_alive():
            self._adopter = threading.Thread(target=self._adopt_loop, name="adopt", daemon=True)
            self._adopter.start()
        self._adopt_wake.notify()

    def _adopt_loop(self) -> None:
        # One thread moves adopted files into the index: a burst of uploads landing at once
        # costs the uploaders nothing, and SQLite sees one writer instead of a dozen.
        # It also writes the last-use times of hits served without the index, every few s.
        while True:
            with self._lock:
                self._settling = False
                self._settled.notify_all()
                while not self._adopting_queue() and not self._closed:
                    if not self._adopt_wake.wait(_TOUCH_EVERY if self._touched else None):
                        break  # time to write the last-use times
                pending = self._adopting_queue()
                closed = self._closed
                self._settling = bool(pending)
            for start in range(0, len(pending), _ADOPT_BATCH):
                self._move_in(pending[start : start + _ADOPT_BATCH])
            if pending:
                self._cull()
            self._touch()
            if closed and not pending:
                with self._lock:
                    self._settling = False
                    self._settled.notify_all()
                return

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every verified download and adopted file is in the index and the cache
        is culled to its size (they get there in the background). True when they are."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._adopting or self._settling:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._settled.wait(min(remaining, 0.1))
        return True

    def _adopting_queue(self) -> list[tuple[str, tuple[str, int]]]:
        """The adoptions not yet started. Needs self._lock."""
        return [(k, v) for k, v in self._adopting.items() if k not in self._moving]

    def _move_in(self, batch: list[tuple[str, tuple[str, int]]]) -> None:
        """Move a batch of adopted files into the index in one SQLite transaction.

        A key leaves `_adopting` only once its row is committed: until then a reader that
        finds the file already renamed waits on `_index_lock` and then finds the row.
        """
        with self._lock:
            self._moving.update(key for key, _ in batch)
        try:
            with self._index_lock, self._dc.transact():
                for key, (path, size) in batch:
                    try:
                        if not path:  # a small blob received into memory: kept in the index
                            data = self._small.get(key)
                            if data is not None and key not in self._dc:
                                self._dc.set(key, bytes(data))
                        elif key in self._dc:
                            pass
                        elif size <= SMALL_BLOB:
                            # Kept in the index like a small download. The file's inode is
                            # then free for the local layer to reuse (a new one costs more).
                            data = read_small(path, size, key)
                            if data is not None:
                                self._dc.set(key, data)
                                self._keep_small(key, data)
                        else:
                            move = MoveIn(path, size)
                            self._dc.set(key, move)
                            self._known[key] = move.dest
                    except OSError as exc:  # this file only: the others still move in
                        log.warning("cannot move %s into the cache: %s", path, exc)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            log.warning("cannot move %d uploaded files into the cache: %s", len(batch), exc)
        finally:
            with self._lock:
                for key, _ in batch:
                    self._moving.discard(key)
                    self._adopting.pop(key, None)
            for _, (path, _size) in batch:
                if path:
                    with contextlib.suppress(OSError):
                        os.unlink(path)  # left only when the move failed or the key was there

    def stats(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "downloads": self.downloads,
            "prefetched": self.prefetched,
            "range_requests": self.range_requests,
            "bytes_downloaded": self.bytes_downloaded,
            "integrity_failures": self.integrity_failures,
            "downloading": len(self._inflight),
            "size_limit": self.size_limit,
            "last_error": self.last_error,
        }

    def volume(self) -> int:
        return int(self._dc.volume())

    def close(self) -> None:
        """Stop downloads (their partial files are dropped) and close the index."""
        with self._lock:
            self._closed = True
            downloads = list(self._inflight.values())
            self._adopt_wake.notify()
            adopter = self._adopter
        for dl in downloads:
            with dl.cond:
                dl.wake()
            dl.finished.wait(timeout=5)
            for t in list(dl.threads):
                t.join(timeout=5)
        if adopter is not None:
            adopter.join(timeout=30)  # what is pending still moves in before the index closes
        self._dc.close()

    # -- opening -------------------------------------------------------------------------

    def _open_cached(self, key: str, size: int) -> BlobReader | None:
        with self._lock:
            if key in self._inflight:
                return None
            self._pins[key] = self._pins.get(key, 0) + 1
            adopting = self._adopting.get(key)
        small = self._small.get(key)
        if small is not None:
            if len(small) == size:
                self._touched[key] = time.time()
                self.hits += 1
                return BlobReader(self, key, size, -1, None, small)
            self._small.pop(key, None)
        fd = -1
        if adopting is not None and adopting[0]:
            try:
                fd = os.open(adopting[0], os.O_RDONLY)
            except FileNotFoundError:
                # Renamed into the cache just now: the index has it once the move is done.
                with self._index_lock:
                    pass
        known = self._known.get(key) if fd < 0 else None
        if known is not None:
            # No index read: its last-use time is written later, with others (_touch).
            try:
                fd = os.open(known, os.O_RDONLY)
                self._touched[key] = time.time()
            except FileNotFoundError:  # evicted by another process sharing the cache
                self._known.pop(key, None)
        if fd < 0:
            try:
                fh = self._dc.get(key, default=None, read=True)
            except (OSError, diskcache.Timeout):
                fh = None  # evicted by another process between the index and the file
            if fh is None:
                self._unpin(key)
                return None
            if isinstance(fh, bytes | bytearray):  # a small blob, kept in the index itself
                if len(fh) != size:
                    self._dc.delete(key)
                    self._unpin(key)
                    return None
                self._keep_small(key, fh)
                if self._adopter is None:  # it writes the last-use times of later hits
                    with self._lock:
                        self._wake_adopter()
                self.hits += 1
                return BlobReader(self, key, size, -1, None, fh)
            fd = os.dup(fh.fileno())
            self._remember(key, fh.name)
            fh.close()
        if os.fstat(fd).st_size != size:
            # Not what the listing promised: forget it rather than serve it.
            os.close(fd)
            self._known.pop(key, None)
            self._dc.delete(key)
            self._unpin(key)
            return None
        self.hits += 1
        return BlobReader(self, key, size, fd, None)

    def _keep_small(self, key: str, data: bytes | bytearray) -> None:
        """Keep a small blob in memory too (at most _SMALL_BYTES of them): its next hit reads
        no index."""
        with self._small_lock:
            old = self._small.pop(key, None)
            if old is not None:
                self._small_bytes -= len(old)
            self._small[key] = data
            self._small_bytes += len(data)
            while self._small_bytes > _SMALL_BYTES and self._small:
                _, old = self._small.popitem(last=False)
                self._small_bytes -= len(old)

    def _forget_small(self, key: str) -> None:
        with self._small_lock:
            data = self._small.pop(key, None)
            if data is not None:
                self._small_bytes -= len(data)

    def _remember(self, key: str, path: object) -> None:
        """Keep where blob `key`'s file is: its next hit reads no index (the adopter, which
        writes the last-use times, runs from here on)."""
        if isinstance(path, str):
            if len(self._known) >= _KNOWN_MAX:
                self._known.pop(next(iter(self._known)))
            self._known[key] = path
            if self._adopter is None:
                with self._lock:
                    self._wake_adopter()

    def _touch(self) -> None:
        """Write the last-use times of the hits served without reading the index, in one
        transaction (diskcache's own get writes one per hit)."""
        touched, self._touched = self._touched, {}
        if not touched:
            return
        with contextlib.suppress(sqlite3.Error, diskcache.Timeout), self._index_lock:
            with self._dc.transact():
                # The access_time column diskcache's least-recently-used policy orders by.
                self._dc._con.executemany(
                    "UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1",
                    [(t, k) for k, t in touched.items()],
                )

    def _attach(self, key: str, size: int) -> BlobReader:
        """Join the key's download, starting one if there is none (pin already taken)."""
        try:
            fd, dl, mem = self._join(key, size)
        except BaseException:
            self._unpin(key)
            raise
        # dl None: it reached the cache in between (the pin taken by open() covers it).
        return BlobReader(self, key, size, fd, dl, mem)

    def _join(self, key: str, size: int) -> tuple[int, _Download | None, bytes | bytearray | None]:
        """(fd, download, bytes) of the key: a dup of an in-flight download's fd (or its
        memory, for a small blob), or the cached file's fd (or bytes)."""
        for _ in range(5):
            with self._lock:
                dl = self._inflight.get(key)
                if dl is None and key not in self._adopting and key not in self._dc:
                    dl = self._start(key, size)
                if dl is not None:
                    # dl.rfd stays open until the download leaves _inflight (under this lock),
                    # so the dup works even after the partial file was renamed or unlinked.
                    return (os.dup(dl.rfd) if dl.rfd >= 0 else -1), dl, dl.mem
            cached = self._open_cached(key, size)
            if cached is not None:
                fd = os.dup(cached._fd) if cached._fd >= 0 else -1
                mem = cached._mem
                cached.close()
                return fd, None, mem
        raise Unreachable(f"blob {key[:12]}: the cache keeps changing under this read; try again")

    def _release(self, reader: BlobReader) -> None:
        if reader._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(reader._fd)
            reader._fd = -1
        if reader._open:
            reader._open = False
            self._unpin(reader.key)

    def _unpin(self, key: str) -> None:
        with self._lock:
            n = self._pins.get(key, 0) - 1
            if n > 0:
                self._pins[key] = n
            else:
                self._pins.pop(key, None)

    # -- eviction ------------------------------------------------------------------------

    def _cull(self) -> None:
        """Evict least recently used blobs until the cache fits, skipping pinned ones."""
        excess = int(self._dc.volume()) - self.size_limit
        if excess <= 0:
            return
        self._touch()  # the order must count the hits not written yet
        # diskcache keeps access_time (indexed) for the least-recently-used policy; walk that
        # order a few rows at a time. Reading every row made each cull of a full cache of
        # 100,000 blobs cost 49 ms, and a full cache culls after every download and adoption.
        skipped = 0  # pinned rows before the next candidate (evicted rows leave the order)
        while excess > 0:
            rows = self._dc._sql(
                "SELECT key, size FROM Cache ORDER BY access_time LIMIT ? OFFSET ?",
                (_CULL_BATCH, skipped),
            ).fetchall()
            if not rows:
                return
            for key, size in rows:
                if excess <= 0:
                    return
                with self._lock:
                    pinned = key in self._pins
                if pinned:
                    skipped += 1
                elif self._dc.delete(key):
                    self._known.pop(key, None)
                    self._forget_small(key)
                    excess -= int(size or 0)

    def _clean_partials(self) -> None:
        """Drop partial files older than a day (left by a killed mount; live ones are newer)."""
        cutoff = time.time() - 86400
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._partial):
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
