"""The mount's persisted local layer: the upper layer of an overlay over the project's tree.

Owns: one SQLite database (WAL) and one folder of bytes per mount, in the mount's state
directory. The database holds every inode the mount keeps itself (its POSIX metadata: type and
mode, owner, group, times in ns, size, device number, symlink target; where its bytes are), the
names that lead to each inode (several for a hard link), and the whiteouts (names of the remote
tree deleted or moved away here). The folder holds the bytes of every file written here until
the blob cache takes them (after their upload) and, for good, the bytes of what is local only.
An uploaded small file's bytes file is emptied and reused by a later new file, and a few spare
ones are made ahead (a new inode costs this VM's ext4 a millisecond; reuse costs 0.02 ms).

Durability: what `commit` writes survives a crash of the process (WAL, synchronous=NORMAL);
`commit(durable=True)` (fsync(2)) also survives a power loss (FULL, and the bytes folder
fsynced). Changes are batched by the caller between commits: one transaction per operation.
An inode absent from the layer is the remote tree's, with defaults for what the API lacks.

Must not know FUSE, the tree, the outbox or HTTP: callers hand records and paths. Paths are the
mount's absolute paths ("/a/b"), stored as UTF-8 bytes with surrogate escapes (any name a
kernel hands us round-trips).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import create_private_file, ensure_private_dir, fsync_dir

log = logging.getLogger(__name__)

ROOT_INO = 1
_SHARDS = 16  # folders of the bytes folder
# Emptied bytes files kept for reuse. Making a file costs this VM's ext4 (no journal) 1-1.4 ms
# of system CPU, most of it stepping over recently deleted inodes; truncating one costs 0.02.
_POOL = 256
_POOL_LARGEST = 64 * 1024  # a larger uploaded file is removed at once, not held for reuse
_POOL_TRIES = 3  # looks at a kept file still linked elsewhere before it is removed
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inodes (
    ino INTEGER PRIMARY KEY,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    atime INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    ctime INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    rdev INTEGER NOT NULL DEFAULT 0,
    target BLOB,
    work TEXT,
    key TEXT,
    bases TEXT NOT NULL DEFAULT '{}',
    pending TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS names (path BLOB PRIMARY KEY, ino INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS whiteouts (path BLOB PRIMARY KEY);
"""

_INODE_COLUMNS = (
    "ino, mode, uid, gid, atime, mtime, ctime, size, rdev, target, work, key, bases, pending"
)


class Inode:
    """One node the layer keeps. Persisted fields first; the rest lives only while mounted.

    `work` names the file in the layer's bytes folder holding this file's bytes; when it is None
    the bytes are blob `key` (None too: empty). `bases[path]` is the server's key at `path` that
    the local bytes replace (None: a new file there); `pending` are the names whose upload is
    due (kept across a crash: a restart queues whatever the outbox does not hold).
    """

    __slots__ = (
        "atime", "bases", "ctime", "dirty", "gid", "ino", "key", "mode", "mtime", "names",
        "pending", "rdev", "size", "staged", "target", "uid", "uploaded_at", "work", "writers",
    )  # fmt: skip

    def __init__(
        self,
        ino: int,
        mode: int,
        uid: int,
        gid: int,
        *,
        atime: int,
        mtime: int,
        ctime: int,
        size: int = 0,
        rdev: int = 0,
        target: bytes | None = None,
        work: str | None = None,
        key: str | None = None,
    ) -> None:
        self.ino = ino
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.atime = atime
        self.mtime = mtime
        self.ctime = ctime
        self.size = size
        self.rdev = rdev
        self.target = target
        self.work = work
        self.key = key
        self.bases: dict[str, str | None] = {}
        self.pending: set[str] = set()
        self.names: list[str] = []
        # Only while mounted: open writers, unqueued writes since the last schedule, the
        # outbox's link per queued name, and when the server took our last upload (monotonic).
        self.writers = 0
        self.dirty = False
        self.staged: dict[str, Path] = {}
        self.uploaded_at: float | None = None

    def __repr__(self) -> str:
        return f"Inode({self.ino}, {self.mode:o}, names={self.names!r})"


@dataclass
class Loaded:
    """What a layer held when it was opened."""

    inodes: dict[int, Inode]
    names: dict[str, int]
    whiteouts: set[str]
    fresh: bool  # a new layer (nothing saved before): a caller may import older state


