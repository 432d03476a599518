"""The refresher: polling the head commit, and what a new listing means for the local layer.

Owns: the poll thread (its interval, the quick retries while the server is away, one listing
per burst of this mount's own uploads rather than one per upload), whether the server is
reachable and its last error, and `settle`: for a new tree, which layer inodes now match the
server (our own uploads: the kernel keeps their pages), which changed on the server (theirs:
new bytes, with the owner and mode kept locally), which names the server removed, and which
whiteouts are done with. Must not touch handles or the kernel's caches (the VFS does, under its
lock) and never raises out of the thread.
"""

from __future__ import annotations

import contextlib
import logging
import stat as _stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import DominoError, Unreachable
from ..layer import Inode, Layer
from ..links import link_file, link_of
from ..models import Remote
from ..tree import Diff, Tree
from .inodes import Namespace

log = logging.getLogger(__name__)

_SETTLE_QUIET = 0.2  # a burst of our own uploads is over after this long without one
_SETTLE_GAP = 1.0  # at least this long between listings asked for because of our uploads
_SETTLE_MAX = 3.0  # however long the burst, a listing at least this often
# ...and, for a project whose listing is slow to fetch, diff and save, both stretched so that
# these listings take at most this share of the time: with 100,000 files one took about 1 s
# and a burst of our own uploads had the poller busy half the time.
_SETTLE_SHARE = 0.1


class Poller:
    """Looks at the head commit every `interval` seconds (and soon after our own uploads) and
    hands a new tree to `apply(tree, started)`."""

    def __init__(
        self,
        remote: Remote,
        current: Callable[[], Tree],
        apply: Callable[[Tree, float], Diff],
        *,
        interval: float,
        reachable: bool,
    ) -> None:
        self._remote = remote
        self._current = current
        self._apply = apply
        self.interval = interval
        self.reachable = reachable
        self.last_error: str | None = None
        self.last_refresh: float | None = time.time() if reachable else None
        self.cost = 0.0  # seconds the last new listing took (fetch, diff, save)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def wake(self) -> None:
        """Our own upload landed: look at the head commit soon."""
        self._wake.set()

    def _loop(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            interval = self.interval if self.interval > 0 else 3600.0
            # While the server is away, retry sooner so the mount recovers quickly.
            woken = self._wake.wait(interval if self.reachable else min(2.0, interval))
            self._wake.clear()
            if woken:
                # Our own uploads only settle the layer, which already shows their bytes:
                # one listing for a burst of them, not one per upload.
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
        stretched = self.cost / _SETTLE_SHARE
        if self.interval > 0:
            # One slow listing (a hiccup) must not hide others' changes past the poll interval.
            stretched = min(stretched, self.interval)
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
        """Ask the server for the head commit; on a new one, apply its tree (and return what
        changed). Never raises."""
        started = time.monotonic()
        try:
            commits = self._remote.commits()
            head = commits[0] if commits else None
            new = None
            if head is not None and head != self._current().commit_id:
                new = Tree(head, self._remote.list_files(head))
        except DominoError as exc:
            self.note_error(exc)
            return None
        if not self.reachable:
            log.warning("%s is reachable again", self._remote.host)
        self.reachable = True
        self.last_refresh = time.time()
        if new is None:
            return None
        diff = self._apply(new, started)
        self.cost = time.monotonic() - started
        return diff

    def note_error(self, exc: DominoError) -> None:
        if self.reachable or self.last_error != str(exc):
            log.warning("%s", exc)
        self.last_error = str(exc)
        if isinstance(exc, Unreachable):
            self.reachable = False


def settle(
    ns: Namespace,
    layer: Layer | None,
    new: Tree,
    diff: Diff,
    started: float | None,
    *,
    kept: set[str],
    in_use: Callable[[Inode], bool],
) -> set[str]:
    """Apply what a new tree means for the layer (see the module docstring); the VFS lock is
    held and `ns.tree` is already `new`. Returns the paths that are ours (unchanged for the
    kernel). `in_use(node)`: an open handle still reads the inode."""
    ours: set[str] = set()
    paths: dict[str, str] = {}  # mount path -> project path: what the diff touched, and the
    # names of inodes whose upload landed since (the server may have changed them since too)
    for rel in diff.added | diff.changed | diff.removed:
        p = "/" + rel
        if ns.links:
            name = link_of(rel)
            if name is not None and ("/" + name) in ns.names:
                p = "/" + name
        paths[p] = rel
    for node in list(ns.unsettled.values()):
        for p in node.names:
            paths.setdefault(p, link_file(p)[1:] if _stat.S_ISLNK(node.mode) else p[1:])
    ns.unsettled = {}
    for p, rel in paths.items():
        ino = ns.names.get(p)
        if ino is None:
            continue
        node = ns.inodes[ino]
        if ns.is_local_only(p, node.mode) or _stat.S_ISDIR(node.mode):
            ours.add(p)  # a remote change never touches what is local only
            continue
        f = new.files.get(rel)
        if p in node.pending or node.dirty or node.writers:
            ours.add(p)  # local bytes win until they are uploaded
            continue
        if f is not None and node.bases.get(p) == f.key:
            ours.add(p)  # our own upload (or the version we already show)
            node.uploaded_at = None
            continue
        if node.uploaded_at is not None and (started is None or node.uploaded_at >= started):
            ours.add(p)  # a listing asked for before our upload landed
            ns.unsettled[node.ino] = node
            continue
        _theirs(ns, layer, node, p, f, in_use)
    for p, done in list(ns.whiteouts.items()):
        if p in kept:
            continue
        if not ns.remote_has(p) or (done is not None and started is not None and done < started):
            # Gone on the server, or a listing asked for after our deletion still has it:
            # someone made it again.
            ns.unhide(p)
    return ours


def _theirs(
    ns: Namespace,
    layer: Layer | None,
    node: Inode,
    path: str,
    f: object,
    in_use: Callable[[Inode], bool],
) -> None:
    """The server changed or removed `path` (a name of `node`): its version shows now, with the
    metadata the layer keeps where the inode has no other name."""
    from ..models import RemoteFile

    alone = len(node.names) == 1 and _stat.S_ISREG(node.mode) and node.work is None
    if isinstance(f, RemoteFile) and alone:
        node.key, node.size = f.key, f.size
        node.mtime = node.ctime = f.mtime_ms * 1_000_000
        node.bases[path] = f.key
        node.uploaded_at = None
        ns.save(node)
        return
    # Removed on the server, or a hard link / symlink / local bytes it replaces: this name
    # leaves the layer and shows the tree's version (if any).
    ns.unname(path)
    if not node.names and not in_use(node):
        if node.work is not None and layer is not None:
            with contextlib.suppress(FileNotFoundError):
                Path(layer.path_of(node.work)).unlink()
        ns.drop(node)
