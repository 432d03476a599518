"""The per-folder (or per-mount) state database: what was last in step with the server.

Owns: one SQLite file (WAL, synchronous=NORMAL: a lost row after a power loss only costs a hash
on the next start, never a wrong upload) with, per path, the last synced remote key, the
local content hash, size, mtime_ns and inode of the local file at that moment, and the remote key
the next local edit is based on; plus small metadata (the head commit last seen, the root's
device). A row is written only once the server has confirmed the bytes (or after a download).
Must not talk to a server, watch files or import anything above models/errors/config.
Thread-safe: one connection guarded by a lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import create_private_file, ensure_private_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    base_key TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    synced_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class FileState:
    """One path as last synced: remote key, local hash, and the local stat at that moment."""

    path: str
    key: str
    sha256: str
    size: int
    mtime_ns: int
    inode: int
    base_key: str = ""

    def same_stat(self, size: int, mtime_ns: int, inode: int) -> bool:
        """True if a local file with this stat is (by the fast path) unchanged since sync."""
        return (self.size, self.mtime_ns, self.inode) == (size, mtime_ns, inode)


class StateDB:
    """Per-path sync state in SQLite. Close it when done."""

    def __init__(self, path: Path) -> None:
        ensure_private_dir(path.parent)
        create_private_file(path)  # 0600: paths and hashes of the user's files
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- files ---------------------------------------------------------------------------

    def get(self, path: str) -> FileState | None:
        with self._lock:
            row = self._db.execute(
                "SELECT path, key, sha256, size, mtime_ns, inode, base_key FROM files "
                "WHERE path = ?",
                (path,),
            ).fetchone()
        return FileState(*row) if row else None

    def put(self, state: FileState) -> None:
        """Record `state` (base_key defaults to its key: the next edit starts from it)."""
        self.put_many([state])

    def put_many(self, states: Iterable[FileState]) -> None:
        rows = [
            (s.path, s.key, s.base_key or s.key, s.sha256, s.size, s.mtime_ns, s.inode, time.time())
            for s in states
        ]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO files "
                "(path, key, base_key, sha256, size, mtime_ns, inode, synced_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._db.execute("COMMIT")

    def remove(self, path: str) -> None:
        self.remove_many([path])

    def remove_many(self, paths: Iterable[str]) -> None:
        rows = [(p,) for p in paths]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM files WHERE path = ?", rows)
            self._db.execute("COMMIT")

    def snapshot(self) -> dict[str, tuple[str, int, int, int]]:
        """Every path's (key, size, mtime_ns, inode), in one query (a reconcile's view)."""
        with self._lock:
            return {
                r[0]: (r[1], r[2], r[3], r[4])
                for r in self._db.execute("SELECT path, key, size, mtime_ns, inode FROM files")
            }

    def paths(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT path FROM files")}

    def all(self) -> Iterator[FileState]:
        with self._lock:
            rows = self._db.execute(
                "SELECT path, key, sha256, size, mtime_ns, inode, base_key FROM files"
            ).fetchall()
        return (FileState(*r) for r in rows)

    def count(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM files").fetchone()
        return int(n)

    # -- metadata ------------------------------------------------------------------------

    def get_meta(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, name: str, value: str | None) -> None:
        with self._lock:
            if value is None:
                self._db.execute("DELETE FROM meta WHERE name = ?", (name,))
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value)
                )

    @property
    def head(self) -> str | None:
        """The head commit last seen and applied."""
        return self.get_meta("head")

    @head.setter
    def head(self, value: str | None) -> None:
        self.set_meta("head", value)
