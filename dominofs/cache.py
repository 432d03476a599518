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
  is complete and verified, `_BlobDisk.store` *renames* that file into diskcache's layout: the
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
import hashlib
import logging
import os
import queue
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache

from .config import ensure_private_dir
from .errors import DominoError, IntegrityError, Unreachable
from .pagecache import DropBehind

log = logging.getLogger(__name__)

Fetch = Callable[[str, int], Iterator[bytes]]
"""fetch(key, offset) -> an iterator of the blob's bytes from `offset` (raises errors.*)."""

_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_MODE_BINARY = 2  # diskcache.core.MODE_BINARY
_HASH_THREAD_MIN = 8 << 20  # blobs this big are hashed in a thread of their own
_RECV_BUFFER = 1 << 20  # a download receives into buffers this big (when its fetch can readinto)
_FIRST_RECV = 64 << 10  # ...except its first receive: what a first read waits for
_ADOPT_BATCH = 256  # adopted files moved into the index per SQLite transaction
_CULL_BATCH = 64  # eviction candidates read per query, oldest first
_RING = 8  # buffers per download hashed in a thread: the hasher's backlog is one less


@dataclass(frozen=True, slots=True)
class _MoveIn:
    """A value for `_BlobDisk.store`: move this finished file into the cache."""

    path: str
    size: int


