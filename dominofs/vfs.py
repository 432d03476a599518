"""OS-like file semantics over a project: stat, readdir, open, read, release, and the refresher.

Owns: the namespace of a mount (the project tree plus the virtual `.runs/` and `.dominofs/`),
per-path and per-handle state, which version of a file a handle reads (the one it opened), when
the kernel may keep its page cache for a path, polling the head commit and swapping in a new tree
(invalidating only what changed), the persisted listing, and `.dominofs/status.json`.
Must not import the FUSE binding, requests or api.py; raises only errors.* (and never lets
another exception out of `read`). Paths are absolute within the mount ("/", "/a/b.csv").

Locking: one lock, `self._lock`, guards the handle table's writers, per-path open state, and the
tree swap. Readers of `self._tree`, `self._stats` and `self._handles` take no lock: each is
replaced or updated by single assignments (atomic under the GIL), and a Tree is immutable.
Never call the server or the cache's download machinery while holding `self._lock`.
The write side (staging files, outbox) is to be added here: for now every mutation is EROFS,
except writing `.runs/start`.
"""

from __future__ import annotations

import errno as _errno
import itertools
import json
import logging
import os
import stat as _stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .cache import BlobCache
from .errors import DominoError, NotFound, NotSupported, ReadOnly, Unreachable
from .models import Remote
from .runsdir import START, RunsDir
from .tree import Diff, Tree

log = logging.getLogger(__name__)

RUNS = "/.runs"
META = "/.dominofs"
STATUS = "/.dominofs/status.json"
_VIRTUAL_ROOT_NAMES = (".runs", ".dominofs")
_MAX_START_BYTES = 1 << 20

StatDict = dict[str, int]


class _Handle(Protocol):
    def read(self, size: int, offset: int) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Opened:
    """What `open` returns: the handle number and how the kernel may cache it."""

    fh: int
    keep_cache: bool = False
    direct_io: bool = False


class _BytesHandle:
    """A handle on fixed bytes (a `.runs/` or status rendering): st_size == what read returns."""

    __slots__ = ("data", "mtime_ns")

    def __init__(self, data: bytes, mtime_ns: int) -> None:
        self.data = data
        self.mtime_ns = mtime_ns

    def read(self, size: int, offset: int) -> bytes:
        return self.data[offset : offset + size]

    def close(self) -> None:
        pass


