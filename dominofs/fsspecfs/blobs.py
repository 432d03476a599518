"""Where a domino:// file's bytes come from: Range reads of one blob, or the mounts' blob cache.

Owns: reading [start, end) of a blob pinned by key (one bounded Range request, checked for
length), the optional shared on-disk blob cache (`dominofs/cache.py`, the one the mounts use,
so a file a mount and pandas both read is downloaded once), and `BlobSource`, a blob as a
seekable file object that an upload can stream from (cp_file, mv: no whole file in memory; a
retried PUT seeks back and the GET starts again). Must not know listings or fsspec.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from ..api import BlobStream, ProjectClient
from ..cache import BlobCache, BlobReader
from ..config import Settings
from ..errors import IntegrityError
from ..models import RemoteFile

COPY_CHUNK = 1 << 20
_ROUTES = 100_000  # blob keys remembered with the project to fetch them from


def read_range(pc: ProjectClient, blob: RemoteFile, start: int, end: int) -> bytes:
    """Bytes [start, end) of `blob` (clipped to its size), in one Range request.

    Raises:
        DominoError: the server's failure; IntegrityError when fewer bytes come than listed.
    """
    end = min(end, blob.size)
    if start >= end:
        return b""
    want = end - start
    chunks = list(pc.iter_blob(blob.key, offset=start, length=want, chunk_size=want))
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(data) != want:
        raise IntegrityError(
            f"{pc.host} ({pc.project}: blob {blob.key[:12]}): {len(data)} bytes came where "
            f"the listing promised {want} from offset {start}"
        )
    return data


class BlobSource:
    """A blob as a read-only file object for an upload body: read and tell, and a seek that
    starts the download again from there (a retried PUT seeks back to 0)."""

    def __init__(self, pc: ProjectClient, blob: RemoteFile) -> None:
        self._pc = pc
        self._blob = blob
        self._pos = 0
        self._stream: BlobStream | None = None
        self._pending = b""

    def read(self, n: int = -1) -> bytes:
        if not self._pending and self._pos < self._blob.size:
            if self._stream is None:
                self._stream = self._pc.iter_blob(
                    self._blob.key, offset=self._pos, chunk_size=COPY_CHUNK
                )
            self._pending = next(self._stream, b"")
            if not self._pending:
                raise IntegrityError(
                    f"{self._pc.host} ({self._pc.project}: blob {self._blob.key[:12]}): it ended "
                    f"at {self._pos} bytes where the listing promised {self._blob.size}"
                )
        if n < 0 or n >= len(self._pending):
            out, self._pending = self._pending, b""
        else:
            out, self._pending = self._pending[:n], self._pending[n:]
        self._pos += len(out)
        return out

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or not 0 <= pos <= self._blob.size:
            raise ValueError(f"BlobSource seeks only to an absolute offset, not {pos}/{whence}")
        if pos != self._pos:
            self.close()
            self._pending = b""
            self._pos = pos
        return pos

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()


class CachedBlobs:
    """The on-disk blob cache of one cache folder, fetching each key from its project."""

    def __init__(self, settings: Settings) -> None:
        self._lock = threading.Lock()
        self._routes: OrderedDict[str, ProjectClient] = OrderedDict()
        self.cache = BlobCache(
            Path(settings.cache_dir), size_limit=settings.cache_size, fetch=self._fetch
        )

    def open(self, pc: ProjectClient, blob: RemoteFile) -> BlobReader:
        """A reader of `blob` (its download starts at once, shared by every reader)."""
        with self._lock:
            self._routes[blob.key] = pc
            self._routes.move_to_end(blob.key)
            while len(self._routes) > _ROUTES:
                self._routes.popitem(last=False)
        return self.cache.open(blob.key, blob.size)

    def _fetch(self, key: str, offset: int) -> Iterator[bytes]:
        with self._lock:
            pc = self._routes[key]
        return pc.iter_blob(key, offset=offset)


_caches: dict[str, CachedBlobs] = {}
_caches_lock = threading.Lock()
_closing_at_exit = False


def cached_blobs(settings: Settings) -> CachedBlobs:
    """This process's blob cache on the settings' cache folder (closed at exit)."""
    global _closing_at_exit
    folder = os.path.abspath(settings.cache_dir)
    with _caches_lock:
        cached = _caches.get(folder)
        if cached is None:
            if not _closing_at_exit:
                atexit.register(_close_all)
                _closing_at_exit = True
            cached = _caches[folder] = CachedBlobs(settings)
        return cached


def _close_all() -> None:
    with _caches_lock:
        caches = list(_caches.values())
        _caches.clear()
    for cached in caches:
        cached.cache.close()


def _forget_after_fork() -> None:
    # A child must not share the parent's download threads' state or its SQLite handles.
    global _caches, _caches_lock
    _caches = {}
    _caches_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