class _BlobDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's Disk, plus storing a finished download by renaming it into place, in one
    level of at most 256 folders that are kept once made.

    diskcache's own layout is two random levels (65,536 folders), removed when emptied: nearly
    every blob stored made a folder or two, and evicting it removed them. Each new folder is a
    new inode, which costs (see the outbox's staging files); 256 folders of a 10 GiB cache of
    10 KiB blobs hold about 4,000 files each, which ext4's hashed directories handle well.
    """

    def filename(self, key: Any = diskcache.UNKNOWN, value: Any = diskcache.UNKNOWN) -> Any:
        name = os.urandom(16).hex()
        filename = os.path.join(name[:2], name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def store(self, value: Any, read: bool, key: Any = diskcache.UNKNOWN) -> Any:
        if isinstance(value, _MoveIn):
            filename, full_path = self.filename(key, value)
            _private_dirs(self._directory, os.path.dirname(full_path))
            os.rename(value.path, full_path)
            os.chmod(full_path, 0o600)  # an adopted upload keeps the mode it was staged with
            return value.size, _MODE_BINARY, filename, None
        return super().store(value, read, key)

    def remove(self, file_path: str) -> None:
        # The file only: an emptied folder stays for the next blob (and a store racing with a
        # removal never finds its folder gone).
        with contextlib.suppress(OSError):
            os.remove(os.path.join(self._directory, file_path))


@dataclass(eq=False)
class _Extent:
    """A Range download for a region far ahead of the main download."""

    start: int
    limit: int
    arrived: int  # absolute offset up to which bytes are in the file
    error: DominoError | None = None
    done: bool = False


@dataclass(eq=False)
class _Download:
    """One streaming download of one blob into a partial file."""

    key: str
    size: int
    path: str
    cond: threading.Condition
    arrived: int = 0
    rfd: int = -1  # read fd held while in flight, dup'ed by readers who join
    done: bool = False
    error: DominoError | None = None
    extents: list[_Extent] = field(default_factory=list)
    behind: DropBehind = field(default_factory=DropBehind)
    threads: list[threading.Thread] = field(default_factory=list)
    # Readers waiting for bytes: (absolute end they need, a lock they block on). Each is woken
    # only once its bytes are here (or on any other change of state), so a chunk arriving does
    # not wake every FUSE thread waiting further ahead.
    waiters: list[tuple[int, threading.Lock]] = field(default_factory=list)

    def wait(self, need: int, timeout: float) -> None:
        """Block until woken or `timeout`. Caller holds self.cond; released while waiting."""
        lock = threading.Lock()
        lock.acquire()
        entry = (need, lock)
        self.waiters.append(entry)
        self.cond.release()
        try:
            lock.acquire(True, timeout)
        finally:
            self.cond.acquire()
            with contextlib.suppress(ValueError):
                self.waiters.remove(entry)

    def wake(self, arrived: int | None = None) -> None:
        """Wake the waiters whose bytes are here (all when `arrived` is None). Hold self.cond."""
        if not self.waiters:
            return
        keep = []
        for entry in self.waiters:
            if arrived is None or entry[0] <= arrived:
                entry[1].release()
            else:
                keep.append(entry)
        self.waiters[:] = keep


class BlobReader:
    """An open blob: `read` answers from the local file, waiting only for bytes not yet here."""

    __slots__ = ("_cache", "_dl", "_fd", "key", "size")

    def __init__(self, cache: BlobCache, key: str, size: int, fd: int, dl: _Download | None):
        self._cache = cache
        self.key = key
        self.size = size
        self._fd = fd
        self._dl = dl

    def read(self, size: int, offset: int) -> bytes:
        """Up to `size` bytes at `offset` (fewer only at the end of the blob).

        Raises:
            DominoError: the download failed (Unreachable, IntegrityError, NotFound, ...).
        """
        dl = self._dl
        if dl is None or dl.arrived >= offset + size < self.size:
            return os.pread(self._fd, size, offset)  # the fast path: no lock, one copy
        n = self._cache._await(self, size, offset)  # may replace self._fd (a retry)
        return os.pread(self._fd, n, offset)

    def read_into(self, buf: memoryview, offset: int) -> int:
        """Like `read`, into `buf` (its length is the size asked for); returns the count.

        The FUSE read path: the bytes go from the page cache straight into libfuse's buffer.
        """
        dl = self._dl
        size = len(buf)
        if dl is None or dl.arrived >= offset + size < self.size:
            return os.preadv(self._fd, (buf,), offset)
        n = self._cache._await(self, size, offset)  # may replace self._fd (a retry)
        return os.preadv(self._fd, (buf[:n],), offset) if n else 0

    @property
    def complete(self) -> bool:
        """True when the whole blob is here and verified (a cache hit, or its download done)."""
        dl = self._dl
        return dl is None or dl.done

    def close(self) -> None:
        self._cache._release(self)


class BlobCache:
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
            str(_private_index(self.directory / "blobs")),
            disk=_BlobDisk,
            size_limit=size_limit,
            eviction_policy="least-recently-used",
            cull_limit=0,  # we cull ourselves, skipping pinned keys
        )
        self._lock = threading.Lock()  # guards _inflight, _pins, counters
        # One index write at a time from this process: SQLite's busy handler would otherwise
        # put concurrent writers (a burst of uploads adopted at once) to sleep for ms each.
        self._index_lock = threading.Lock()
        self._inflight: dict[str, _Download] = {}
        # key -> (path, size) of adopted files not yet in the index; served from `path`.
        self._adopting: dict[str, tuple[str, int]] = {}
        self._moving: set[str] = set()
        self._adopt_wake = threading.Condition(self._lock)
        self._adopter: threading.Thread | None = None
        self._pins: dict[str, int] = {}
        self._closed = False
        self.hits = 0
        self.misses = 0
        self.downloads = 0
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
            if self._adopter is None or not self._adopter.is_alive():
                self._adopter = threading.Thread(target=self._adopt_loop, name="adopt", daemon=True)
                self._adopter.start()
            self._adopt_wake.notify()
        return True

    def contains(self, key: str) -> bool:
        """True when the whole blob is in the cache (or being moved into it)."""
        return key in self._adopting or key in self._dc

    def _adopt_loop(self) -> None:
        # One thread moves adopted files into the index: a burst of uploads landing at once
        # costs the uploaders nothing, and SQLite sees one writer instead of a dozen.
        while True:
            with self._lock:
                while not self._adopting_queue() and not self._closed:
                    self._adopt_wake.wait()
                pending = self._adopting_queue()
                if not pending:
                    return
            for start in range(0, len(pending), _ADOPT_BATCH):
                self._move_in(pending[start : start + _ADOPT_BATCH])
            self._cull()

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
                        if key not in self._dc:
                            self._dc.set(key, _MoveIn(path, size))
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
                with contextlib.suppress(OSError):
                    os.unlink(path)  # left only when the move failed or the key was there

    def stats(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "downloads": self.downloads,
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
        fd = -1
        if adopting is not None:
            try:
                fd = os.open(adopting[0], os.O_RDONLY)
            except FileNotFoundError:
                # Renamed into the cache just now: the index has it once the move is done.
                with self._index_lock:
                    pass
        if fd < 0:
            try:
                fh = self._dc.get(key, default=None, read=True)
            except (OSError, diskcache.Timeout):
                fh = None  # evicted by another process between the index and the file
            if fh is None:
                self._unpin(key)
                return None
            fd = os.dup(fh.fileno())
            fh.close()
        if os.fstat(fd).st_size != size:
            # Not what the listing promised: forget it rather than serve it.
            os.close(fd)
            self._dc.delete(key)
            self._unpin(key)
            return None
        self.hits += 1
        return BlobReader(self, key, size, fd, None)

    def _attach(self, key: str, size: int) -> BlobReader:
        """Join the key's download, starting one if there is none (pin already taken)."""
        try:
            fd, dl = self._join(key, size)
        except BaseException:
            self._unpin(key)
            raise
        if dl is None:
            # It reached the cache in between (the pin taken by open() covers it).
            return BlobReader(self, key, size, fd, None)
        return BlobReader(self, key, size, fd, dl)

    def _join(self, key: str, size: int) -> tuple[int, _Download | None]:
        """An fd on the key's bytes: a dup of an in-flight download's, or the cached file's."""
        for _ in range(5):
            with self._lock:
                dl = self._inflight.get(key)
                if dl is None and key not in self._dc:
                    dl = self._start(key, size)
                if dl is not None:
                    # dl.rfd stays open until the download leaves _inflight (under this lock),
                    # so the dup works even after the partial file was renamed or unlinked.
                    return os.dup(dl.rfd), dl
            cached = self._open_cached(key, size)
            if cached is not None:
                fd = os.dup(cached._fd)
                cached.close()
                return fd, None
        raise Unreachable(f"blob {key[:12]}: the cache keeps changing under this read; try again")

    def _start(self, key: str, size: int) -> _Download:
        """Start the download of `key`. Caller holds self._lock."""
        path = str(self._partial / f"{key[:40]}.{uuid.uuid4().hex[:12]}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        dl = _Download(key=key, size=size, path=path, cond=threading.Condition())
        dl.rfd = os.open(path, os.O_RDONLY)
        self._inflight[key] = dl
        self.misses += 1
        self.downloads += 1
        t = threading.Thread(
            target=self._download, args=(dl, fd), name=f"blob-{key[:8]}", daemon=True
        )
        dl.threads.append(t)
        t.start()
        return dl

    # -- reading -------------------------------------------------------------------------

    def _await(self, reader: BlobReader, size: int, offset: int) -> int:
        """Wait until [offset, offset+size) has arrived (main stream or a Range extent);
        returns how many bytes from `offset` the reader may now read from its fd."""
        end = min(offset + size, reader.size)
        if offset >= end:
            return 0
        dl = reader._dl
        assert dl is not None
        if dl.error is not None:
            dl = self._retry(reader)
            if dl is None:
                return end - offset
        deadline = time.monotonic() + self._wait_timeout
        with dl.cond:
            while True:
                if dl.done:
                    reader._dl = None  # complete and in the cache: the fast path from now on
                    break
                if dl.error is not None:
                    raise dl.error
                if dl.arrived >= end and end < reader.size:
                    break
                # The last bytes are served once the whole blob is verified, so a reader that
                # reads to the end gets EIO rather than a silently corrupt file: a Range extent
                # holding them (unverified) does not serve them.
                covered = any(e.start <= offset and e.arrived >= end for e in dl.extents)
                if covered and end < reader.size:
                    break
                if self._closed:
                    raise Unreachable("the mount is shutting down")
                pending = [e for e in dl.extents if e.start <= offset < e.limit and not e.done]
                failed = [e for e in dl.extents if e.start <= offset < e.limit and e.error]
                if failed and not pending:
                    error = failed[-1].error
                    assert error is not None
                    dl.extents.remove(failed[-1])  # the next read may try again
                    raise error
                if not covered and not pending and offset > dl.arrived + self._range_gap:
                    self._start_extent(dl, offset)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unreachable(f"blob {dl.key[:12]}: no bytes arrived in time")
                # The last bytes wait for the verified end: only a state change wakes them.
                dl.wait(end if end < reader.size else reader.size + 1, min(remaining, 1.0))
        return end - offset

    def _retry(self, reader: BlobReader) -> _Download | None:
        """The reader's download failed earlier: reattach to a fresh one (or the cached blob)."""
        fd, dl = self._join(reader.key, reader.size)
        os.close(reader._fd)
        reader._fd, reader._dl = fd, dl
        return dl

    def _release(self, reader: BlobReader) -> None:
        if reader._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(reader._fd)
            reader._fd = -1
            self._unpin(reader.key)

    def _unpin(self, key: str) -> None:
        with self._lock:
            n = self._pins.get(key, 0) - 1
            if n > 0:
                self._pins[key] = n
            else:
                self._pins.pop(key, None)

    # -- downloading ---------------------------------------------------------------------

    def _download(self, dl: _Download, fd: int) -> None:
        digest: Any = None
        if self._verify_key(dl.key):
            # A big blob is hashed in a thread of its own, overlapping the next recv and write.
            digest = (
                _Hasher(_RING - 1)
                if dl.size >= _HASH_THREAD_MIN
                else hashlib.sha1(usedforsecurity=False)
            )
        stored = False
        chunks: Iterator[bytes] | None = None
        try:
            chunks = self._fetch(dl.key, 0)
            readinto = getattr(chunks, "readinto", None)
            if callable(readinto):
                self._receive_into(dl, fd, readinto, digest)
            else:
                for chunk in chunks:
                    self._arrive(dl, fd, chunk, digest)
            if dl.arrived != dl.size:
                raise IntegrityError(
                    f"blob {dl.key[:12]}: short download ({dl.arrived} of {dl.size} bytes)"
                )
            if digest is not None and digest.hexdigest() != dl.key:
                raise IntegrityError(f"blob {dl.key[:12]}: content does not match its key")
            os.close(fd)
            fd = -1
            with self._index_lock:
                self._dc.set(dl.key, _MoveIn(dl.path, dl.size))
            stored = True
            self._cull()
        except DominoError as exc:
            self._fail(dl, exc)
        except Exception as exc:
            log.exception("blob %s: download failed unexpectedly", dl.key[:12])
            self._fail(dl, DominoError(f"blob {dl.key[:12]}: download failed: {exc}"))
        finally:
            if isinstance(digest, _Hasher):
                digest.close()
            if chunks is not None and hasattr(chunks, "close"):
                with contextlib.suppress(Exception):
                    chunks.close()
            if fd >= 0:
                os.close(fd)
            if stored:
                self._leave(dl)
                with dl.cond:
                    dl.done = True
                    dl.wake()

    def _receive_into(
        self, dl: _Download, fd: int, readinto: Callable[[memoryview], int], digest: Any
    ) -> None:
        """Receive with `readinto` into reused buffers: no bytes object per chunk.

        A hashing thread holds at most _RING - 1 filled buffers (its backlog), so the buffer
        being filled is never one it has yet to hash.
        """
        count = _RING if isinstance(digest, _Hasher) else 1
        size = min(_RECV_BUFFER, dl.size + 1)  # +1: a server sending too much is noticed
        # Buffers are made when first needed: zeroing all of them before the first recv delayed
        # the first byte by 8-16 ms here (fresh memory is slow to touch on a VM). The first
        # recv is small too: readinto returns only once its buffer is full.
        ring: list[memoryview] = []
        i = 0
        first = True
        while True:
            if i == len(ring):
                ring.append(memoryview(bytearray(size)))
            buf = ring[i]
            i = (i + 1) % count
            if first:
                buf, first = buf[:_FIRST_RECV], False
            n = readinto(buf)
            if not n:
                return
            self._arrive(dl, fd, buf[:n], digest)

    def _arrive(self, dl: _Download, fd: int, chunk: bytes | memoryview, digest: Any) -> None:
        """Write one chunk of the main download to the partial file and tell the readers."""
        if self._closed:
            raise Unreachable("the mount is shutting down")
        n = len(chunk)
        arrived = dl.arrived
        if arrived + n > dl.size:
            raise IntegrityError(
                f"blob {dl.key[:12]}: server sent more than the listed {dl.size} bytes"
            )
        _write_all(fd, chunk)
        dl.behind.wrote(fd, arrived + n)
        if digest is not None:
            digest.update(chunk)
        with dl.cond:
            dl.arrived = arrived + n
            dl.wake(arrived + n)
        self.bytes_downloaded += n

    def _fail(self, dl: _Download, exc: DominoError) -> None:
        if isinstance(exc, IntegrityError):
            self.integrity_failures += 1
        self.last_error = str(exc)
        log.warning("%s", exc)
        self._leave(dl)
        with contextlib.suppress(OSError):
            os.unlink(dl.path)
        with dl.cond:
            dl.error = exc
            dl.wake()
        # After the waiters are woken: dropping the kernel's pages waits for reads in flight.
        hook = self.on_failed
        if hook is not None and dl.arrived > 0:
            try:
                hook(dl.key)
            except Exception:
                log.exception("blob %s: the failure hook failed", dl.key[:12])

    def _leave(self, dl: _Download) -> None:
        with self._lock:
            if self._inflight.get(dl.key) is dl:
                del self._inflight[dl.key]
            if dl.rfd >= 0:
                os.close(dl.rfd)
                dl.rfd = -1

    def _start_extent(self, dl: _Download, offset: int) -> None:
        """Start a Range download at `offset`. Caller holds dl.cond."""
        start = offset - offset % (1 << 20)
        ext = _Extent(start=start, limit=min(dl.size, start + self._range_span), arrived=start)
        dl.extents.append(ext)
        self.range_requests += 1
        t = threading.Thread(
            target=self._download_extent, args=(dl, ext), name=f"range-{dl.key[:8]}", daemon=True
        )
        dl.threads.append(t)
        t.start()

    def _download_extent(self, dl: _Download, ext: _Extent) -> None:
        chunks: Iterator[bytes] | None = None
        fd = -1
        try:
            fd = os.open(dl.path, os.O_WRONLY)
            chunks = self._fetch(dl.key, ext.start)
            pos = ext.start
            for chunk in chunks:
                if self._closed or dl.error is not None or dl.done or dl.arrived >= pos:
                    break  # the main download caught up, or it is over
                chunk = chunk[: ext.limit - pos]
                os.pwrite(fd, chunk, pos)
                pos += len(chunk)
                self.bytes_downloaded += len(chunk)
                with dl.cond:
                    ext.arrived = pos
                    dl.wake()
                if pos >= ext.limit:
                    break
        except DominoError as exc:
            ext.error = exc
        except OSError as exc:  # the partial file is gone: the main download ended
            if dl.error is None and not dl.done:
                ext.error = DominoError(f"blob {dl.key[:12]}: range download failed: {exc}")
        except Exception as exc:
            log.exception("blob %s: range download failed unexpectedly", dl.key[:12])
            ext.error = DominoError(f"blob {dl.key[:12]}: range download failed: {exc}")
        finally:
            if chunks is not None and hasattr(chunks, "close"):
                with contextlib.suppress(Exception):
                    chunks.close()
            if fd >= 0:
                os.close(fd)
            with dl.cond:
                ext.done = True
                dl.wake()

    def _verify_key(self, key: str) -> bool:
        return self._verify and _SHA1.match(key) is not None

    # -- eviction ------------------------------------------------------------------------

    def _cull(self) -> None:
        """Evict least recently used blobs until the cache fits, skipping pinned ones."""
        excess = int(self._dc.volume()) - self.size_limit
        if excess <= 0:
            return
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
                    excess -= int(size or 0)

    def _clean_partials(self) -> None:
        """Drop partial files older than a day (left by a killed mount; live ones are newer)."""
        cutoff = time.time() - 86400
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._partial):
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)


