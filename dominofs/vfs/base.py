"""The state every part of the mount's core shares, and the checks they all make.

Owns: the one lock, the handle table, and the small rules each operation starts with (may this
path be written, is its parent a folder, is a name too long, who owns a new node, what the
server holds at a path). The operations themselves live in `files.py` (open, read, write,
close, fsync) and `names.py` (make, link, remove, rename, and the metadata calls); `core.py`
builds the whole. Must not import the FUSE binding, requests or api.py; raises only errors.*.
"""

from __future__ import annotations

import errno as _errno
import itertools
import logging
import stat as _stat
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..cache import BlobCache
from ..errors import DominoError, NotFound, ReadOnly
from ..layer import Inode, Layer
from ..links import link_file
from ..models import Remote
from ..runsdir import RunsDir
from .inodes import DIR, NODE, NONE, Namespace, name_too_long, parent_of
from .prefetch import Prefetcher
from .uploads import Uploads

log = logging.getLogger(__name__)

RUNS = "/.runs"
META = "/.dominofs"
STATUS = "/.dominofs/status.json"
VIRTUAL_ROOT_NAMES = (".runs", ".dominofs")

# utimens: what fs.py passes for a time the caller left to the filesystem.
UTIME_NOW = -1
UTIME_OMIT = -2

Context = tuple[int, int]  # (uid, gid) of the process making a call


class VFSState:
    """What the operation mixins share (built by core.VFS)."""

    _lock: threading.Lock
    ns: Namespace
    layer: Layer | None
    uploads: Uploads | None
    prefetcher: Prefetcher
    _cache: BlobCache
    _remote: Remote
    _runs: RunsDir
    read_only: bool
    pinned: bool
    invalidate: Callable[[Iterable[str]], None] | None
    caller: Callable[[], Context] | None  # (uid, gid) of the process making the current call

    def _init_handles(self) -> None:
        self._handles: dict[int, Any] = {}
        self._fh = itertools.count(1)
        # Per path: the keys of its open blob handles, and the key whose pages the kernel may
        # hold; paths whose stat waits for old-version handles to close.
        self._open_keys: dict[str, dict[str, int]] = {}
        self._page_key: dict[str, str] = {}
        self._held: set[str] = set()

    # -- checks ----------------------------------------------------------------------------

    def _check_writable(self, path: str) -> None:
        if self.read_only or self.uploads is None:
            raise ReadOnly(f"{path}: this mount is read-only")
        if path in (META, RUNS) or path.startswith((META + "/", RUNS + "/")):
            raise ReadOnly(f"{path}: the mount manages this folder (read-only)")

    def _check_name(self, path: str) -> None:
        if name_too_long(path):
            raise DominoError(f"{path[:64]}...: name too long", errno=_errno.ENAMETOOLONG)

    def _parent(self, path: str) -> str:
        """The folder holding `path`, which must be one. Caller holds the lock.

        Raises:
            NotFound, DominoError(ENOTDIR).
        """
        parent = parent_of(path)
        kind, obj = self.ns.lookup(parent)
        if kind == NONE:
            raise NotFound(f"{parent}: no such folder")
        if kind != DIR and not (kind == NODE and _stat.S_ISDIR(obj.mode)):
            raise DominoError(f"{parent}: not a folder", errno=_errno.ENOTDIR)
        return parent

    def _owner(self, parent: str, ctx: Context | None, mode: int) -> tuple[int, int, int]:
        """(uid, gid, mode) of a new node in `parent`: the caller's, with the group (and, for a
        folder, the set-gid bit) of a set-gid parent, as Linux's filesystems do."""
        d = self.ns.defaults
        uid, gid = ctx if ctx is not None else (d.uid, d.gid)
        kind, obj = self.ns.lookup(parent)
        pmode, pgid = (obj.mode, obj.gid) if kind == NODE else (_stat.S_IFDIR | d.dir_mode, d.gid)
        if pmode & _stat.S_ISGID:
            gid = pgid
            if _stat.S_ISDIR(mode):
                mode |= _stat.S_ISGID
        return uid, gid, mode

    def _remote_key(self, path: str) -> str | None:
        """The key the server has (or will have, once our queue is sent) at `path`."""
        ino = self.ns.names.get(path)
        if ino is not None:
            node = self.ns.inodes[ino]
            if path in node.bases:
                return node.bases[path]
        f = self.ns.tree.files.get(path[1:])
        return f.key if f is not None else None

    def _unhide(self, path: str) -> None:
        """`path` is made again here: cancel its pending deletion. Caller holds the lock."""
        if not self.ns.unhide(path) or self.uploads is None:
            return
        outbox = self.uploads.outbox
        rels = [path[1:]]
        if self.ns.links:
            rels.append(link_file(path)[1:])
        for rel in rels:
            outbox.withdraw(rel)
            if path in self.uploads.kept:
                outbox.forget_kept_local(rel)
        self.uploads.kept.discard(path)

    def _status_bytes(self) -> bytes:
        raise NotImplementedError  # core.VFS renders it

    # -- handles ---------------------------------------------------------------------------

    def _add(self, handle: Any) -> int:
        """Register `handle`. Caller holds the lock (or accepts a racing reader)."""
        fh = next(self._fh)
        self._handles[fh] = handle
        return fh

    def _handle(self, fh: int) -> Any:
        try:
            return self._handles[fh]
        except KeyError:
            raise DominoError("bad file handle", errno=_errno.EBADF) from None

    def _in_use(self, node: Inode) -> bool:
        """True while an open handle reads or writes `node`. Caller holds the lock."""
        return node.writers > 0 or any(
            getattr(h, "node", None) is node for h in self._handles.values()
        )

    def _commit(self, *, durable: bool = False) -> None:
        """Write the layer's batch (one transaction per operation). Caller holds the lock."""
        self.ns.commit(durable=durable)

    def _invalidate(self, paths: Iterable[str]) -> None:
        """Have the kernel drop what it caches of `paths`. Never with the lock held."""
        paths = [p for p in paths if p]
        if paths and self.invalidate is not None:
            try:
                self.invalidate(paths)
            except Exception:
                log.exception("kernel cache invalidation failed")
