"""The hand-over of a mount's local bytes to the outbox, and back when the server has them.

Owns: queueing every uploaded name of an inode (each gets a hard link of the inode's bytes in
the outbox's staging folder: one inode's bytes, however many names), the queuer thread that
queues writers' last closes in batches (a burst of closes is one outbox transaction), copy-on-
write when a writer opens bytes the outbox is sending right now, withdrawing a name's upload
when it is renamed or deleted first, the outbox's hooks (an upload landed: the blob cache takes
the bytes and the inode keeps only their key; a conflict; a deletion done, refused or
overtaken), and resuming after a crash: every name the layer marks pending and the outbox does
not hold is queued again, and what an older version left only in the outbox becomes inodes.
Must not decide POSIX semantics (the VFS does) nor call the server itself.

Locking: methods whose name does not start with `on_` are called with the VFS lock held,
except start and stop (the queuer thread takes it itself); the hooks run on uploader threads
and take it themselves (the outbox never calls a hook while holding its own lock, so calling
the outbox with the VFS lock held cannot deadlock).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat as _stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..cache import BlobCache
from ..layer import Inode, Layer
from ..links import link_file, link_of
from ..models import UploadResult
from ..outbox import DeleteOutcome, Entry, Outbox, StagedUpload
from .inodes import NODE, Namespace, parent_of

log = logging.getLogger(__name__)

_HELD = 10 * 365 * 86400.0  # "not before" of an upload held while a writer is open
_BATCH_WINDOW = 0.05  # seconds the queuer lets closes gather (at most a quarter of the delay)


class Uploads:
    """One mount's hand-over to its outbox (see the module docstring)."""

    def __init__(
        self,
        ns: Namespace,
        layer: Layer,
        outbox: Outbox,
        cache: BlobCache,
        lock: threading.Lock,
        *,
        upload_delay: float,
        wake: Callable[[], None],
        invalidate: Callable[[list[str]], None],
    ) -> None:
        self.ns = ns
        self.layer = layer
        self.outbox = outbox
        self.cache = cache
        self.lock = lock
        self.upload_delay = upload_delay
        self._wake = wake
        self._invalidate = invalidate
        self.kept: set[str] = set()  # deletions the server could not do (no DELETE)
        self._due: dict[int, tuple[Inode, float]] = {}  # ino -> (node, not before): to queue
        self._due_set = threading.Event()
        self._queuer: threading.Thread | None = None
        outbox.on_uploaded = self.on_uploaded
        outbox.on_conflict = self.on_conflict
        outbox.on_deleted = self.on_deleted

    # -- where a name goes on the server -------------------------------------------------------

    def remote_path(self, path: str, node: Inode) -> str | None:
        """The project path a name of `node` is uploaded as (None: it stays local)."""
        if self.ns.is_local_only(path, node.mode):
            return None
        if _stat.S_ISLNK(node.mode):
            return link_file(path)[1:]
        return path[1:] if _stat.S_ISREG(node.mode) else None

    def uploaded(self, node: Inode) -> bool:
        return any(self.remote_path(p, node) is not None for p in node.names)

    # -- queueing (VFS lock held) ---------------------------------------------------------------

    def schedule(
        self,
        node: Inode,
        *,
        held: bool = False,
        durable: bool = False,
        names: list[str] | None = None,
    ) -> None:
        """Queue every uploaded name of `node` (or just `names`) for after the delay (held:
        until it is queued again)."""
        when = time.time() + (_HELD if held else self.upload_delay)
        if not held:
            self.outbox.saving(self.upload_delay)
        if durable:
            for p in node.names if names is None else names:
                rel = self.remote_path(p, node)
                if rel is not None:
                    staged = self._stage(node)
                    self.outbox.enqueue_upload(
                        rel, staged, base_key=node.bases.get(p), not_before=when, durable=True
                    )
                    node.staged[p] = staged
                    node.pending.add(p)
            node.dirty = False
            self.ns.save(node)
            return
        self._schedule_all([(node, when, names)])
        self.ns.save(node)

    def schedule_soon(self, node: Inode) -> bool:
        """`schedule(node)` for a writer's last close, done by the queuer thread with the other
        closes meanwhile: a burst of them (cp -r) makes one outbox transaction, not one each,
        and the closing thread hands the lock back sooner. The names are marked pending at
        once, which the caller's commit keeps: after a crash the restart queues them. The
        node stays in `ns.writing` (written, not queued) until then. False: no queuer runs,
        the caller calls schedule."""
        if self._queuer is None:
            return False
        self.outbox.saving(self.upload_delay)
        self.mark_pending(node)
        self._due[node.ino] = (node, time.time() + self.upload_delay)
        self._due_set.set()
        return True

    def mark_pending(self, node: Inode) -> None:
        """Mark every uploaded name of `node` as to be uploaded (the layer keeps the mark)."""
        node.pending.update(p for p in node.names if self.remote_path(p, node) is not None)

    def start(self) -> None:
        """Start the queuer thread (see schedule_soon)."""
        self._queuer = threading.Thread(target=self._queue_loop, name="queuer", daemon=True)
        self._queuer.start()

    def stop(self) -> None:
        """Queue what schedule_soon left, and end the queuer thread."""
        queuer, self._queuer = self._queuer, None
        if queuer is not None:
            self._due_set.set()
            queuer.join(30)
        with self.lock:
            self.queue_due()

    def queue_due(self) -> None:
        """Queue the closes schedule_soon left. Lock held."""
        due, self._due = self._due, {}
        batch: list[tuple[Inode, float, list[str] | None]] = []
        for node, when in due.values():
            if node.writers:
                continue  # written again: its last close comes back here
            self.ns.writing.pop(node.ino, None)
            if node.names and (node.dirty or node.staged):
                batch.append((node, when, None))
        try:
            self._schedule_all(batch)
        except Exception:
            log.exception("cannot queue %d uploads (the next mount does)", len(batch))
        self._commit()

    def _queue_loop(self) -> None:
        # Closes a little apart go in one batch: none is sent before its delay anyway.
        window = min(_BATCH_WINDOW, self.upload_delay / 4)
        while self._queuer is not None:
            self._due_set.wait()
            if window > 0:
                time.sleep(window)
            self._due_set.clear()
            with self.lock:
                self.queue_due()

    def _schedule_all(self, batch: list[tuple[Inode, float, list[str] | None]]) -> None:
        uploads: list[StagedUpload] = []
        queued: list[tuple[Inode, str, Path]] = []
        try:
            for node, when, names in batch:
                for p in node.names if names is None else names:
                    rel = self.remote_path(p, node)
                    if rel is None:
                        continue
                    staged = self._stage(node)
                    uploads.append(StagedUpload(rel, staged, node.bases.get(p), when))
                    queued.append((node, p, staged))
            self.outbox.enqueue_staged(uploads)
        except BaseException:
            for _, _, staged in queued:
                with contextlib.suppress(FileNotFoundError):
                    staged.unlink()
            raise
        marked: dict[int, Inode] = {}
        for node, p, staged in queued:
            node.staged[p] = staged
            if p not in node.pending:
                node.pending.add(p)
                marked[node.ino] = node
        for node, _, _ in batch:
            node.dirty = False  # not kept in the layer: an unchanged node is not written again
        for node in marked.values():
            self.ns.save(node)

    def _stage(self, node: Inode) -> Path:
        """A file in the outbox's staging folder holding what an upload of `node` sends (mode
        0o600): a hard link of its bytes, or a symlink's target."""
        staged = Path(self.outbox.staging_path())
        if _stat.S_ISLNK(node.mode):
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, node.target or b"")
            finally:
                os.close(fd)
        else:
            assert node.work is not None
            os.link(self.layer.path_of(node.work), staged)  # the layer made it 0o600
        return staged

    def withdraw(self, node: Inode, path: str) -> bool:
        """Take back the queued upload of `path` (a name of `node` renamed or deleted before it
        was sent). Returns True when that name was being sent right now (the server gets it:
        the caller must then delete it there)."""
        staged = node.staged.pop(path, None)
        node.pending.discard(path)
        rel = self.remote_path(path, node)
        if staged is None or rel is None:
            return False
        if self.outbox.withdraw(rel):
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
            return False
        return True

    def make_writable(self, node: Inode, *, truncate: bool = False) -> None:
        """Give `node` bytes of its own in the layer that a writer may change.

        A key-only inode gets its blob copied in (local disk or the cache, which may download:
        callers stage remote files before taking the lock); bytes the outbox is sending right
        now are copied first (copy-on-write), and queued ones are held until the last close.
        """
        if node.work is None:
            work, fd = self.layer.new_work()
            os.close(fd)
            if not truncate and node.key is not None and node.size:
                copy_blob(self.cache, node.key, node.size, self.layer.path_of(work))
            elif truncate:
                node.size = 0
            node.work, node.key = work, None
            node.uploaded_at = None
            self.ns.save(node)
            return
        sending = False
        for p in list(node.staged):
            rel = self.remote_path(p, node)
            if rel is not None and not self.outbox.hold(rel):
                sending = True
        if sending:
            old = self.layer.path_of(node.work)
            work, fd = self.layer.new_work()
            os.close(fd)
            if not truncate:
                shutil.copyfile(old, self.layer.path_of(work))
            node.work = work
            # The outbox's link keeps the old bytes until it is done with them.
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
            self.ns.save(node)
        node.uploaded_at = None

    # -- hooks (uploader threads) ---------------------------------------------------------------

    def _mount_path(self, rel: str) -> str:
        if self.ns.links:
            name = link_of(rel)
            if name is not None and self.ns.lookup("/" + name)[0] == NODE:
                node = self.ns.inodes[self.ns.names["/" + name]]
                if _stat.S_ISLNK(node.mode):
                    return "/" + name
        return "/" + rel

    def on_uploaded(self, rel: str, result: UploadResult, staged: Path, entry: Entry) -> None:
        cached = self._adopt(result.key, staged, result.size)
        with self.lock:
            p = self._mount_path(rel)
            ino = self.ns.names.get(p)
            node = self.ns.inodes.get(ino) if ino is not None else None
            if node is not None:
                node.bases[p] = result.key
                if node.staged.get(p) == staged:
                    del node.staged[p]
                    node.pending.discard(p)
                    node.uploaded_at = time.monotonic()
                    self.ns.unsettled[node.ino] = node
                    alone = len(node.names) == 1 and _stat.S_ISREG(node.mode)
                    if alone and cached and not node.dirty and not node.writers and node.work:
                        # The cache holds these bytes now; the layer keeps only their key. The
                        # change is written with the next batch (a crash before it re-sends
                        # the same bytes, which the outbox recognises): one transaction less
                        # per upload.
                        self.layer.recycle_later(node.work, node.size)
                        node.work, node.key = None, result.key
                self.ns.save(node)
        self._wake()

    def _adopt(self, key: str, staged: Path, size: int) -> bool:
        """Hand the cache a link to uploaded bytes; True when it has the key now."""
        link = staged.with_name(staged.name + ".adopt")
        try:
            os.link(staged, link)
        except OSError:
            return self.cache.contains(key)
        if self.cache.adopt(key, link, size):
            return True
        link.unlink(missing_ok=True)
        return self.cache.contains(key)

    def on_conflict(
        self, rel: str, crel: str, result: UploadResult, staged: Path, entry: Entry
    ) -> None:
        p, cp = self._mount_path(rel), "/" + crel
        self._adopt(result.key, staged, result.size)
        with self.lock:
            ino = self.ns.names.get(p)
            node = self.ns.inodes.get(ino) if ino is not None else None
            mode = _stat.S_IFREG | self.ns.defaults.file_mode
            uid, gid = self.ns.defaults.uid, self.ns.defaults.gid
            if node is not None and node.staged.get(p) == staged:
                mode, uid, gid = node.mode, node.uid, node.gid
                if not node.dirty and not node.writers and _stat.S_ISREG(node.mode):
                    # Ours lives on as the conflict copy; the path shows the server's version.
                    node.staged.pop(p, None)
                    self.ns.unname(p)
                    if not node.names:
                        self._forget_bytes(node)
                        self.ns.drop(node)
            if self.ns.lookup(cp)[0] != NODE and _stat.S_ISREG(mode):
                now = time.time_ns()
                copy = Inode(
                    self.ns.new_ino(), mode, uid, gid, atime=now, mtime=now, ctime=now,
                    size=result.size, key=result.key,
                )  # fmt: skip
                copy.bases[cp] = result.key
                copy.uploaded_at = time.monotonic()
                self.ns.name(copy, cp)
            self._commit()
        self._wake()
        self._invalidate([p, cp])

    def on_deleted(self, rel: str, outcome: DeleteOutcome, entry: Entry) -> None:
        p = "/" + rel
        name = link_of(rel) if self.ns.links else None
        if name is not None and "/" + name in self.ns.whiteouts:
            p = "/" + name  # the symlink this link file carried
        with self.lock:
            if outcome == "kept_local":
                self.kept.add(p)
            elif outcome == "changed_remotely":
                self.ns.unhide(p)
            elif p in self.ns.whiteouts:
                self.ns.whiteouts[p] = time.monotonic()
            self.ns.changed(p, parent_of(p))
            self._commit()
        self._wake()

    def _forget_bytes(self, node: Inode) -> None:
        if node.work is not None:
            with contextlib.suppress(FileNotFoundError):
                self.layer.path_of(node.work).unlink()
            node.work = None

    def _commit(self) -> None:
        try:
            self.ns.commit()
        except OSError as exc:
            log.warning("%s", exc)

    # -- resuming (at mount, before anything is served) ---------------------------------------

    def restore(self) -> None:
        """Reconcile the layer and the queue a previous run left (see the module docstring)."""
        ns = self.ns
        entries = self.outbox.entries()
        for e in entries:
            p = self._mount_path(e.path)
            if e.op == "delete":
                if p not in ns.names:
                    ns.hide(p)
                continue
            if e.staged is None or not e.staged.exists():
                continue
            ino = ns.names.get(p)
            if ino is None:
                node = self._adopt_entry(p, e)
                if node is None:
                    continue
            else:
                node = ns.inodes[ino]
            node.staged[p] = e.staged
            node.pending.add(p)
            ns.save(node)
        for path in self.outbox.kept_local():
            p = "/" + path
            if p not in ns.names:
                ns.hide(p)
            self.kept.add(p)
        again = [n for n in ns.inodes.values() if any(p not in n.staged for p in n.pending)]
        for node in again:
            if node.work is None and _stat.S_ISREG(node.mode):
                log.error("%s: bytes to upload are missing from the local layer", node.names)
                node.pending.clear()
                continue
            self.schedule(node)
        self._commit()
        queued = sum(len(n.staged) for n in ns.inodes.values())
        if queued or ns.whiteouts:
            log.info("resuming %d queued uploads and %d deletions", queued, len(ns.whiteouts))

    def _adopt_entry(self, p: str, e: Entry) -> Inode | None:
        """An inode for an upload an older version queued (the queue was all it kept)."""
        assert e.staged is not None
        ns = self.ns
        parent = parent_of(p)
        if not ns.is_dir(parent):
            if ns.lookup(parent)[0] != "none":
                return None
            self._make_dirs(parent)
        work, fd = self.layer.new_work()
        os.close(fd)
        dest = self.layer.path_of(work)
        os.unlink(dest)
        os.link(e.staged, dest)
        st = os.stat(dest)
        d = ns.defaults
        node = Inode(
            ns.new_ino(), _stat.S_IFREG | d.file_mode, d.uid, d.gid,
            atime=st.st_mtime_ns, mtime=st.st_mtime_ns, ctime=st.st_mtime_ns,
            size=st.st_size, work=work,
        )  # fmt: skip
        node.bases[p] = e.base_key
        ns.unhide(p)
        ns.name(node, p)
        return node

    def _make_dirs(self, path: str) -> None:
        """Folders down to `path` in the layer (where the namespace has none)."""
        ns = self.ns
        missing: list[str] = []
        while path != "/" and ns.lookup(path)[0] == "none":
            missing.append(path)
            path = parent_of(path)
        d = ns.defaults
        now = time.time_ns()
        for p in reversed(missing):
            ns.unhide(p)
            node = Inode(
                ns.new_ino(), _stat.S_IFDIR | d.dir_mode, d.uid, d.gid,
                atime=now, mtime=now, ctime=now,
            )  # fmt: skip
            ns.name(node, p)


def copy_blob(cache: BlobCache, key: str, size: int, dest: Path) -> None:
    """Write blob `key` into `dest` through the cache (may download). No lock held."""
    reader = cache.open(key, size)
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
