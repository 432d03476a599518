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
The write side: see "the write side" below. Outbox hooks run on uploader threads and take
`self._lock`; the outbox never calls a hook while holding its own lock, so calling the outbox
with `self._lock` held cannot deadlock.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import itertools
import json
import logging
import os
import shutil
import stat as _stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .cache import BlobCache
from .errors import DominoError, NotFound, NotSupported, ReadOnly, Unreachable
from .ignore import IgnoreRules
from .models import Remote, UploadResult
from .modes import ModeJournal
from .outbox import DeleteOutcome, Entry, Outbox
from .runsdir import START, RunsDir
from .tree import Diff, Tree

log = logging.getLogger(__name__)

RUNS = "/.runs"
META = "/.dominofs"
STATUS = "/.dominofs/status.json"
_VIRTUAL_ROOT_NAMES = (".runs", ".dominofs")
_MAX_START_BYTES = 1 << 20
_SETTLE_QUIET = 0.2  # a burst of our own uploads is over after this long without one
_SETTLE_GAP = 1.0  # at least this long between listings asked for because of our uploads
_SETTLE_MAX = 3.0  # however long the burst, a listing at least this often
# ...and, for a project whose listing is slow to fetch, diff and save, both stretched so that
# these listings take at most this share of the time: with 100,000 files one took about 1 s
# and a burst of our own uploads had the poller busy half the time.
_SETTLE_SHARE = 0.1
_HELD = 10 * 365 * 86400.0  # "not before" of an upload held while a writer is open

StatDict = dict[str, int]


