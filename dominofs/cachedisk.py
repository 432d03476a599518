"""The blob cache's files on disk: diskcache's Disk with our layout, and private modes.

Owns: where a blob file goes (one level of at most 256 folders, kept once made), moving a
finished file in by rename, reading back a small adopted file (kept in the index itself), and
the private modes of the cache's folders and index. The cache itself (pins, downloads, LRU)
is cache.py's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

from .config import ensure_private_dir

_MODE_BINARY = 2  # diskcache.core.MODE_BINARY
_MADE: set[str] = set()  # blob folders known to exist (they are never removed)


@dataclass(slots=True)
class MoveIn:
    """A value for `BlobDisk.store`: move this finished file into the cache (`dest`: where
    it went)."""

    path: str
    size: int
    dest: str = ""


class BlobDisk(diskcache.Disk):  # type: ignore[misc]
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
        if isinstance(value, MoveIn):
            filename, full_path = self.filename(key, value)
            folder = os.path.dirname(full_path)
            if folder not in _MADE:  # one level of 256 folders, kept once made
                private_dirs(self._directory, folder)
                _MADE.add(folder)
            os.rename(value.path, full_path)
            value.dest = full_path
            os.chmod(full_path, 0o600)  # an adopted upload keeps the mode it was staged with
            return value.size, _MODE_BINARY, filename, None
        return super().store(value, read, key)

    def remove(self, file_path: str) -> None:
        # The file only: an emptied folder stays for the next blob (and a store racing with a
        # removal never finds its folder gone).
        with contextlib.suppress(OSError):
            os.remove(os.path.join(self._directory, file_path))


def read_small(path: str, size: int, key: str) -> bytes | None:
    """The `size` bytes of adopted file `path` that are blob `key`, or None when it holds
    anything else (a writer still open on the uploaded file may have changed it since)."""
    with open(path, "rb") as fh:
        data = fh.read(size + 1)
    if len(data) != size or hashlib.sha1(data, usedforsecurity=False).hexdigest() != key:
        return None
    return data


def private_dirs(root: str, path: str) -> None:
    """Create `path` and its missing parents below `root`, each 0700 (os.makedirs gives the
    parents the umask's mode)."""
    if path == root or os.path.isdir(path):
        return
    private_dirs(root, os.path.dirname(path))
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)


def private_index(directory: Path) -> Path:
    """Make diskcache's folder 0700 and its index 0600 before diskcache opens it.

    SQLite creates the database with the umask's mode (0644) and gives its -wal and -shm files
    the database's mode; an index created here, empty, is one SQLite takes as a new database.
    Shard folders are made 0700 by `BlobDisk.store`, blob files are renamed in as 0600.
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