def _b(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _s(raw: bytes | str) -> str:
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw


class Layer:
    """One mount's local layer on disk (see the module docstring). Not thread-safe: the caller
    serialises every call (the VFS holds its lock), except new_work and prepare, which touch
    only the spare files' queue (a deque: its appends and pops are atomic)."""

    def __init__(self, directory: Path) -> None:
        self.directory = ensure_private_dir(Path(directory))
        self.data_dir = ensure_private_dir(self.directory / "data")
        for shard in range(_SHARDS):
            ensure_private_dir(self.data_dir / f"{shard:x}")
        self._turn = 0
        self._db = sqlite3.connect(
            str(create_private_file(self.directory / "layer.db")),
            check_same_thread=False,
            isolation_level=None,
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._inodes: dict[int, Inode] = {}  # saved at the next commit
        self._dropped: set[int] = set()
        self._names: dict[str, int | None] = {}  # None: the name is gone
        self._whiteouts: dict[str, bool] = {}
        self._later: list[Path] = []  # files to remove once the batch naming them is written
        self._later_pool: list[str] = []  # ... or to keep for reuse
        self._pool: deque[tuple[str, int]] = deque()  # (name, looks) unnamed, maybe reusable
        self._ready: deque[str] = deque()  # empty, unlinked elsewhere: new_work takes these first
        self._closed = False
        self._low = -1  # new_work asks keep_spares for more once the queue is this short
        self._want_spares = threading.Event()
        self._new_files: set[int] = set()  # shards with a file made since they were fsynced

    # -- reading ---------------------------------------------------------------------------

    def load(self) -> Loaded:
        """Everything the layer holds (names attached to their inodes)."""
        fresh = self._db.execute("SELECT v FROM meta WHERE k = 'version'").fetchone() is None
        inodes: dict[int, Inode] = {}
        for row in self._db.execute(f"SELECT {_INODE_COLUMNS} FROM inodes"):
            inodes[row[0]] = _inode(row)
        names: dict[str, int] = {}
        orphans: list[bytes] = []
        for raw, ino in self._db.execute("SELECT path, ino FROM names"):
            node = inodes.get(ino)
            if node is None:
                orphans.append(raw)
                continue
            path = _s(raw)
            names[path] = ino
            node.names.append(path)
        whiteouts = {_s(r[0]) for r in self._db.execute("SELECT path FROM whiteouts")}
        if orphans:
            self._db.executemany("DELETE FROM names WHERE path = ?", [(r,) for r in orphans])
        if fresh:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('version', ?)", (SCHEMA_VERSION,)
            )
        return Loaded(inodes, names, whiteouts, fresh)

    def max_ino(self, below: int) -> int:
        """The largest inode number in use that is under `below` (counter-made ones)."""
        row = self._db.execute("SELECT MAX(ino) FROM inodes WHERE ino < ?", (below,)).fetchone()
        return int(row[0] or ROOT_INO)

    # -- the bytes folder --------------------------------------------------------------------

    def new_work(self) -> tuple[str, int]:
        """A new empty bytes file: (its name, a read-write fd on it).

        A kept file no other name links (the outbox's staged copy and the cache's adoption are
        links to it) is emptied and reused. New files go to _SHARDS folders in turn: one
        folder's lock taken by a create and by a removal at once made creates twice as slow.
        """
        if len(self._ready) <= self._low:
            self._want_spares.set()
        while self._ready:
            name = self._ready.popleft()
            fd = self._reuse(name)
            if fd is not None:
                self._new_files.add(int(name.split("/", 1)[0], 16))
                return name, fd
            self._pool.append((name, 0))
        # No spare ready (no keep_spares thread, or a burst outran it): empty a kept file here.
        for _ in range(4):
            kept = self._take_kept()
            if kept is None:
                break
            fd, name = self._clean(*kept)
            if fd is not None:
                self._new_files.add(int(name.split("/", 1)[0], 16))
                return name, fd
        self._turn = (self._turn + 1) % _SHARDS
        name = f"{self._turn:x}/w-{uuid.uuid4().hex}"
        fd = os.open(self.data_dir / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._new_files.add(self._turn)
        return name, fd

    def keep_spares(self, spares: int) -> None:
        """Keep about `spares` empty bytes files ready, on the calling thread until close: once
        new files have taken half of them, or uploaded files were kept for reuse, this thread
        empties the kept ones and makes the rest (on another core, while a burst of creates
        takes them: the burst's own creates then make no inode and empty no file)."""
        self._low = spares // 2
        while not self._closed:
            self.prepare(spares)
            self._want_spares.wait()
            self._want_spares.clear()

    def prepare(self, spares: int) -> None:
        """Make `spares` empty bytes files ready for new_work, emptying kept files first (before
        a burst of creates: the first ones then cost no new inode either). Safe beside
        new_work."""
        for _ in range(len(self._pool)):  # one look each: one still linked waits for a later call
            kept = self._take_kept()
            if kept is None or self._closed:
                break
            fd, name = self._clean(*kept)
            if fd is None:
                continue
            # The truncation marked the inode for ext4's flush on close (auto_da_alloc): this
            # close takes it, with nothing left to write, instead of the writer's close.
            os.close(fd)
            if len(self._ready) < max(spares, _POOL):
                self._ready.append(name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    (self.data_dir / name).unlink()
        while len(self._ready) < spares and not self._closed:
            self._turn = (self._turn + 1) % _SHARDS
            name = f"{self._turn:x}/w-{uuid.uuid4().hex}"
            try:
                os.close(os.open(self.data_dir / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            except OSError as exc:
                log.debug("no spare bytes files: %s", exc)
                return
            self._ready.append(name)

    def _take_kept(self) -> tuple[str, int] | None:
        try:
            return self._pool.popleft()  # new_work and keep_spares may both take
        except IndexError:
            return None

    def _clean(self, name: str, looks: int) -> tuple[int | None, str]:
        """Kept file `name` emptied, with a read-write fd on it, or (None, name) while something
        else links it (it is looked at again later, then removed)."""
        fd = self._reuse(name)
        if fd is None:
            if looks + 1 < _POOL_TRIES and (self.data_dir / name).exists():
                self._pool.append((name, looks + 1))
            else:
                with contextlib.suppress(FileNotFoundError):
                    (self.data_dir / name).unlink()
        return fd, name

    def _reuse(self, name: str) -> int | None:
        """A read-write fd on kept file `name`, emptied, when nothing else links it."""
        try:
            fd = os.open(self.data_dir / name, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if st.st_nlink == 1:
                if st.st_size:
                    # ext4 then flushes the file at its next close (auto_da_alloc): an empty
                    # spare is not truncated, or every new file's close would start a write.
                    os.ftruncate(fd, 0)
                return fd
        except OSError:
            pass
        os.close(fd)
        return None

    def recycle_later(self, work: str, size: int) -> None:
        """Like unlink_later for bytes file `work`, which may be kept for a later new_work."""
        if size <= _POOL_LARGEST:
            self._later_pool.append(work)
        else:
            self.unlink_later(self.data_dir / work)

    def path_of(self, work: str) -> Path:
        return self.data_dir / work

    def sweep(self, claimed: Iterable[str]) -> int:
        """Remove bytes files no inode names (a crash between making one and saving its inode),
        or keep small ones for reuse. Returns how many went."""
        keep = set(claimed)
        gone = 0
        for child in self.data_dir.glob("*/*"):
            name = f"{child.parent.name}/{child.name}"
            if name in keep:
                continue
            gone += 1
            with contextlib.suppress(OSError):
                if len(self._pool) < _POOL and child.stat().st_size <= _POOL_LARGEST:
                    self._pool.append((name, 0))
                    continue
            with contextlib.suppress(FileNotFoundError):
                child.unlink()
        return gone

    # -- changing (batched until commit) -----------------------------------------------------

    def save(self, node: Inode) -> None:
        self._inodes[node.ino] = node
        self._dropped.discard(node.ino)

    def drop(self, node: Inode) -> None:
        self._inodes.pop(node.ino, None)
        self._dropped.add(node.ino)

    def name(self, path: str, ino: int) -> None:
        self._names[path] = ino

    def unname(self, path: str) -> None:
        self._names[path] = None

    def whiteout(self, path: str, on: bool = True) -> None:
        self._whiteouts[path] = on

    def unlink_later(self, path: Path) -> None:
        """Remove `path` once the batch (which no longer names it) is written: a crash before
        that leaves the inode naming a file that still exists."""
        self._later.append(path)

    @property
    def dirty(self) -> bool:
        return bool(self._inodes or self._dropped or self._names or self._whiteouts)

    def commit(self, *, durable: bool = False) -> None:
        """Write the batched changes in one transaction (see the module docstring).

        Raises:
            OSError: the disk refused (sqlite3 errors are turned into OSError(EIO)).
        """
        if not self.dirty and not durable:
            self._settle_later()
            return
        inodes, dropped, names, whiteouts = (
            self._inodes,
            self._dropped,
            self._names,
            self._whiteouts,
        )
        self._inodes, self._dropped, self._names, self._whiteouts = {}, set(), {}, {}
        db = self._db
        try:
            if durable:
                db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                if dropped:
                    db.executemany("DELETE FROM inodes WHERE ino = ?", [(i,) for i in dropped])
                if inodes:
                    db.executemany(
                        f"INSERT OR REPLACE INTO inodes ({_INODE_COLUMNS}) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [_row(n) for n in inodes.values()],
                    )
                gone = [(_b(p),) for p, i in names.items() if i is None]
                if gone:
                    db.executemany("DELETE FROM names WHERE path = ?", gone)
                made = [(_b(p), i) for p, i in names.items() if i is not None]
                if made:
                    db.executemany("INSERT OR REPLACE INTO names (path, ino) VALUES (?, ?)", made)
                off = [(_b(p),) for p, on in whiteouts.items() if not on]
                if off:
                    db.executemany("DELETE FROM whiteouts WHERE path = ?", off)
                on = [(_b(p),) for p, on in whiteouts.items() if on]
                if on:
                    db.executemany("INSERT OR IGNORE INTO whiteouts (path) VALUES (?)", on)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            finally:
                if durable:
                    db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            # Keep the batch: the next commit tries again, and nothing in memory is lost.
            for ino, node in inodes.items():
                self._inodes.setdefault(ino, node)
            self._dropped |= dropped - self._inodes.keys()
            for p, i in names.items():
                self._names.setdefault(p, i)
            for p, w in whiteouts.items():
                self._whiteouts.setdefault(p, w)
            raise OSError(5, f"cannot save the local layer: {exc}") from None
        if durable and self._new_files:
            shards, self._new_files = self._new_files, set()
            for shard in shards:
                fsync_dir(self.data_dir / f"{shard:x}")
        self._settle_later()

    def _settle_later(self) -> None:
        later, self._later = self._later, []
        for path in later:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        pooled, self._later_pool = self._later_pool, []
        for name in pooled:
            if len(self._pool) < _POOL:
                self._pool.append((name, 0))
            else:
                with contextlib.suppress(FileNotFoundError):
                    (self.data_dir / name).unlink()
        if pooled and self._low >= 0:
            self._want_spares.set()  # keep_spares empties them, off the writers' path

    def close(self) -> None:
        self._closed = True
        self._want_spares.set()
        with contextlib.suppress(OSError):
            self.commit()
        # Kept files hold old bytes until reused: none stays behind the mount, nor any spare.
        while self._pool:
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / self._pool.popleft()[0]).unlink()
        while self._ready:
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / self._ready.popleft()).unlink()
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


def _row(n: Inode) -> tuple[Any, ...]:
    return (
        n.ino, n.mode, n.uid, n.gid, n.atime, n.mtime, n.ctime, n.size, n.rdev, n.target,
        n.work, n.key,
        json.dumps({_b(p).hex(): k for p, k in n.bases.items()}) if n.bases else "{}",
        json.dumps(sorted(_b(p).hex() for p in n.pending)) if n.pending else "[]",
    )  # fmt: skip


def _inode(row: tuple[Any, ...]) -> Inode:
    ino, mode, uid, gid, atime, mtime, ctime, size, rdev, target, work, key, bases, pending = row
    n = Inode(
        ino, mode, uid, gid, atime=atime, mtime=mtime, ctime=ctime, size=size, rdev=rdev,
        target=target, work=work, key=key,
    )  # fmt: skip
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        n.bases = {_s(bytes.fromhex(p)): k for p, k in json.loads(bases).items()}
    with contextlib.suppress(ValueError, TypeError):
        n.pending = {_s(bytes.fromhex(p)) for p in json.loads(pending)}
    return n


def legacy_modes(state_dir: Path) -> dict[str, int]:
    """Modes an older version kept in `modes.jsonl` (a journal of `["path", mode|null]` lines)
    or `attrs.json` (`{"path": {"mode": m}}`), by mount path; {} when there are none."""
    modes: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((state_dir / "attrs.json").read_text(encoding="utf-8"))
        if isinstance(data, dict):
            for p, a in data.items():
                if isinstance(a, dict) and isinstance(a.get("mode"), int):
                    modes[p] = a["mode"]
    with contextlib.suppress(OSError):
        with open(state_dir / "modes.jsonl", encoding="utf-8") as fh:
            for line in fh:
                try:
                    p, m = json.loads(line)
                except (ValueError, TypeError):
                    continue  # a torn last line
                if isinstance(p, str) and isinstance(m, int):
                    modes[p] = m
                elif isinstance(p, str):
                    modes.pop(p, None)
    return modes


def forget_legacy_modes(state_dir: Path) -> None:
    for name in ("attrs.json", "modes.jsonl"):
        with contextlib.suppress(FileNotFoundError):
            (state_dir / name).unlink()
