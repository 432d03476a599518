"""Downloading blobs for the cache: one streaming download per key, Range extents, hashing.

Owns: the record of one download in flight (its partial file, how far it has arrived, its
extents, who waits for which bytes), starting it, serving a reader the bytes that have arrived
(waiting for the rest, or starting a Range extent for a read far ahead), receiving into reused
buffers, hashing (in its own thread for big blobs), failure and the failure hook. What the cache
keeps (the index, pins, eviction, adoption) is cache.py's: this is the half of BlobCache that
talks to the `Fetch` callable. Must not know paths, trees, FUSE or HTTP.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DominoError, IntegrityError, Unreachable
from .pagecache import DropBehind

if TYPE_CHECKING:
    from .cache import BlobReader

log = logging.getLogger(__name__)

Fetch = Callable[[str, int], Iterator[bytes]]
"""fetch(key, offset) -> an iterator of the blob's bytes from `offset` (raises errors.*)."""

_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_HASH_THREAD_MIN = 8 << 20  # blobs this big are hashed in a thread of their own
_RECV_BUFFER = 1 << 20  # a download receives into buffers this big (when its fetch can readinto)
_FIRST_RECV = 64 << 10  # ...except its first receive: what a first read waits for
_RING = 8  # buffers per download hashed in a thread: the hasher's backlog is one less
# Blobs up to this size are received into memory and kept in the index itself: below
# diskcache's smallest file (32 KiB), so no blob file is ever made for them.
SMALL_BLOB = 32 * 1024 - 1


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
    threads: list[threading.Thread] = field(default_factory=list)  # its Range extents'
    finished: threading.Event = field(default_factory=threading.Event)  # the main stream's
    # Readers waiting for bytes: (absolute end they need, a lock they block on). Each is woken
    # only once its bytes are here (or on any other change of state), so a chunk arriving does
    # not wake every FUSE thread waiting further ahead.
    waiters: list[tuple[int, threading.Lock]] = field(default_factory=list)
    # A small blob is received into memory, not a partial file: no new inode (a millisecond of
    # system CPU each on this VM's ext4) for a file a cold `cat` reads once.
    mem: bytearray | None = None

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


class Downloads:
    """The download half of BlobCache (state declared here, made by BlobCache.__init__).

    `_lock` guards `_inflight`; each download's `cond` guards its progress.
    """

    _lock: threading.Lock
    _inflight: dict[str, _Download]
    _workers: Workers
    _index_lock: threading.Lock
    _retry_lock: threading.Lock
    _dc: Any
    _fetch: Fetch
    _verify: bool
    _wait_timeout: float
    _range_gap: int
    _range_span: int
    _partial: Path
    _closed: bool
    misses: int
    downloads: int
    range_requests: int
    bytes_downloaded: int
    integrity_failures: int
    last_error: str | None
    on_failed: Callable[[str], None] | None

    def _join(self, key: str, size: int) -> tuple[int, _Download | None, bytes | bytearray | None]:
        raise NotImplementedError  # cache.BlobCache

    def _cull(self) -> None:
        raise NotImplementedError  # cache.BlobCache

    def _stored(self, dl: _Download) -> None:
        raise NotImplementedError  # cache.BlobCache: a verified download enters the index

    def _start(self, key: str, size: int, *, miss: bool = True) -> _Download:
        """Start the download of `key` (a reader's miss, or a prefetch). Caller holds
        self._lock."""
        if size <= SMALL_BLOB:
            fd = -1
            dl = _Download(key=key, size=size, path="", cond=threading.Condition())
            dl.mem = bytearray(size)
        else:
            path = str(self._partial / f"{key[:40]}.{uuid.uuid4().hex[:12]}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            dl = _Download(key=key, size=size, path=path, cond=threading.Condition())
            dl.rfd = os.open(path, os.O_RDONLY)
        self._inflight[key] = dl
        self.misses += miss
        self.downloads += 1
        self._workers.submit(lambda: self._download(dl, fd))
        return dl

    # -- reading -------------------------------------------------------------------------

    def _await(self, reader: BlobReader, size: int, offset: int) -> int:
        """Wait until [offset, offset+size) has arrived (main stream or a Range extent);
        returns how many bytes from `offset` the reader may now read from its fd."""
        end = min(offset + size, reader.size)
        if offset >= end:
            return 0
        dl = reader._dl
        if dl is None:  # another of its reads saw it complete just now
            return end - offset
        if dl.error is not None:
            dl = self._retry(reader, dl)
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

    def _retry(self, reader: BlobReader, failed: _Download) -> _Download | None:
        """The reader's download `failed`: reattach to a fresh one (or the cached blob).

        The kernel sends one open file's reads on several threads at once, and each that finds
        the download failed comes here: the first reattaches, the others take what it found.
        The reader's fd number stays open throughout (dup2 puts the new file under it), as
        another of its reads may be in pread on it: closing it made those fail with EBADF.
        """
        with self._retry_lock:
            if reader._dl is not failed:
                return reader._dl
            fd, dl, mem = self._join(reader.key, reader.size)
            if fd >= 0 and reader._fd >= 0:
                os.dup2(fd, reader._fd)
                os.close(fd)
            elif fd >= 0:
                reader._fd = fd
            # (fd < 0: the bytes are in memory; the old fd stays open, unused, until release)
            reader._mem, reader._dl = mem, dl
            return dl

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
            if fd >= 0:
                os.close(fd)
                fd = -1
            # Verified: the adopter moves it into the index, off this reader's path (an index
            # write per small blob cost more than its download on loopback).
            self._stored(dl)
            stored = True
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
            dl.finished.set()

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
        if dl.mem is not None:
            dl.mem[arrived : arrived + n] = chunk
        else:
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
        if dl.path:
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


class Workers:
    """Daemon threads that run downloads, kept for the next one when idle: a cold small file
    should not pay for a new thread, and a shutdown must not wait for a stuck socket."""

    def __init__(self, name: str, *, most: int = 64, idle: float = 30.0) -> None:
        self._name = name
        self._most = most
        self._idle_timeout = idle
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0 and self._threads < self._most
            if spawn:
                self._threads += 1
            else:
                self._idle -= 1  # that worker is taken
        self._tasks.put(task)
        if spawn:
            threading.Thread(target=self._run, name=self._name, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                task = self._tasks.get(timeout=self._idle_timeout)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue  # a task is on its way to this worker
            try:
                task()
            except Exception:
                log.exception("a download worker's task failed")
            with self._lock:
                self._idle += 1


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


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
