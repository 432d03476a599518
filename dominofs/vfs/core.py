"""The VFS: one mounted project, built from its parts, with stat, readdir and the tree swap.

Owns: wiring the namespace (inodes.py), the local layer, the hand-over to the outbox
(uploads.py), the refresher (refresh.py) and the status view into one object with the calls
fs.py makes; stat, readdir, readlink and statfs; swapping in a new tree (only the changed paths
are invalidated; a handle on an old version keeps its size until it is released); the virtual
`.runs/` and `.dominofs/`; and resuming what a previous run of the mount left. The file calls
are in files.py, the namespace and metadata calls in names.py.
Must not import the FUSE binding, requests or api.py; raises only errors.*.

Locking: one lock guards every change of the namespace, the layer's batch and the handle
table; readers of the namespace and the stat cache take none (see inodes.py). Never call the
server or the cache's download machinery while holding it.
"""

from __future__ import annotations

import errno as _errno
import logging
import os
import stat as _stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..cache import BlobCache
from ..errors import DominoError, NotFound
from ..ignore import IgnoreRules
from ..layer import Layer, forget_legacy_modes, legacy_modes
from ..links import decode_target, link_of
from ..models import Remote
from ..outbox import Outbox
from ..runsdir import START, RunsDir
from ..tree import Diff, Tree
from .base import META, RUNS, STATUS, VIRTUAL_ROOT_NAMES
from .handles import BlobHandle, BytesHandle, FileHandle, StartHandle
from .inodes import LINK, NODE, Defaults, Namespace, StatDict, remote_hash
from .names import NameOps
from .prefetch import Prefetcher
from .refresh import Poller, settle
from .statusview import StatusView, status_bytes
from .uploads import Uploads

log = logging.getLogger(__name__)

_SPARES = 256  # empty bytes files the layer keeps made for new files (see Layer.prepare)