class _Handle(Protocol):
    def read(self, size: int, offset: int) -> bytes: ...

    def read_into(self, buf: memoryview, offset: int) -> int: ...

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

    def read_into(self, buf: memoryview, offset: int) -> int:
        chunk = self.data[offset : offset + len(buf)]
        buf[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        pass


class _StartHandle:
    """A handle on `.runs/start`: collects what is written; flush starts the run."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def read(self, size: int, offset: int) -> bytes:
        return b""

    def read_into(self, buf: memoryview, offset: int) -> int:
        return 0

    def close(self) -> None:
        pass


@dataclass(eq=False)
class _Node:
    """A file whose bytes are local: a staging file (`work`), or blob `key` when work is None."""

    path: str
    work: Path | None
    key: str | None
    size: int
    mtime_ns: int
    base_key: str | None  # the server's key this content replaces (None: a new file)
    local: bool  # ignored (editor temp, .dominoignore): never uploaded
    writers: int = 0
    queued: bool = False  # an outbox entry names `work`
    dirty: bool = False  # changed since last queued
    dead: bool = False
    uploaded_at: float | None = None  # monotonic time the server took these bytes


class _Children:
    """The names directly in each folder, for the paths the overlay holds (nodes and folders
    made here), so listing a folder does not scan the whole overlay."""

    __slots__ = ("_by_folder",)

    def __init__(self) -> None:
        self._by_folder: dict[str, dict[str, int]] = {}  # folder -> {name: how many hold it}

    def add(self, path: str) -> None:
        folder, _, name = path.rpartition("/")
        names = self._by_folder.setdefault(folder or "/", {})
        names[name] = names.get(name, 0) + 1

    def remove(self, path: str) -> None:
        folder, _, name = path.rpartition("/")
        folder = folder or "/"
        names = self._by_folder.get(folder, {})
        n = names.get(name, 0) - 1
        if n > 0:
            names[name] = n
            return
        names.pop(name, None)
        if not names:
            self._by_folder.pop(folder, None)

    def names(self, folder: str) -> Iterable[str]:
        return self._by_folder.get(folder, {}).keys()


class _NodeMap(dict[str, _Node]):
    """path -> _Node, telling a _Children index of every path added or removed."""

    __slots__ = ("_children",)

    def __init__(self, children: _Children) -> None:
        super().__init__()
        self._children = children

    def __setitem__(self, path: str, node: _Node) -> None:
        if path not in self:
            self._children.add(path)
        super().__setitem__(path, node)

    def __delitem__(self, path: str) -> None:
        super().__delitem__(path)
        self._children.remove(path)

    def pop(self, path: str, *default: Any) -> Any:
        if path in self:
            self._children.remove(path)
            return super().pop(path)
        if default:
            return default[0]
        raise KeyError(path)


class _DirSet(set[str]):
    """Folders made in the mount, telling a _Children index of every one added or removed."""

    __slots__ = ("_children",)

    def __init__(self, children: _Children) -> None:
        super().__init__()
        self._children = children

    def add(self, path: str) -> None:
        if path not in self:
            self._children.add(path)
            super().add(path)

    def discard(self, path: object) -> None:
        if isinstance(path, str) and path in self:
            super().discard(path)
            self._children.remove(path)


class _FileHandle:
    """A handle on a node's staging file (pread/pwrite on its own fd)."""

    __slots__ = ("append", "direct", "fd", "node", "writable")

    def __init__(
        self, node: _Node, fd: int, *, writable: bool, append: bool = False, direct: bool = False
    ) -> None:
        self.node = node
        self.fd = fd
        self.writable = writable
        self.append = append
        self.direct = direct  # opened with direct_io: its writes bypass the kernel's pages

    def read(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def read_into(self, buf: memoryview, offset: int) -> int:
        return os.preadv(self.fd, (buf,), offset)

    def close(self) -> None:
        os.close(self.fd)


class _BlobHandle:
    """A handle on one version of a project file (path, key) read through the blob cache."""

    __slots__ = ("key", "mtime_ns", "path", "read", "read_into", "reader", "size")

    def __init__(self, path: str, reader: Any, mtime_ns: int) -> None:
        self.path = path
        self.reader = reader
        self.key: str = reader.key
        self.size: int = reader.size
        self.mtime_ns = mtime_ns
        # Bound once: the read path is one dict lookup and one call.
        self.read = reader.read
        self.read_into = reader.read_into

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
        outbox: Outbox | None = None,
        upload_delay: float = 1.0,
        modes_path: Path | None = None,
        ignore: IgnoreRules | None = None,
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
        self._refresh_cost = 0.0  # seconds the last new listing took (fetch, diff, save)
        self.invalidate: Callable[[Iterable[str]], None] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # our own upload landed: look at the head commit now
        self._poller: threading.Thread | None = None
        self._outbox = None if self.read_only else outbox
        self.upload_delay = upload_delay
        self._ignore = ignore or IgnoreRules()
        self._modes = ModeJournal(modes_path) if modes_path is not None else None
        self._gen = 0
        # Listing a folder asks _children, not every node and folder of the overlay (a scan
        # per readdir and rmdir made `ls -R` and `rm -rf` of a big new tree quadratic).
        self._children = _Children()
        self._nodes: dict[str, _Node] = _NodeMap(self._children)
        self._hidden: dict[str, float | None] = {}  # path -> monotonic time the server deleted
        self._kept: set[str] = set()  # deletions the server could not do (no DELETE)
        self._dirs: set[str] = _DirSet(self._children)
        self._gone_dirs: set[str] = set()
        # path -> {"mode": bits, "mtime": ns}: kept in the mount (the API has neither); modes
        # are journaled (a remount shows them), mtimes of server files are not.
        self._attrs: dict[str, dict[str, int]] = {
            p: {"mode": m} for p, m in (self._modes.modes if self._modes else {}).items()
        }
        cache.on_failed = self._on_blob_failed
        if self._outbox is not None:
            self._outbox.on_uploaded = self._on_uploaded
            self._outbox.on_conflict = self._on_conflict
            self._outbox.on_deleted = self._on_deleted
            self._restore()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def tree(self) -> Tree:
        return self._tree

    @property
    def attr_timeout(self) -> float:
        """How long the kernel may keep attributes and entries: until the next look at the head
        commit (a change found then is invalidated path by path), between 1 s and 1 min."""
        if self.pinned:
            return 60.0
        if self.poll_interval <= 0:
            return 60.0  # only this mount's own changes, which invalidate what they touch
        return min(max(self.poll_interval, 1.0), 60.0)

    def start(self) -> None:
        """Start polling the head commit (not for a pinned commit; with an interval of 0, only
        after this mount's own uploads)."""
        if self.pinned or self._poller is not None:
            return
        if self.poll_interval <= 0 and self._outbox is None:
            return
        self._poller = threading.Thread(target=self._poll_loop, name="poller", daemon=True)
        self._poller.start()

    def close(self) -> None:
        """Stop the poller and close every handle."""
        self._stop.set()
        self._wake.set()
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
        if self._modes is not None:
            with self._lock:
                self._modes.close()

    def _poll_loop(self) -> None:
        # While the server is away, retry sooner than the interval so the mount recovers quickly.
        last = 0.0
        while not self._stop.is_set():
            interval = self.poll_interval if self.poll_interval > 0 else 3600.0
            woken = self._wake.wait(interval if self.reachable else min(2.0, interval))
            self._wake.clear()
            if woken:
                # Our own uploads only settle the overlay, which already shows their bytes:
                # one listing for a burst of them, not one per upload (each listing is the
                # whole project, parsed, diffed and saved).
                self._quiet(last)
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except Exception:
                log.exception("refreshing the listing failed unexpectedly")
            last = time.monotonic()

    def _quiet(self, last: float) -> None:
        """Wait until our uploads pause for _SETTLE_QUIET s (at most _SETTLE_MAX s in all) and
        the previous listing (at `last`) is at least _SETTLE_GAP s old; both stretched for a
        listing that is slow (_SETTLE_SHARE)."""
        start = time.monotonic()
        stretched = self._refresh_cost / _SETTLE_SHARE
        if self.poll_interval > 0:
            # One slow listing (a hiccup) must not hide others' changes past the poll interval.
            stretched = min(stretched, self.poll_interval)
        gap, longest = max(_SETTLE_GAP, stretched), max(_SETTLE_MAX, stretched)
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= start + longest:
                return
            if now < last + gap:
                self._wake.wait(min(last + gap, start + longest) - now)
            elif not self._wake.wait(min(_SETTLE_QUIET, start + longest - now)):
                return
            self._wake.clear()

    def refresh(self) -> Diff | None:
        """Ask the server for the head commit; on a new one, swap in its tree. Never raises."""
        if self.pinned:
            return None
        started = time.monotonic()
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
        diff = self.swap_tree(new, started=started)
        self._refresh_cost = time.monotonic() - started
        return diff

    def swap_tree(self, new: Tree, *, started: float | None = None) -> Diff:
        """Make `new` the current tree; invalidate only the paths that changed.

        `started` (monotonic) is when the listing was asked for: local state the server took
        before then is settled by it (our own commits are not someone else's change).
        """
        with self._lock:
            diff = self._tree.diff(new)
            self._tree = new
            ours = self._settle(new, started)
            touched = ["/" + p if p else "/" for p in diff.touched()]
            touched = [p for p in touched if p not in ours]
            self._gen += 1  # a stat computed from the old tree must not be cached
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

    def _settle(self, new: Tree, started: float | None) -> set[str]:
        """Drop overlay entries the new tree now shows; returns the paths that are ours (the
        kernel keeps their pages). Caller holds the lock."""
        ours: set[str] = set()
        for p, node in list(self._nodes.items()):
            f = new.file(p[1:])
            if node.uploaded_at is None or node.writers:
                if not node.local:
                    ours.add(p)  # local bytes win until they are uploaded
                continue
            if f is not None and f.key == node.key:
                del self._nodes[p]
                ours.add(p)
            elif started is not None and node.uploaded_at < started:
                del self._nodes[p]  # changed on the server after our upload: theirs now
        for p, done in list(self._hidden.items()):
            if p in self._kept or done is None:
                continue
            if new.file(p[1:]) is None or (started is not None and done < started):
                del self._hidden[p]
        return ours

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
        if isinstance(h, _FileHandle):
            n = h.node
            return self._file_stat(n.size, n.mtime_ns, self._mode_of(n.path, self._file_mode))
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
        gen, tree = self._gen, self._tree
        kind, obj = self._lookup(path)
        if kind == "node":
            mode = self._mode_of(path, self._file_mode)
            return self._file_stat(obj.size, obj.mtime_ns, mode)
        if kind == "tree":
            mtime = self._attrs.get(path, {}).get("mtime", obj.mtime_ms * 1_000_000)
            st = self._file_stat(obj.size, mtime, self._mode_of(path, self._file_mode))
        elif kind == "dir":
            st = self._dir_stat(self._mode_of(path, self._dir_mode))
        else:
            raise NotFound(f"{path}: no such file or folder")
        if tree is self._tree and gen == self._gen:  # not from a tree or overlay just replaced
            self._stats[path] = st
        return st

    def _mode_of(self, path: str, default: int) -> int:
        a = self._attrs.get(path)
        if a is None or "mode" not in a or self.read_only:
            return default
        return (default & ~0o7777) | a["mode"]

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
        kind, _ = self._lookup(path)
        if kind != "dir":
            if kind != "none" or path.startswith((RUNS + "/", META + "/")):
                raise DominoError(f"{path}: not a folder", errno=_errno.ENOTDIR)
            raise NotFound(f"{path}: no such folder")
        if not (self._nodes or self._hidden or self._dirs or self._gone_dirs):
            names: Iterable[str] = self._tree.children(rel) or ()
        else:
            with self._lock:
                names = self._list(path)
        if rel == "":
            return [*_VIRTUAL_ROOT_NAMES, *(n for n in names if n not in _VIRTUAL_ROOT_NAMES)]
        return list(names)

    def entry_stat(self, path: str) -> StatDict | None:
        """The stat of a folder entry for a readdir that returns attributes (READDIRPLUS), or
        None where the kernel should look it up itself (`.runs/`, `.dominofs/`: rendered on
        demand, maybe from the server; or gone in between)."""
        st = self._stats.get(path)
        if st is not None:
            return st
        if path.startswith((RUNS + "/", META + "/")):
            return None
        try:
            return self._getattr_slow(path)
        except DominoError:
            return None

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
        if writing:
            self._check_writable(path)
            return self._open_write(path, flags)
        kind, f = self._lookup(path)
        if kind == "node":
            node: _Node = f
            if node.work is not None:
                with self._lock:
                    if node.work is not None:
                        fd = os.open(node.work, os.O_RDONLY)
                        fh = next(self._fh)
                        self._handles[fh] = _FileHandle(node, fd, writable=False)
                        return Opened(fh)
            assert node.key is not None
            reader = self._cache.open(node.key, node.size)
            return self._add(_BlobHandle(path, reader, node.mtime_ns))
        if kind != "tree":
            if kind == "dir" or path in (RUNS, META):
                raise DominoError(f"{path}: is a folder", errno=_errno.EISDIR)
            raise NotFound(f"{path}: no such file")
        reader = self._cache.open(f.key, f.size)
        handle = _BlobHandle(path, reader, f.mtime_ms * 1_000_000)
        with self._lock:
            keys = self._open_keys.setdefault(path, {})
            others = any(k != f.key for k in keys)
            keys[f.key] = keys.get(f.key, 0) + 1
            # Pages may be kept when they can only hold this key's bytes and those bytes are
            # verified: pages read from a download still in flight may
            # hold bytes whose hash has not been checked yet (a failure drops them).
            keep = not others and reader.complete and self._page_key.get(path) == f.key
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
        data: bytes = self._handle(fh).read(size, offset)
        return data

    def read_into(self, fh: int, buf: memoryview, offset: int) -> int:
        """`read` into `buf` (as many bytes as it is long); returns how many were read.

        Raises:
            as `read`.
        """
        n: int = self._handle(fh).read_into(buf, offset)
        return n

    def _handle(self, fh: int) -> Any:
        try:
            return self._handles[fh]
        except KeyError:
            raise DominoError("bad file handle", errno=_errno.EBADF) from None

    def write(self, fh: int, data: bytes | memoryview, offset: int) -> int:
        """Write to an open handle: only `.runs/start` takes writes for now.

        Raises:
            ReadOnly, DominoError(EBADF, EFBIG).
        """
        h = self._handle(fh)
        if isinstance(h, _FileHandle) and h.writable:
            node = h.node
            if h.append:
                offset = os.fstat(h.fd).st_size
            n = os.pwrite(h.fd, data, offset)
            node.dirty = True
            node.mtime_ns = time.time_ns()
            if offset + n > node.size:
                node.size = offset + n
            return n
        if not isinstance(h, _StartHandle):
            raise DominoError("not open for writing", errno=_errno.EBADF)
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
        if isinstance(h, _FileHandle) and h.writable:
            os.ftruncate(h.fd, length)
            h.node.size = length
            h.node.dirty = True
            h.node.mtime_ns = time.time_ns()
            return
        self.getattr(path)
        self._check_writable(path)
        # truncate(2) by path: an open, a truncate and a close.
        opened = self._open_write(path, os.O_TRUNC if length == 0 else 0)
        try:
            self.truncate(path, length, opened.fh)
        finally:
            self.release(opened.fh)

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
            if isinstance(h, _FileHandle) and h.writable:
                node = h.node
                node.writers -= 1
                if node.writers == 0 and not node.dead and (node.dirty or node.queued):
                    try:
                        self._schedule(node)
                    except Exception:
                        log.exception("%s: cannot queue the upload", node.path)
                if h.direct and any(
                    getattr(o, "node", None) is node or getattr(o, "path", None) == node.path
                    for o in self._handles.values()
                ):
                    # Pages a reader holds may predate these writes. Linux 6.18 drops them
                    # itself on a direct write; older kernels may not.
                    released = node.path
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

    def _on_blob_failed(self, key: str) -> None:
        """A download of `key` failed after serving bytes: the kernel may hold unverified pages
        of every path showing that key; forget them and have the kernel drop them."""
        with self._lock:
            paths = [p for p, k in self._page_key.items() if k == key]
            for p in paths:
                del self._page_key[p]
        if paths and self.invalidate is not None:
            try:
                self.invalidate(paths)
            except Exception:
                log.exception("kernel cache invalidation failed")

    # -- the write side ------------------------------------------------------------------
    #
    # The mount's view is the tree overlaid with local state, all guarded by self._lock:
    # `_nodes` (files whose bytes are local: a staging file, or a blob key after a rename or an
    # upload), `_hidden` (server files deleted or renamed away here), `_dirs` (folders made
    # here) and `_gone_dirs` (server folders removed here). The outbox is the upload timer: an
    # entry is queued with "not before" = last close + upload delay, held while a writer is
    # open, and withdrawn when its path is renamed or deleted before it is sent.

    def _check_writable(self, path: str) -> None:
        if self.read_only or self._outbox is None:
            raise ReadOnly(f"{path}: this mount is read-only")
        if path in (META, RUNS) or path.startswith((META + "/", RUNS + "/")):
            raise ReadOnly(f"{path}: the mount manages this folder (read-only)")

    def _ignored(self, path: str) -> bool:
        return self._ignore.is_ignored(path[1:])

    def _changed(self) -> None:
        """Forget cached stats after a change of the overlay. Caller holds the lock."""
        self._gen += 1
        self._stats = {}

    def _lookup(self, path: str) -> tuple[str, Any]:
        """("node", _Node) | ("tree", RemoteFile) | ("dir", None) | ("none", None)."""
        node = self._nodes.get(path)
        if node is not None:
            return "node", node
        if path == "/" or path in self._dirs:
            return "dir", None
        rel = path[1:]
        tree = self._tree
        if path not in self._hidden:
            f = tree.file(rel)
            if f is not None:
                return "tree", f
        if tree.is_dir(rel) and path not in self._gone_dirs:
            return "dir", None
        return "none", None

    def _parent_ok(self, path: str) -> None:
        parent = path.rsplit("/", 1)[0] or "/"
        kind, _ = self._lookup(parent)
        if kind == "none":
            raise NotFound(f"{parent}: no such folder")
        if kind != "dir":
            raise DominoError(f"{parent}: not a folder", errno=_errno.ENOTDIR)

    def _list(self, path: str) -> list[str]:
        """Names in the folder `path` of the mount's view. Caller holds the lock or accepts
        an answer from just before a concurrent change."""
        names: set[str] = set()
        children = self._tree.children(path[1:]) if path not in self._gone_dirs else None
        prefix = "/" if path == "/" else path + "/"
        for n in children or ():
            if self._lookup(prefix + n)[0] != "none":
                names.add(n)
        names.update(self._children.names(path))
        return sorted(names)

    def _remote_key(self, path: str) -> str | None:
        """The key the server has (or will have) at `path`, as far as this mount knows."""
        node = self._nodes.get(path)
        if node is not None and not node.local and node.base_key is not None:
            return node.base_key
        f = self._tree.file(path[1:])
        return f.key if f is not None else None

    def _copy_blob(self, key: str, size: int, dest: Path) -> None:
        """Write blob `key` into `dest` (through the cache; may download). No lock held."""
        reader = self._cache.open(key, size)
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                off = 0
                while off < size:
                    chunk = reader.read(min(1 << 20, size - off), off)
                    if not chunk:
                        break
                    os.pwrite(fd, chunk, off)
                    off += len(chunk)
            finally:
                os.close(fd)
        finally:
            reader.close()

    def _new_work(self) -> Path:
        assert self._outbox is not None
        return self._outbox.staging_path()

    def _new_staged(self) -> tuple[Path, int]:
        """A new empty staging file and a read-write fd on it."""
        work = self._new_work()
        return work, os.open(work, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

    def _make_writable(self, node: _Node, *, truncate: bool = False) -> None:
        """Give `node` a staging file the caller may modify. Caller holds the lock.

        A key-only node gets its blob copied in (only local disk or the cache, which may
        download: callers materialise tree files before taking the lock); a staging file the
        outbox is sending right now is copied first (copy-on-write).
        """
        assert self._outbox is not None
        if node.work is None:
            work = self._new_work()
            if truncate or node.size == 0 or node.key is None:
                work.touch(mode=0o600)
                node.size = 0
            else:
                self._copy_blob(node.key, node.size, work)
            node.work, node.key = work, None
            node.uploaded_at = None
            return
        if node.queued:
            if self._outbox.hold(node.path):
                return
            work = self._new_work()
            if truncate:
                work.touch(mode=0o600)
                node.size = 0
            else:
                shutil.copyfile(node.work, work)
            node.work, node.queued = work, False
        node.uploaded_at = None

    def _schedule(self, node: _Node, *, held: bool = False, durable: bool = False) -> None:
        """Queue `node`'s staging file for upload after the delay. Caller holds the lock.

        `durable` (fsync's promise): the staged bytes and the entry are on disk on return.
        """
        assert self._outbox is not None
        assert node.work is not None
        if node.local or node.dead:
            return
        when = time.time() + (_HELD if held else self.upload_delay)
        self._outbox.enqueue_upload(
            node.path[1:], node.work, base_key=node.base_key, not_before=when, durable=durable
        )
        node.queued = True
        node.dirty = False

    def _drop_node(self, node: _Node) -> None:
        """Forget `node` and its queued upload (its staging file too when not being sent)."""
        assert self._outbox is not None
        node.dead = True
        self._nodes.pop(node.path, None)
        idle = True
        if node.queued:
            idle = self._outbox.withdraw(node.path[1:])
        if node.work is not None and idle:
            with contextlib.suppress(FileNotFoundError):
                node.work.unlink()
        node.queued = False

    def _remove_server_file(self, path: str, base_key: str | None, *, sent: bool) -> None:
        """Hide `path` and queue its deletion when the server has it. Caller holds the lock."""
        assert self._outbox is not None
        if self._ignored(path):
            return
        on_server = self._tree.file(path[1:]) is not None and path not in self._hidden
        if not (on_server or sent):
            return
        self._hidden[path] = None
        self._outbox.enqueue_delete(
            path[1:], base_key=base_key, not_before=time.time() + self.upload_delay
        )

    def _unhide(self, path: str) -> None:
        """`path` is (re)created here: cancel its pending deletion. Caller holds the lock."""
        assert self._outbox is not None
        if path in self._hidden:
            del self._hidden[path]
            self._outbox.withdraw(path[1:])
        if path in self._kept:
            self._kept.discard(path)
            self._outbox.forget_kept_local(path[1:])

    def _materialize(self, path: str, flags: int) -> _Node | None:
        """A node for the tree file at `path` with its bytes in a staging file (no lock held)."""
        f = self._tree.file(path[1:])
        if f is None or path in self._nodes or path in self._hidden:
            return None
        work = self._new_work()
        if flags & os.O_TRUNC or f.size == 0:
            work.touch(mode=0o600)
            size = 0
        else:
            self._copy_blob(f.key, f.size, work)
            size = f.size
        return _Node(path, work, None, size, f.mtime_ms * 1_000_000, f.key, self._ignored(path))

    def _open_write(self, path: str, flags: int) -> Opened:
        staged = self._materialize(path, flags) if path not in self._nodes else None
        with self._lock:
            kind, obj = self._lookup(path)
            if kind == "none":
                raise NotFound(f"{path}: no such file")
            if kind == "dir":
                raise DominoError(f"{path}: is a folder", errno=_errno.EISDIR)
            if kind == "tree":
                if staged is None or staged.base_key != obj.key:
                    if staged is not None and staged.work is not None:
                        staged.work.unlink(missing_ok=True)
                    raise DominoError(
                        f"{path}: changed while opening; try again", errno=_errno.EAGAIN
                    )
                node = staged
                self._nodes[path] = node
            else:
                node = obj
                if staged is not None and staged.work is not None:
                    staged.work.unlink(missing_ok=True)
                self._make_writable(node, truncate=bool(flags & os.O_TRUNC))
            assert node.work is not None
            if flags & os.O_TRUNC and node.size:
                os.truncate(node.work, 0)
                node.size = 0
                node.dirty = True
                node.mtime_ns = time.time_ns()
            return self._add_writer(node, flags)

    def _add_writer(self, node: _Node, flags: int, fd: int = -1) -> Opened:
        """Open a read-write fd on `node`'s staging file (or take `fd`, open on it). Caller
        holds the lock."""
        assert node.work is not None
        if fd < 0:
            fd = os.open(node.work, os.O_RDWR)
        node.writers += 1
        self._page_key.pop(node.path, None)
        self._changed()
        fh = next(self._fh)
        # A write-only handle cannot be mmap'ed (mmap needs read access), so it can skip the
        # kernel's page cache: the bytes are kept once (in the staging file), not twice, and
        # `dd` into the mount ran 1.9x faster. Readers open at the time are invalidated when
        # it is released (release).
        direct = (flags & os.O_ACCMODE) == os.O_WRONLY
        self._handles[fh] = _FileHandle(
            node, fd, writable=True, append=bool(flags & os.O_APPEND), direct=direct
        )
        return Opened(fh, direct_io=direct)

    def create(self, path: str, mode: int, flags: int) -> Opened:
        """Create (or, without O_EXCL, open and truncate) the file `path`.

        Raises:
            ReadOnly, NotFound (no parent), DominoError(EEXIST, EISDIR, ENOTDIR, EACCES).
        """
        if path == RUNS + "/" + START:
            return self._open_runs(START, True)
        self._check_writable(path)
        # The staging file of a new name is made before the lock is taken (a new inode can
        # take a while); a look without the lock only decides whether that is worth it.
        work: Path | None = None
        fd = -1
        installed = False  # a node names the staging file: it stays even if a step fails
        if self._lookup(path)[0] == "none":
            work, fd = self._new_staged()
        try:
            with self._lock:
                self._parent_ok(path)
                kind, _ = self._lookup(path)
                if kind == "dir":
                    raise DominoError(f"{path}: is a folder", errno=_errno.EISDIR)
                exists = kind != "none"
                if exists and flags & os.O_EXCL:
                    raise DominoError(f"{path}: exists", errno=_errno.EEXIST)
                if not exists:
                    if work is None:
                        work, fd = self._new_staged()
                    node = _Node(
                        path, work, None, 0, time.time_ns(), self._remote_key(path),
                        self._ignored(path), dirty=True,
                    )  # fmt: skip
                    self._unhide(path)
                    self._nodes[path] = node
                    installed = True
                    self._attrs.pop(path, None)
                    if mode & 0o7777 not in (0o644, 0o666):
                        self._attrs[path] = {"mode": mode & 0o7777}
                    self._record_mode(path)
                    opened = self._add_writer(node, flags, fd)
                    fd = -1  # the handle owns it
                    return opened
        finally:
            if fd >= 0:
                os.close(fd)
                if not installed:
                    assert work is not None
                    work.unlink(missing_ok=True)
        return self._open_write(path, flags | os.O_TRUNC)

    def mkdir(self, path: str, mode: int) -> None:
        """Make a folder (kept in the mount; the server learns of it through its files).

        Raises:
            ReadOnly, NotFound (no parent), DominoError(EEXIST, ENOTDIR).
        """
        self._check_writable(path)
        with self._lock:
            self._parent_ok(path)
            if self._lookup(path)[0] != "none":
                raise DominoError(f"{path}: exists", errno=_errno.EEXIST)
            self._dirs.add(path)
            self._gone_dirs.discard(path)
            self._changed()

    def rmdir(self, path: str) -> None:
        """Remove an empty folder.

        Raises:
            NotFound, DominoError(ENOTDIR, ENOTEMPTY, EBUSY for the root).
        """
        self._check_writable(path)
        if path == "/":
            raise DominoError("/: is the mount's root", errno=_errno.EBUSY)
        with self._lock:
            kind, _ = self._lookup(path)
            if kind == "none":
                raise NotFound(f"{path}: no such folder")
            if kind != "dir":
                raise DominoError(f"{path}: not a folder", errno=_errno.ENOTDIR)
            if self._list(path):
                raise DominoError(f"{path}: folder not empty", errno=_errno.ENOTEMPTY)
            self._dirs.discard(path)
            if self._tree.is_dir(path[1:]):
                self._gone_dirs.add(path)
            self._attrs.pop(path, None)
            self._record_mode(path)
            self._changed()

    def unlink(self, path: str) -> None:
        """Remove a file; a server file's deletion is queued (after the upload delay).

        Raises:
            NotFound, DominoError(EISDIR).
        """
        self._check_writable(path)
        with self._lock:
            kind, obj = self._lookup(path)
            if kind == "none":
                raise NotFound(f"{path}: no such file")
            if kind == "dir":
                raise DominoError(f"{path}: is a folder", errno=_errno.EISDIR)
            sent = False
            base = self._remote_key(path)
            if kind == "node":
                assert self._outbox is not None
                sent = obj.uploaded_at is not None or self._outbox.in_flight(path[1:])
                self._drop_node(obj)
            self._remove_server_file(path, base, sent=sent)
            self._attrs.pop(path, None)
            self._record_mode(path)
            self._changed()

    def rename(self, old: str, new: str) -> None:
        """Rename a file or folder, replacing `new` if it exists (atomic in the mount's view).

        Raises:
            NotFound, DominoError(EISDIR, ENOTDIR, ENOTEMPTY, EINVAL).
        """
        self._check_writable(old)
        self._check_writable(new)
        if old == new:
            return
        if new.startswith(old + "/"):
            raise DominoError(f"{new}: inside {old}", errno=_errno.EINVAL)
        # Server files moved to a name that is uploaded need their bytes staged: done first,
        # without the lock (it may download).
        staged: dict[str, _Node] = {}
        for src, dst in self._moves(old, new):
            if src not in self._nodes and not self._ignored(dst):
                n = self._materialize(src, 0)
                if n is not None:
                    staged[src] = n
        try:
            with self._lock:
                self._rename_locked(old, new, staged)
        finally:
            for n in staged.values():
                if n.work is not None and not n.queued:
                    n.work.unlink(missing_ok=True)

    def _moves(self, old: str, new: str) -> list[tuple[str, str]]:
        """The files a rename of `old` to `new` moves (a file or every file in a folder)."""
        kind, _ = self._lookup(old)
        if kind != "dir":
            return [(old, new)]
        out: list[tuple[str, str]] = []
        stack = [old]
        while stack:
            d = stack.pop()
            for name in self._list(d):
                p = d + "/" + name
                if self._lookup(p)[0] == "dir":
                    stack.append(p)
                else:
                    out.append((p, new + p[len(old) :]))
        return out

    def _rename_locked(self, old: str, new: str, staged: dict[str, _Node]) -> None:
        kind, _ = self._lookup(old)
        if kind == "none":
            raise NotFound(f"{old}: no such file or folder")
        self._parent_ok(new)
        target, _ = self._lookup(new)
        if kind == "dir":
            if target not in ("none", "dir"):
                raise DominoError(f"{new}: not a folder", errno=_errno.ENOTDIR)
            if target == "dir":
                if self._list(new):
                    raise DominoError(f"{new}: folder not empty", errno=_errno.ENOTEMPTY)
                self._dirs.discard(new)
            # Sub-folders first (empty ones must survive), then every file.
            stack, dirs = [old], []
            while stack:
                d = stack.pop()
                dirs.append(d)
                for name in self._list(d):
                    p = d + "/" + name
                    if self._lookup(p)[0] == "dir":
                        stack.append(p)
            for src, dst in self._moves(old, new):
                self._move_file(src, dst, staged)
            for d in dirs:
                self._dirs.discard(d)
                if self._tree.is_dir(d[1:]):
                    self._gone_dirs.add(d)
                nd = new + d[len(old) :]
                self._dirs.add(nd)
                self._gone_dirs.discard(nd)
        else:
            if target == "dir":
                raise DominoError(f"{new}: is a folder", errno=_errno.EISDIR)
            self._move_file(old, new, staged)
        self._changed()

    def _move_file(self, old: str, new: str, staged: dict[str, _Node]) -> None:
        """Move one file of the mount's view. Caller holds the lock."""
        assert self._outbox is not None
        kind, obj = self._lookup(old)
        old_base = self._remote_key(old)
        sent = False
        if kind == "node":
            node: _Node = obj
            sent = node.uploaded_at is not None
            if node.queued:
                if not self._outbox.withdraw(old[1:]):
                    sent = True  # the old name is being uploaded: it gets deleted after
                    work = self._new_work()
                    assert node.work is not None
                    shutil.copyfile(node.work, work)
                    node.work = work
                node.queued = False
            del self._nodes[old]
        else:
            f = obj
            pre = staged.get(old)
            if pre is not None and pre.base_key == f.key:
                node = pre
                staged.pop(old)
            else:
                node = _Node(old, None, f.key, f.size, f.mtime_ms * 1_000_000, f.key, False)
        self._remove_server_file(old, old_base, sent=sent)
        dest = self._nodes.get(new)
        new_base = self._remote_key(new)
        if dest is not None:
            self._drop_node(dest)
        self._unhide(new)
        node.path = new
        node.local = self._ignored(new)
        node.base_key = new_base
        node.uploaded_at = None
        self._nodes[new] = node
        if old in self._attrs:
            self._attrs[new] = self._attrs.pop(old)
        else:
            self._attrs.pop(new, None)
        self._record_mode(old)
        self._record_mode(new)
        self._page_key.pop(new, None)
        self._page_key.pop(old, None)
        if node.local:
            return
        if node.work is None:
            # A blob-only node (a server file whose bytes were not staged): stage it now.
            self._make_writable(node)
        if node.writers:
            node.dirty = True  # the last close queues it
        else:
            self._schedule(node)

    def chmod(self, path: str, mode: int) -> None:
        """Set the mode bits (kept in the mount: the API has no modes)."""
        self._check_writable(path)
        with self._lock:
            if self._lookup(path)[0] == "none":
                raise NotFound(f"{path}: no such file or folder")
            self._attrs.setdefault(path, {})["mode"] = mode & 0o7777
            self._record_mode(path)
            self._changed()

    def chown(self, path: str, uid: int, gid: int) -> None:
        """Only to the mounting user and group (-1 keeps one): the API has no owners."""
        self._check_writable(path)
        with self._lock:
            if self._lookup(path)[0] == "none":
                raise NotFound(f"{path}: no such file or folder")
        if uid not in (-1, self._uid, 0xFFFFFFFF) or gid not in (-1, self._gid, 0xFFFFFFFF):
            raise NotSupported(f"{path}: files in the mount belong to the mounting user")

    def utimens(self, path: str, times: tuple[int, int] | None) -> None:
        """Set a file's times (kept in the mount)."""
        if path == RUNS + "/" + START:
            return  # `touch .runs/start` is harmless
        self._check_writable(path)
        mtime = time.time_ns() if times is None else int(times[1])
        with self._lock:
            kind, obj = self._lookup(path)
            if kind == "none":
                raise NotFound(f"{path}: no such file or folder")
            if kind == "node":
                obj.mtime_ns = mtime
            else:
                self._attrs.setdefault(path, {})["mtime"] = mtime
            self._changed()

    def symlink(self, target: str, source: str) -> None:
        log.info("symlink %s refused: Domino projects hold no symbolic links", target)
        raise NotSupported(f"{target}: Domino projects hold no symbolic links")

    def link(self, target: str, source: str) -> None:
        log.info("link %s refused: Domino projects hold no hard links", target)
        raise NotSupported(f"{target}: Domino projects hold no hard links")

    def mknod(self, path: str, mode: int, dev: int) -> None:
        log.info("mknod %s refused: Domino projects hold only files and folders", path)
        raise NotSupported(f"{path}: Domino projects hold only files and folders")

    def fsync(self, fh: int) -> None:
        """Make the handle's bytes durable in its staging file and the queue (not the server)."""
        h = self._handles.get(fh)
        if not isinstance(h, _FileHandle) or not h.writable:
            return
        os.fsync(h.fd)
        with self._lock:
            node = h.node
            if not node.dead and not node.local and (node.dirty or not node.queued):
                # Held while a writer is open; the last close restarts the timer.
                self._schedule(node, held=node.writers > 0, durable=True)

    # -- outbox hooks (uploader threads) -------------------------------------------------

    def _on_uploaded(self, path: str, result: UploadResult, staged: Path, entry: Entry) -> None:
        p = "/" + path
        cached = self._adopt(result.key, staged, result.size)
        with self._lock:
            node = self._nodes.get(p)
            if node is not None and node.work == staged and not node.dirty and not node.writers:
                if cached:
                    node.work, node.key = None, result.key
                node.queued = False
                node.size = result.size
                node.uploaded_at = time.monotonic()
            if node is not None:
                node.base_key = result.key
            self._changed()
        self._wake.set()

    def _adopt(self, key: str, staged: Path, size: int) -> bool:
        """Hand the cache a second link to uploaded bytes; True when it has the key now.

        The staged file cannot change meanwhile: it is being sent, so a writer copies it
        first (_make_writable). The outbox removes the staged name when the entry completes.
        """
        link = staged.with_name(staged.name + ".adopt")
        try:
            os.link(staged, link)
        except OSError:
            return self._cache.contains(key)
        if self._cache.adopt(key, link, size):
            return True
        link.unlink(missing_ok=True)
        return self._cache.contains(key)

    def _on_conflict(
        self, path: str, cpath: str, result: UploadResult, staged: Path, entry: Entry
    ) -> None:
        p, cp = "/" + path, "/" + cpath
        with self._lock:
            node = self._nodes.get(p)
            if node is not None and node.work == staged and not node.dirty and not node.writers:
                # Ours lives on as the conflict copy; the path shows the server's version.
                self._nodes.pop(p)
                node.dead = True
            self._adopt(result.key, staged, result.size)
            if cp not in self._nodes:
                self._nodes[cp] = _Node(
                    cp, None, result.key, result.size, time.time_ns(), result.key, False,
                    uploaded_at=time.monotonic(),
                )  # fmt: skip
            self._changed()
        self._wake.set()
        if self.invalidate is not None:
            with contextlib.suppress(Exception):
                self.invalidate([p, cp])

    def _on_deleted(self, path: str, outcome: DeleteOutcome, entry: Entry) -> None:
        p = "/" + path
        with self._lock:
            if outcome == "kept_local":
                self._kept.add(p)
            elif outcome == "changed_remotely":
                self._hidden.pop(p, None)
            elif p in self._hidden:
                self._hidden[p] = time.monotonic()
            self._changed()
        self._wake.set()

    def _restore(self) -> None:
        """Rebuild the overlay from the queue a previous run of this mount left."""
        assert self._outbox is not None
        for e in self._outbox.entries():
            p = "/" + e.path
            if e.op == "delete":
                self._hidden[p] = None
            elif e.staged is not None and e.staged.exists():
                st = e.staged.stat()
                self._nodes[p] = _Node(
                    p, e.staged, None, st.st_size, st.st_mtime_ns, e.base_key, False, queued=True
                )
        for path in self._outbox.kept_local():
            self._hidden["/" + path] = None
            self._kept.add("/" + path)
        if self._nodes or self._hidden:
            log.info(
                "resuming %d queued uploads and %d deletions", len(self._nodes), len(self._hidden)
            )

    def _record_mode(self, path: str) -> None:
        """Journal `path`'s mode as it now stands (none: the default). Caller holds the lock."""
        if self._modes is not None:
            self._modes.record(path, self._attrs.get(path, {}).get("mode"))

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
            "pending": [],
            "failed": [],
            "conflicts": [],
            "deletions_kept_local": [],
            "cache": self._cache.stats(),
            "open_handles": len(self._handles),
            **self._outbox_status(),
        }

    def _outbox_status(self) -> dict[str, Any]:
        if self._outbox is None:
            return {}
        st = self._outbox.status()
        out = {k: st[k] for k in ("pending_uploads", "pending", "failed", "conflicts")}
        # Written but not queued yet (still open, or closed a moment ago): pending too.
        unqueued = [
            n.path[1:]
            for n in list(self._nodes.values())
            if n.dirty and not n.queued and not n.local and not n.dead
        ]
        out["pending_uploads"] += len(unqueued)
        out["pending"] = [*out["pending"], *({"path": p, "op": "write"} for p in unqueued)]
        out["deletions_kept_local"] = st["deletions_kept_local"]
        if st["server_reachable"] is False:
            out["server_reachable"] = False
        if st["last_error"] and not self.last_error:
            out["last_error"] = st["last_error"]
        return out

    def _status_bytes(self) -> bytes:
        return (json.dumps(self.status(), indent=2, sort_keys=True) + "\n").encode("utf-8")