class _StartHandle:
    """A handle on `.runs/start`: collects what is written; flush starts the run."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def read(self, size: int, offset: int) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _BlobHandle:
    """A handle on one version of a project file (path, key) read through the blob cache."""

    __slots__ = ("key", "mtime_ns", "path", "read", "reader", "size")

    def __init__(self, path: str, reader: Any, mtime_ns: int) -> None:
        self.path = path
        self.reader = reader
        self.key: str = reader.key
        self.size: int = reader.size
        self.mtime_ns = mtime_ns
        self.read = reader.read  # bound once: the read path is one dict lookup and one call

    def close(self) -> None:
        self.reader.close()


class VFS:
    """One mounted project (see the module docstring for what it owns and its lock rule)."""

    def __init__(
        self,
        remote: Remote,
        cache: BlobCache,
        tree: Tree,
        *,
        runs: RunsDir | None = None,
        listing_path: Path | None = None,
        read_only: bool = False,
        pinned: bool = False,
        poll_interval: float = 15.0,
        uid: int | None = None,
        gid: int | None = None,
        reachable: bool = True,
    ) -> None:
        self._remote = remote
        self._cache = cache
        self._runs = runs if runs is not None else RunsDir(remote)
        self._tree = tree
        self._listing_path = listing_path
        self.read_only = read_only or pinned
        self.pinned = pinned
        self.poll_interval = poll_interval
        self._uid = os.getuid() if uid is None else uid
        self._gid = os.getgid() if gid is None else gid
        self._started_ns = time.time_ns()
        self._file_mode = _stat.S_IFREG | (0o444 if self.read_only else 0o644)
        self._dir_mode = _stat.S_IFDIR | (0o555 if self.read_only else 0o755)
        self._lock = threading.Lock()
        self._handles: dict[int, Any] = {}
        self._fh = itertools.count(1)
        self._stats: dict[str, StatDict] = {}
        # Per path: the keys of its open handles, and the key whose pages the kernel may hold.
        self._open_keys: dict[str, dict[str, int]] = {}
        self._page_key: dict[str, str] = {}
        self._held: set[str] = set()  # paths whose stat waits for old-version handles to close
        self.reachable = reachable
        self.last_error: str | None = None
        self.last_refresh: float | None = time.time() if reachable else None
        self.invalidate: Callable[[Iterable[str]], None] | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def tree(self) -> Tree:
        return self._tree

    def start(self) -> None:
        """Start polling the head commit (not for a pinned commit or an interval of 0)."""
        if self.pinned or self.poll_interval <= 0 or self._poller is not None:
            return
        self._poller = threading.Thread(target=self._poll_loop, name="poller", daemon=True)
        self._poller.start()

    def close(self) -> None:
        """Stop the poller and close every handle."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
            self._poller = None
        with self._lock:
            handles = list(self._handles.values())
            self._handles = {}
        for h in handles:
            try:
                h.close()
            except Exception:
                log.exception("closing a handle failed")

    def _poll_loop(self) -> None:
        # While the server is away, retry sooner than the interval so the mount recovers quickly.
        while not self._stop.wait(
            self.poll_interval if self.reachable else min(2.0, self.poll_interval)
        ):
            try:
                self.refresh()
            except Exception:
                log.exception("refreshing the listing failed unexpectedly")

    def refresh(self) -> Diff | None:
        """Ask the server for the head commit; on a new one, swap in its tree. Never raises."""
        if self.pinned:
            return None
        try:
            commits = self._remote.commits()
            head = commits[0] if commits else None
            new = None
            if head is not None and head != self._tree.commit_id:
                new = Tree(head, self._remote.list_files(head))
        except DominoError as exc:
            self._note_error(exc)
            return None
        if not self.reachable:
            log.warning("%s is reachable again", self._remote.host)
        self.reachable = True
        self.last_refresh = time.time()
        if new is None:
            return None
        return self.swap_tree(new)

    def swap_tree(self, new: Tree) -> Diff:
        """Make `new` the current tree; invalidate only the paths that changed."""
        with self._lock:
            diff = self._tree.diff(new)
            self._tree = new
            touched = ["/" + p if p else "/" for p in diff.touched()]
            stats = dict(self._stats)
            for p in touched:
                held = self._held_stat(p, new)
                if held is None:
                    stats.pop(p, None)
                else:
                    # The kernel has one size per inode and clamps reads to it: while a handle
                    # on the old version is open, stat keeps that version's size (new opens
                    # read the new bytes with direct_io); the switch happens at its release.
                    stats[p] = held
                    self._held.add(p)
            self._stats = stats
            touched = [p for p in touched if p not in self._held]
        log.info(
            "commit %s: %d added, %d removed, %d changed",
            new.commit_id[:12],
            len(diff.added),
            len(diff.removed),
            len(diff.changed),
        )
        self._persist(new)
        if self.invalidate is not None and touched:
            try:
                self.invalidate(touched)
            except Exception:
                log.exception("kernel cache invalidation failed")
        return diff

    def _held_stat(self, path: str, new: Tree) -> StatDict | None:
        """The stat of an open handle on an older version of `path`. Caller holds the lock."""
        keys = self._open_keys.get(path)
        if not keys:
            return None
        current = new.file(path[1:])
        for h in self._handles.values():
            older = isinstance(h, _BlobHandle) and h.path == path
            if older and (current is None or h.key != current.key):
                return self._file_stat(h.size, h.mtime_ns, self._file_mode)
        return None

    def _persist(self, tree: Tree) -> None:
        if self._listing_path is None:
            return
        try:
            tree.save(self._listing_path)
        except OSError as exc:
            log.warning("cannot save the listing to %s: %s", self._listing_path, exc.strerror)

    def _note_error(self, exc: DominoError) -> None:
        if self.reachable or self.last_error != str(exc):
            log.warning("%s", exc)
        self.last_error = str(exc)
        if isinstance(exc, Unreachable):
            self.reachable = False

    # -- metadata ------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> StatDict:
        """stat(2) of `path` (of the open handle `fh` when given), from memory.

        Raises:
            NotFound: no such file or folder.
        """
        if fh is not None:
            h = self._handles.get(fh)
            if h is not None:
                st = self._handle_stat(h)
                if st is not None:
                    return st
        st = self._stats.get(path)
        if st is not None:
            return st
        return self._getattr_slow(path)

    def _handle_stat(self, h: Any) -> StatDict | None:
        if isinstance(h, _BlobHandle):
            return self._file_stat(h.size, h.mtime_ns, self._file_mode)
        if isinstance(h, _BytesHandle):
            return self._file_stat(len(h.data), h.mtime_ns, _stat.S_IFREG | 0o444)
        if isinstance(h, _StartHandle):
            return self._file_stat(0, self._started_ns, _stat.S_IFREG | 0o200)
        return None

    def _getattr_slow(self, path: str) -> StatDict:
        if path in (RUNS, META):
            return self._dir_stat(_stat.S_IFDIR | 0o555)
        if path.startswith(RUNS + "/"):
            return self._runs_stat(path[len(RUNS) + 1 :])
        if path == STATUS:
            data = self._status_bytes()
            return self._file_stat(len(data), time.time_ns(), _stat.S_IFREG | 0o444)
        if path.startswith(META + "/"):
            raise NotFound(f"{path}: no such file")
        rel = path[1:]
        tree = self._tree
        f = tree.file(rel)
        if f is not None:
            st = self._file_stat(f.size, f.mtime_ms * 1_000_000, self._file_mode)
        elif tree.is_dir(rel):
            st = self._dir_stat(self._dir_mode)
        else:
            raise NotFound(f"{path}: no such file or folder")
        if tree is self._tree:  # do not cache an answer from a tree just replaced
            self._stats[path] = st
        return st

    def _runs_stat(self, name: str) -> StatDict:
        if "/" in name or not self._runs.exists(name):
            raise NotFound(f".runs/{name}: no such file")
        if name == START:
            return self._file_stat(0, self._started_ns, _stat.S_IFREG | 0o200)
        r = self._runs.rendering(name)
        return self._file_stat(len(r.data), int(r.mtime * 1e9), _stat.S_IFREG | 0o444)

    def _file_stat(self, size: int, mtime_ns: int, mode: int) -> StatDict:
        return {
            "st_mode": mode,
            "st_nlink": 1,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_mtime": mtime_ns,
            "st_ctime": mtime_ns,
            "st_atime": mtime_ns,
        }

    def _dir_stat(self, mode: int) -> StatDict:
        t = self._started_ns
        return {
            "st_mode": mode,
            "st_nlink": 2,
            "st_size": 0,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_mtime": t,
            "st_ctime": t,
            "st_atime": t,
        }

    def readdir(self, path: str) -> list[str]:
        """Names in folder `path` (without . and ..).

        Raises:
            NotFound: no such folder. DominoError(ENOTDIR): a file.
        """
        if path == RUNS:
            return self._runs.names()
        if path == META:
            return ["status.json"]
        rel = path[1:]
        tree = self._tree
        names = tree.children(rel)
        if names is None:
            if tree.file(rel) is not None or path.startswith((RUNS + "/", META + "/")):
                raise DominoError(f"{path}: not a folder", errno=_errno.ENOTDIR)
            raise NotFound(f"{path}: no such folder")
        if rel == "":
            return [*_VIRTUAL_ROOT_NAMES, *(n for n in names if n not in _VIRTUAL_ROOT_NAMES)]
        return list(names)

    def statfs(self) -> dict[str, int]:
        limit = max(self._cache.size_limit, 1)
        used = min(self._cache.volume(), limit)
        bsize = 4096
        return {
            "f_bsize": bsize,
            "f_frsize": bsize,
            "f_blocks": limit // bsize,
            "f_bfree": (limit - used) // bsize,
            "f_bavail": (limit - used) // bsize,
            "f_files": len(self._tree) + 1000,
            "f_ffree": 1000,
            "f_favail": 1000,
            "f_namemax": 255,
        }

    # -- handles -------------------------------------------------------------------------

    def open(self, path: str, flags: int) -> Opened:
        """Open `path`; a project file keeps the version it opened until released.

        Raises:
            NotFound, ReadOnly (a write where none is allowed), DominoError(EISDIR).
        """
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if path.startswith(RUNS + "/"):
            return self._open_runs(path[len(RUNS) + 1 :], writing)
        if path == STATUS:
            if writing:
                raise ReadOnly(f"{path} is read-only")
            return self._add(_BytesHandle(self._status_bytes(), time.time_ns()), direct_io=True)
        rel = path[1:]
        tree = self._tree
        f = tree.file(rel)
        if f is None:
            if tree.is_dir(rel) or path in (RUNS, META):
                raise DominoError(f"{path}: is a folder", errno=_errno.EISDIR)
            raise NotFound(f"{path}: no such file")
        if writing:
            raise ReadOnly(f"{path}: this mount is read-only")
        reader = self._cache.open(f.key, f.size)
        handle = _BlobHandle(path, reader, f.mtime_ms * 1_000_000)
        with self._lock:
            keys = self._open_keys.setdefault(path, {})
            others = any(k != f.key for k in keys)
            keys[f.key] = keys.get(f.key, 0) + 1
            # Pages may be kept when they can only hold this key's bytes.
            keep = not others and self._page_key.get(path) == f.key
            if others:
                self._page_key.pop(path, None)  # two versions open at once: no caching
            else:
                self._page_key[path] = f.key
            fh = next(self._fh)
            self._handles[fh] = handle
        return Opened(fh, keep_cache=keep, direct_io=others)

    def _open_runs(self, name: str, writing: bool) -> Opened:
        if name == START:
            return self._add(_StartHandle(), direct_io=True)
        if writing:
            raise ReadOnly(f".runs/{name} is read-only")
        if "/" in name or not self._runs.exists(name):
            raise NotFound(f".runs/{name}: no such file")
        r = self._runs.rendering(name, max_age=2.0)
        return self._add(_BytesHandle(r.data, int(r.mtime * 1e9)), direct_io=True)

    def _add(self, handle: Any, *, direct_io: bool = False) -> Opened:
        with self._lock:
            fh = next(self._fh)
            self._handles[fh] = handle
        return Opened(fh, direct_io=direct_io)

    def read(self, fh: int, size: int, offset: int) -> bytes:
        """Bytes of the open handle `fh` at `offset`.

        Raises:
            DominoError: EBADF for an unknown handle; the download's failure (EIO, ...).
        """
        try:
            read = self._handles[fh].read
        except KeyError:
            raise DominoError("bad file handle", errno=_errno.EBADF) from None
        data: bytes = read(size, offset)
        return data

    def write(self, fh: int, data: bytes, offset: int) -> int:
        """Write to an open handle: only `.runs/start` takes writes for now.

        Raises:
            ReadOnly, DominoError(EBADF, EFBIG).
        """
        h = self._handles.get(fh)
        if h is None:
            raise DominoError("bad file handle", errno=_errno.EBADF)
        if not isinstance(h, _StartHandle):
            raise ReadOnly("this file is read-only")
        end = offset + len(data)
        if end > _MAX_START_BYTES:
            raise DominoError(".runs/start: request too large", errno=_errno.EFBIG)
        if len(h.buf) < offset:
            h.buf.extend(b"\0" * (offset - len(h.buf)))
        h.buf[offset:end] = data
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        """Truncate: only `.runs/start` (a shell's `>`) is accepted.

        Raises:
            ReadOnly, NotFound.
        """
        h = self._handles.get(fh) if fh is not None else None
        if isinstance(h, _StartHandle):
            del h.buf[length:]
            return
        if path == RUNS + "/" + START:
            return  # open(O_TRUNC) of start: each handle starts empty anyway
        self.getattr(path)
        raise ReadOnly(f"{path}: this mount is read-only")

    def flush(self, fh: int) -> None:
        """Called on every close(): starting a run happens here so close() can fail.

        Raises:
            UsageError, BadRequest (EINVAL): a bad run request; Unreachable (EIO).
        """
        h = self._handles.get(fh)
        if isinstance(h, _StartHandle) and h.buf:
            data = bytes(h.buf)
            h.buf.clear()
            run_id = self._runs.start(data)
            log.info("started run %s", run_id)

    def release(self, fh: int) -> None:
        """Forget handle `fh` (never raises for a known one)."""
        released: str | None = None
        with self._lock:
            h = self._handles.pop(fh, None)
            if isinstance(h, _BlobHandle):
                keys = self._open_keys.get(h.path, {})
                n = keys.get(h.key, 0) - 1
                if n > 0:
                    keys[h.key] = n
                else:
                    keys.pop(h.key, None)
                if not keys:
                    self._open_keys.pop(h.path, None)
                current = self._tree.file(h.path[1:])
                # Its pages may hold an old version: the next open must drop them.
                stale = current is None or current.key != h.key
                if stale and self._page_key.get(h.path) == h.key:
                    self._page_key.pop(h.path, None)
                if h.path in self._held and (
                    current is None or all(k == current.key for k in keys)
                ):
                    self._held.discard(h.path)
                    stats = dict(self._stats)
                    stats.pop(h.path, None)
                    self._stats = stats
                    released = h.path
        if h is not None:
            h.close()
        if released is not None and self.invalidate is not None:
            try:
                self.invalidate([released])
            except Exception:
                log.exception("kernel cache invalidation failed")

    # -- mutations (the write side comes later) -------------------------------------------

    def _refuse(self, path: str) -> None:
        raise ReadOnly(f"{path}: this mount is read-only")

    def create(self, path: str, mode: int, flags: int) -> Opened:
        """Create a file. Raises ReadOnly (the write side is not there yet)."""
        if path == RUNS + "/" + START:
            return self._open_runs(START, True)
        self._refuse(path)
        raise AssertionError  # unreachable

    def mkdir(self, path: str, mode: int) -> None:
        self._refuse(path)

    def unlink(self, path: str) -> None:
        self._refuse(path)

    def rmdir(self, path: str) -> None:
        self._refuse(path)

    def rename(self, old: str, new: str) -> None:
        self._refuse(old)

    def chmod(self, path: str, mode: int) -> None:
        self._refuse(path)

    def chown(self, path: str, uid: int, gid: int) -> None:
        self._refuse(path)

    def utimens(self, path: str, times: tuple[int, int] | None) -> None:
        if path == RUNS + "/" + START:
            return  # `touch .runs/start` is harmless
        self._refuse(path)

    def symlink(self, target: str, source: str) -> None:
        raise NotSupported(f"{target}: Domino projects hold no symbolic links")

    def link(self, target: str, source: str) -> None:
        raise NotSupported(f"{target}: Domino projects hold no hard links")

    def fsync(self, fh: int) -> None:
        """Nothing is staged yet, so there is nothing to make durable."""

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What `.dominofs/status.json` shows (CONTRACT §4)."""
        return {
            "project": str(self._remote.project),
            "host": self._remote.host,
            "commit": self._tree.commit_id,
            "pinned": self.pinned,
            "read_only": self.read_only,
            "files": len(self._tree),
            "server_reachable": self.reachable,
            "last_refresh": self.last_refresh,
            "last_error": self.last_error or self._cache.last_error,
            "pending_uploads": 0,
            "conflicts": [],
            "deletions_kept_local": [],
            "cache": self._cache.stats(),
            "open_handles": len(self._handles),
        }

    def _status_bytes(self) -> bytes:
        return (json.dumps(self.status(), indent=2, sort_keys=True) + "\n").encode("utf-8")