class _Hasher:
    """sha1 of a stream, computed in its own thread (hashlib drops the GIL for big buffers).

    `update` hands the chunk over and returns at once; at most `backlog` chunks wait, so memory
    stays bounded when hashing is slower than the network.
    """

    def __init__(self, backlog: int = 16) -> None:
        self._sha = hashlib.sha1(usedforsecurity=False)
        self._queue: queue.SimpleQueue[bytes | memoryview | None] = queue.SimpleQueue()
        self._room = threading.Semaphore(backlog)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="blob-sha1", daemon=True)
        self._thread.start()

    def update(self, chunk: bytes | memoryview) -> None:
        self._room.acquire()
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        self.close()
        self._thread.join()
        return self._sha.hexdigest()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._sha.update(chunk)
            self._room.release()


def _private_dirs(root: str, path: str) -> None:
    """Create `path` and its missing parents below `root`, each 0700 (os.makedirs gives the
    parents the umask's mode)."""
    if path == root or os.path.isdir(path):
        return
    _private_dirs(root, os.path.dirname(path))
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)


def _private_index(directory: Path) -> Path:
    """Make diskcache's folder 0700 and its index 0600 before diskcache opens it.

    SQLite creates the database with the umask's mode (0644) and gives its -wal and -shm files
    the database's mode; an index created here, empty, is one SQLite takes as a new database.
    Shard folders are made 0700 by `_BlobDisk.store`, blob files are renamed in as 0600.
    """
    ensure_private_dir(directory)
    for name in ("cache.db", "cache.db-wal", "cache.db-shm"):
        path = directory / name
        if name == "cache.db":
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
    return directory


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