class VFS(NameOps):
    """One mounted project (see the module docstring)."""

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
        layer_dir: Path | None = None,
        ignore: IgnoreRules | None = None,
        links: bool = False,
        umask: int | None = None,
        file_mode: int | None = None,
        dir_mode: int | None = None,
        prefetch_requests: int = 16,
        prefetch_bytes: int = 64 << 20,
    ) -> None:
        self._remote = remote
        self._cache = cache
        self._runs = runs if runs is not None else RunsDir(remote)
        self._listing_path = listing_path
        self.read_only = read_only or pinned
        self.pinned = pinned
        self._started_ns = time.time_ns()
        mask = 0o022 if umask is None else umask
        fmode = (0o666 & ~mask) if file_mode is None else file_mode
        dmode = (0o777 & ~mask) if dir_mode is None else dir_mode
        if self.read_only:
            fmode, dmode = fmode & ~0o222, dmode & ~0o222
        defaults = Defaults(
            os.getuid() if uid is None else uid, os.getgid() if gid is None else gid, fmode, dmode
        )
        self._lock = threading.Lock()
        self._init_handles()
        self.invalidate: Callable[[Iterable[str]], None] | None = None
        self.caller: Callable[[], tuple[int, int]] | None = None
        self.layer = None
        if not self.read_only and outbox is not None:
            self.layer = Layer(layer_dir or outbox.directory.parent / "layer")
        self.ns = Namespace(
            tree, self.layer, defaults, started_ns=self._started_ns, links=links, ignore=ignore
        )
        self.ns.root_extra = len(VIRTUAL_ROOT_NAMES)
        self._poller = Poller(
            remote, lambda: self.ns.tree, self._apply, interval=poll_interval, reachable=reachable
        )
        self.prefetcher = Prefetcher(
            self.ns, cache, requests=prefetch_requests, budget=prefetch_bytes
        )
        self._status = StatusView(remote, self.ns, cache, self.prefetcher, self._lock)
        self._outbox = None if self.read_only else outbox
        self.uploads = None
        cache.on_failed = self._on_blob_failed
        if self.layer is not None and outbox is not None:
            self.uploads = Uploads(
                self.ns, self.layer, outbox, cache, self._lock,
                upload_delay=upload_delay, wake=self._poller.wake, invalidate=self._invalidate,
            )  # fmt: skip
            with self._lock:
                self._resume()
        self._upload_delay = upload_delay

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def tree(self) -> Tree:
        return self.ns.tree

    @property
    def upload_delay(self) -> float:
        return self._upload_delay

    @upload_delay.setter
    def upload_delay(self, value: float) -> None:
        self._upload_delay = value
        if self.uploads is not None:
            self.uploads.upload_delay = value

    @property
    def poll_interval(self) -> float:
        return self._poller.interval

    @poll_interval.setter
    def poll_interval(self, value: float) -> None:
        self._poller.interval = value

    @property
    def reachable(self) -> bool:
        return self._poller.reachable

    @property
    def last_error(self) -> str | None:
        return self._poller.last_error

    @property
    def attr_timeout(self) -> float:
        """How long the kernel may keep attributes and entries: until the next look at the head
        commit (a change found then is invalidated path by path), between 1 s and 1 min."""
        if self.pinned or self.poll_interval <= 0:
            return 60.0  # nothing changes, or only through this mount, which invalidates
        return min(max(self.poll_interval, 1.0), 60.0)

    def start(self) -> None:
        """Start polling the head commit (not for a pinned commit; with an interval of 0, only
        after this mount's own uploads), making the layer's spare bytes files and queueing
        closed files' uploads (Uploads.schedule_soon)."""
        if self.layer is not None and not self.read_only:
            threading.Thread(
                target=self.layer.keep_spares, args=(_SPARES,), name="layer-spares", daemon=True
            ).start()
        if self.uploads is not None:
            self.uploads.start()
        if self.pinned or (self.poll_interval <= 0 and self._outbox is None):
            return
        self._poller.start()

    def close(self) -> None:
        """Stop the poller, queue the closes not queued yet, close every handle and the local
        layer."""
        self._poller.stop()
        if self.uploads is not None:
            self.uploads.stop()
        with self._lock:
            handles = list(self._handles.values())
            self._handles = {}
        for h in handles:
            try:
                h.close()
            except Exception:
                log.exception("closing a handle failed")
        if self.layer is not None:
            with self._lock:
                for node in list(self.ns.writing.values()):
                    self.ns.save(node)
                self.layer.close()

    def _resume(self) -> None:
        """Reconcile the layer with its bytes folder and with the queue. Lock held."""
        assert self.layer is not None
        assert self.uploads is not None
        ns = self.ns
        claimed: set[str] = set()
        for node in ns.inodes.values():
            if node.work is None:
                continue
            try:
                # Writes after the last commit (a crash while a writer was open) are here.
                node.size = self.layer.path_of(node.work).stat().st_size
                claimed.add(node.work)
            except FileNotFoundError:
                log.error("%s: the local layer lost the bytes of %s", node.names, node.work)
                node.work = None
            ns.save(node)
        self.layer.sweep(claimed)
        if ns.fresh:
            self._import_modes()
        self.uploads.restore()
        self._commit()

    def _import_modes(self) -> None:
        """Modes an older version journaled go into the layer, once."""
        assert self.layer is not None
        state_dir = self.layer.directory.parent
        for path, mode in legacy_modes(state_dir).items():
            if self.ns.lookup(path)[0] != "none":
                node = self.ns.copy_up(path)
                node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
                self.ns.save(node)
        forget_legacy_modes(state_dir)

    # -- the tree ------------------------------------------------------------------------

    def refresh(self) -> Diff | None:
        """Ask the server for the head commit; on a new one, swap in its tree. Never raises."""
        if self.pinned:
            return None
        return self._poller.refresh()

    def _apply(self, new: Tree, started: float) -> Diff:
        return self.swap_tree(new, started=started)

    def swap_tree(self, new: Tree, *, started: float | None = None) -> Diff:
        """Make `new` the current tree; invalidate only the paths that changed.

        `started` (monotonic) is when the listing was asked for: local state the server took
        before then is settled by it (our own commits are not someone else's change).
        """
        with self._lock:
            diff = self.ns.tree.diff(new)
            self.ns.tree = new
            kept = self.uploads.kept if self.uploads is not None else set()
            ours = settle(self.ns, self.layer, new, diff, started, kept=kept, in_use=self._in_use)
            touched = {"/" + p if p else "/" for p in diff.touched()}
            if self.ns.links:
                touched |= {"/" + n for p in diff.touched() if (n := link_of(p)) is not None}
            touched -= ours
            self.ns.gen += 1  # a stat computed from the old tree must not be cached
            for p in touched:
                held = self._held_stat(p)
                if held is None:
                    self.ns.stats.pop(p, None)
                else:
                    # The kernel has one size per inode and clamps reads to it: while a handle
                    # on the old version is open, stat keeps that version's size (new opens
                    # read the new bytes with direct_io); the switch happens at its release.
                    self.ns.stats[p] = held
                    self._held.add(p)
            invalid = [p for p in touched if p not in self._held]
            try:
                self._commit()
            except OSError as exc:
                log.warning("%s", exc)
        log.info(
            "commit %s: %d added, %d removed, %d changed",
            new.commit_id[:12], len(diff.added), len(diff.removed), len(diff.changed),
        )  # fmt: skip
        self.persist(new)
        self._invalidate(invalid)
        return diff

    def _held_stat(self, path: str) -> StatDict | None:
        """The stat of an open handle on an older version of `path`. Caller holds the lock."""
        if not self._open_keys.get(path):
            return None
        current = self._current_key(path)
        for h in self._handles.values():
            if isinstance(h, BlobHandle) and h.path == path and h.key != current:
                return self.ns.version_stat(path, h.size, h.mtime_ns, h.node)
        return None

    def persist(self, tree: Tree) -> None:
        """Save `tree` as the listing a mount starts from when the server is away."""
        if self._listing_path is None:
            return
        try:
            tree.save(self._listing_path)
        except OSError as exc:
            log.warning("cannot save the listing to %s: %s", self._listing_path, exc.strerror)

    # -- metadata ------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> StatDict:
        """stat(2) of `path` (of the open handle `fh` when given), from memory.

        Raises:
            NotFound: no such file or folder. DominoError(ENAMETOOLONG).
        """
        if fh is not None:
            h = self._handles.get(fh)
            if h is not None:
                st = self._handle_stat(h)
                if st is not None:
                    return st
        st = self.ns.stats.get(path)
        if st is not None:
            return st
        return self._getattr_slow(path)

    def _handle_stat(self, h: Any) -> StatDict | None:
        ns = self.ns
        if isinstance(h, FileHandle):
            return ns.node_stat(h.node)
        if isinstance(h, BlobHandle):
            if h.node is not None and h.node.key == h.key:
                return ns.node_stat(h.node)
            return ns.version_stat(h.path, h.size, h.mtime_ns, h.node)
        if isinstance(h, BytesHandle):
            return self._virtual_stat(STATUS, _stat.S_IFREG | 0o444, len(h.data), h.mtime_ns)
        if isinstance(h, StartHandle):
            return self._virtual_stat(RUNS + "/" + START, _stat.S_IFREG | 0o200, 0)
        return None

    def _virtual_stat(self, path: str, mode: int, size: int, mtime_ns: int = 0) -> StatDict:
        d = self.ns.defaults
        t = mtime_ns or self._started_ns
        nlink = 2 if _stat.S_ISDIR(mode) else 1
        return self.ns._stat(remote_hash(path), mode, nlink, size, d.uid, d.gid, t, t, t)

    def _getattr_slow(self, path: str) -> StatDict:
        if path in (RUNS, META):
            return self._virtual_stat(path, _stat.S_IFDIR | 0o555, 0)
        if path.startswith(RUNS + "/"):
            return self._runs_stat(path[len(RUNS) + 1 :])
        if path == STATUS:
            return self._virtual_stat(
                path, _stat.S_IFREG | 0o444, len(self._status_bytes()), time.time_ns()
            )
        if path.startswith(META + "/"):
            raise NotFound(f"{path}: no such file")
        self._check_name(path)
        st = self.ns.stat(path)
        if st is None:
            raise NotFound(f"{path}: no such file or folder")
        return st

    def _runs_stat(self, name: str) -> StatDict:
        if "/" in name or not self._runs.exists(name):
            raise NotFound(f".runs/{name}: no such file")
        if name == START:
            return self._virtual_stat(RUNS + "/" + START, _stat.S_IFREG | 0o200, 0)
        r = self._runs.rendering(name)
        return self._virtual_stat(
            RUNS + "/" + name, _stat.S_IFREG | 0o444, len(r.data), int(r.mtime * 1e9)
        )

    def readdir(self, path: str) -> list[str]:
        """Names in folder `path` (without . and ..).

        Raises:
            NotFound: no such folder. DominoError(ENOTDIR): not a folder.
        """
        if path == RUNS:
            return self._runs.names()
        if path == META:
            return ["status.json"]
        if not self.ns.is_dir(path):
            if self.ns.lookup(path)[0] != "none" or path.startswith((RUNS + "/", META + "/")):
                raise DominoError(f"{path}: not a folder", errno=_errno.ENOTDIR)
            raise NotFound(f"{path}: no such folder")
        names = self.ns.names_in(path)
        if path == "/":
            return [*VIRTUAL_ROOT_NAMES, *(n for n in names if n not in VIRTUAL_ROOT_NAMES)]
        return names

    def entry_stat(self, path: str) -> StatDict | None:
        """The stat of a folder entry for a readdir that returns attributes (READDIRPLUS), or
        None where the kernel should look it up itself (`.runs/`, `.dominofs/`: rendered on
        demand, maybe from the server; or gone in between)."""
        st = self.ns.stats.get(path)
        if st is not None:
            return st
        if path.startswith((RUNS + "/", META + "/")):
            return None
        try:
            return self._getattr_slow(path)
        except DominoError:
            return None

    def readlink(self, path: str) -> str:
        """The target of the symlink `path`.

        Raises:
            NotFound, DominoError(EINVAL: not a symlink; EIO: a link file that holds none).
        """
        kind, obj = self.ns.lookup(path)
        if kind == NODE and _stat.S_ISLNK(obj.mode):
            return bytes(obj.target or b"").decode("utf-8", "surrogateescape")
        if kind == LINK:
            reader = self._cache.open(obj.key, obj.size)
            try:
                target = decode_target(reader.read(obj.size, 0))
            finally:
                reader.close()
            if target is None:
                raise DominoError(f"{path}: its link file holds no target", errno=_errno.EIO)
            return target
        if kind == "none":
            raise NotFound(f"{path}: no such file")
        raise DominoError(f"{path}: not a symbolic link", errno=_errno.EINVAL)

    def statfs(self) -> dict[str, int]:
        limit = max(self._cache.size_limit, 1)
        used = min(self._cache.volume(), limit)
        bsize = 4096
        files = len(self.ns.tree) + len(self.ns.inodes)
        return {
            "f_bsize": bsize,
            "f_frsize": bsize,
            "f_blocks": limit // bsize,
            "f_bfree": (limit - used) // bsize,
            "f_bavail": (limit - used) // bsize,
            "f_files": files + 1_000_000,
            "f_ffree": 1_000_000,
            "f_favail": 1_000_000,
            "f_namemax": 255,
        }

    def tick(self) -> None:
        """Write what the layer batched without a close or an fsync asking (the outbox's own
        bookkeeping after an upload). Called about once a second."""
        if self.layer is not None and self.layer.dirty:
            with self._lock:
                try:
                    self._commit()
                except OSError as exc:
                    log.warning("%s", exc)

    def fsyncdir(self) -> None:
        """A folder's names (renames, creations) on disk: the layer's transactions so far."""
        if self.layer is not None:
            with self._lock:
                self._commit(durable=True)

    def _on_blob_failed(self, key: str) -> None:
        """A download of `key` failed after serving bytes: the kernel may hold unverified pages
        of every path showing that key; forget them and have the kernel drop them."""
        with self._lock:
            paths = [p for p, k in self._page_key.items() if k == key]
            for p in paths:
                del self._page_key[p]
        self._invalidate(paths)

    # -- status --------------------------------------------------------------------------

    def status(self, *, fresh: bool = True) -> dict[str, Any]:
        """What `.dominofs/status.json` shows (CONTRACT §4); not `fresh`: the local-only totals
        may be a few seconds old (the status file, written every second)."""
        return self._status.render(
            pinned=self.pinned,
            read_only=self.read_only,
            reachable=self._poller.reachable,
            last_refresh=self._poller.last_refresh,
            last_error=self._poller.last_error,
            open_handles=len(self._handles),
            outbox=self._outbox,
            fresh=fresh,
        )

    def _status_bytes(self) -> bytes:
        return status_bytes(self.status())
