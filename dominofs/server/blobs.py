"""Content-addressed blob files, and the crash-safe writes the rest of the store is built on.

Owns blobs/ab/cdef... (key = blob_hasher() digest of the content, notes §7.2) and tmp/ (uploads
in flight: on the same filesystem, so the rename into place is atomic). A blob is written to a
temporary file while it is hashed, fsynced, then renamed into place whole and never changed; the
commit that first names a key makes that rename durable (projects.py fsyncs the blob's folder).
write_atomic and fsync_dir are the two ways every module here makes a file or a name durable.
Must not know projects, commits or users, and must not import anything from dominofs outside
dominofs/server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

CHUNK = 1 << 20


class Hasher(Protocol):
    """The part of hashlib's hash objects the store uses."""

    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def blob_hasher() -> Hasher:
    """The one definition of a blob key: plain sha1 of the content (notes §7.2)."""
    return hashlib.sha1()


def write_atomic(path: Path, data: bytes) -> None:
    """Write data to path so a crash leaves the old or the new content, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync_dir(path: Path) -> None:
    """Make the names in a directory (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Content-addressed blob files under blobs/ab/cdef..."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:]

    def exists(self, key: str) -> bool:
        return len(key) == 40 and self.path(key).is_file()

    def _install(self, tmp_path: str, key: str) -> None:
        """Move a finished, fsynced temp file into place (or drop it if the blob exists)."""
        dest = self.path(key)
        if dest.exists():
            os.unlink(tmp_path)
            return
        if not dest.parent.is_dir():
            dest.parent.mkdir(exist_ok=True)
            fsync_dir(self.root)
        os.replace(tmp_path, dest)  # the commit that first uses key fsyncs dest.parent

    async def ingest_stream(self, chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        """Stream chunks to a temp file while hashing; never holds the whole body in memory."""
        loop = asyncio.get_running_loop()
        fd, tmp_path = tempfile.mkstemp(dir=self.tmp, prefix="upload-")
        hasher = blob_hasher()
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    hasher.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                # fsync can take long for big files; keep the event loop free meanwhile.
                await loop.run_in_executor(None, os.fsync, f.fileno())
            key = hasher.hexdigest()
            await loop.run_in_executor(None, self._install, tmp_path, key)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)
            raise
        return key, size

    def ingest_bytes(self, data: bytes) -> tuple[str, int]:
        hasher = blob_hasher()
        hasher.update(data)
        key = hasher.hexdigest()
        if not self.exists(key):
            fd, tmp_path = tempfile.mkstemp(dir=self.tmp, prefix="bytes-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._install(tmp_path, key)
        return key, len(data)

    def ingest_file(self, src: Path) -> tuple[str, int]:
        """Copy a local file (a run's output) into the store; blocking, run it in an executor."""
        fd, tmp_path = tempfile.mkstemp(dir=self.tmp, prefix="file-")
        hasher = blob_hasher()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                while chunk := inp.read(CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            key = hasher.hexdigest()
            self._install(tmp_path, key)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)
            raise
        return key, size


def hash_file(path: Path) -> str:
    hasher = blob_hasher()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()
