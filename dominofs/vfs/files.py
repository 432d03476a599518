"""Opening, reading, writing, truncating, closing and fsyncing files of a mount.

Owns: which handle an open gets (local bytes of a layer inode, one version of a project file
through the blob cache, a rendering of `.runs/` or status), when the kernel may keep a path's
pages (only bytes of one verified key), the write path (bytes into the inode's file in the
local layer; the last close queues every uploaded name of the inode), O_TRUNC done by the open
itself (libfuse 3.14 negotiates atomic O_TRUNC), and fsync's promise (the bytes, the inode and
the queue entry on disk; not the server, so saves work offline).
Must not import the FUSE binding, requests or api.py; raises only errors.* (and never lets
another exception out of `read`).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import os
import stat as _stat
import time
from dataclasses import dataclass

from ..errors import DominoError, NotFound, ReadOnly
from ..layer import Inode
from ..runsdir import START
from .base import RUNS, STATUS, Context, VFSState
from .handles import BlobHandle, BytesHandle, FileHandle, Opened, StartHandle, saved_state
from .inodes import DIR, FILE, NODE, NONE
from .uploads import copy_blob

log = logging.getLogger(__name__)

_MAX_START_BYTES = 1 << 20


@dataclass
class _Staged:
    """Bytes of blob `key` copied into a new file of the layer before the lock is taken."""

    work: str
    key: str | None


class FileOps(VFSState):
    """The file operations of the VFS (see the module docstring)."""

    # -- opening ---------------------------------------------------------------------------

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
            return Opened(
                self._add(BytesHandle(self._status_bytes(), time.time_ns())), direct_io=True
            )
        if writing:
            self._check_writable(path)
            return self._open_write(path, flags)
        kind, obj = self.ns.lookup(path)
        if kind == NODE:
            node: Inode = obj
            if _stat.S_ISDIR(node.mode):
                raise DominoError(f"{path}: is a folder", errno=_errno.EISDIR)
            if node.work is not None:
                with self._lock:
                    if node.work is not None:
                        fd = os.open(self._work_path(node), os.O_RDONLY)
                        opened = Opened(self._add(FileHandle(node, fd, writable=False)))
                        self.prefetcher.opened(path, None)
                        return opened
            opened = self._open_blob(path, node.key or "", node.size, node.mtime, node)
            self.prefetcher.opened(path, node.key)
            return opened
        if kind == FILE:
            opened = self._open_blob(path, obj.key, obj.size, obj.mtime_ms * 1_000_000, None)
            self.prefetcher.opened(path, obj.key)
            return opened
        if kind == DIR or path in (RUNS, "/.dominofs"):
            raise DominoError(f"{path}: is a folder", errno=_errno.EISDIR)
        if kind != NONE:
            raise DominoError(f"{path}: a symbolic link", errno=_errno.ELOOP)
        raise NotFound(f"{path}: no such file")

    def _work_path(self, node: Inode) -> str:
        assert self.layer is not None
        assert node.work is not None
        return str(self.layer.path_of(node.work))

    def _open_blob(
        self, path: str, key: str, size: int, mtime_ns: int, node: Inode | None
    ) -> Opened:
        reader = self._cache.open(key, size)
        handle = BlobHandle(path, reader, mtime_ns, node)
        with self._lock:
            keys = self._open_keys.setdefault(path, {})
            others = any(k != key for k in keys)
            keys[key] = keys.get(key, 0) + 1
            # Pages may be kept when they can only hold this key's bytes and those bytes are
            # verified: pages read from a download still in flight may hold bytes whose hash
            # has not been checked yet (a failure drops them).
            keep = not others and reader.complete and self._page_key.get(path) == key
            if others:
                self._page_key.pop(path, None)  # two versions open at once: no caching
            else:
                self._page_key[path] = key
            fh = self._add(handle)
        return Opened(fh, keep_cache=keep, direct_io=others)

    def _open_runs(self, name: str, writing: bool) -> Opened:
        if name == START:
            return Opened(self._add(StartHandle()), direct_io=True)
        if writing:
            raise ReadOnly(f".runs/{name} is read-only")
        if "/" in name or not self._runs.exists(name):
            raise NotFound(f".runs/{name}: no such file")
        r = self._runs.rendering(name, max_age=2.0)
        return Opened(self._add(BytesHandle(r.data, int(r.mtime * 1e9))), direct_io=True)

    def _stage(self, key: str | None, size: int, *, empty: bool) -> _Staged:
        """A new file of the layer holding blob `key` (empty: none of it). No lock held."""
        assert self.layer is not None
        work, fd = self.layer.new_work()
        os.close(fd)
        try:
            if not empty and key is not None and size:
                copy_blob(self._cache, key, size, self.layer.path_of(work))
        except BaseException:
            self._discard(work)
            raise
        return _Staged(work, key)

    def _discard(self, work: str | None) -> None:
        if work is not None and self.layer is not None:
            with contextlib.suppress(FileNotFoundError):
                self.layer.path_of(work).unlink()

    def _open_write(self, path: str, flags: int) -> Opened:
        assert self.uploads is not None
        trunc = bool(flags & os.O_TRUNC)
        kind, obj = self.ns.lookup(path)
        staged: _Staged | None = None
        if kind == FILE or (kind == NODE and obj.work is None and _stat.S_ISREG(obj.mode)):
            staged = self._stage(obj.key, obj.size, empty=trunc)
        try:
            with self._lock:
                kind, obj = self.ns.lookup(path)
                if kind == NONE:
                    raise NotFound(f"{path}: no such file")
                if kind == DIR or (kind == NODE and _stat.S_ISDIR(obj.mode)):
                    raise DominoError(f"{path}: is a folder", errno=_errno.EISDIR)
                if kind == FILE:
                    if staged is None or staged.key != obj.key:
                        raise DominoError(
                            f"{path}: changed while opening; try again", errno=_errno.EAGAIN
                        )
                    node = self.ns.copy_up(path)
                    node.work, node.key, staged = staged.work, None, None
                elif kind == NODE and _stat.S_ISREG(obj.mode):
                    node = obj
                    if node.work is None and staged is not None and staged.key == node.key:
                        node.work, node.key, staged = staged.work, None, None
                        node.uploaded_at = None
                    self.uploads.make_writable(node, truncate=trunc)
                else:
                    raise DominoError(f"{path}: not a regular file", errno=_errno.EINVAL)
                if trunc:
                    os.truncate(self._work_path(node), 0)
                    node.size = 0
                    node.mtime = node.ctime = time.time_ns()
                    node.dirty = True
                self.ns.save(node)
                return self._add_writer(node, flags)  # written at the close, as for create
        finally:
            if staged is not None:
                self._discard(staged.work)

    def _add_writer(self, node: Inode, flags: int, fd: int = -1) -> Opened:
        """A read-write handle on `node`'s bytes (or on `fd`, open on them). Caller holds the
        lock."""
        if fd < 0:
            fd = os.open(self._work_path(node), os.O_RDWR)
        node.writers += 1
        self.ns.writing[node.ino] = node
        for p in node.names:
            self._page_key.pop(p, None)
        # A write-only handle cannot be mmap'ed (mmap needs read access), so it can skip the
        # kernel's page cache: the bytes are kept once (in the layer), not twice, and `dd`
        # into the mount ran 1.9x faster. Readers open at the time are invalidated when it is
        # released (release).
        direct = (flags & os.O_ACCMODE) == os.O_WRONLY
        handle = FileHandle(
            node, fd, writable=True, append=bool(flags & os.O_APPEND), direct=direct
        )
        return Opened(self._add(handle), direct_io=direct)

    def create(self, path: str, mode: int, flags: int, *, ctx: Context | None = None) -> Opened:
        """Create (or, without O_EXCL, open) the file `path`, owned by the caller.

        Raises:
            ReadOnly, NotFound (no parent), DominoError(EEXIST, EISDIR, ENOTDIR, ENAMETOOLONG).
        """
        if path == RUNS + "/" + START:
            return self._open_runs(START, True)
        self._check_writable(path)
        self._check_name(path)
        assert self.layer is not None
        # The new file's bytes file is made before the lock is taken (a new inode on disk can
        # take a while); a look without the lock only decides whether that is worth it.
        work: str | None = None
        fd = -1
        installed = False
        if self.ns.lookup(path)[0] == NONE:
            work, fd = self.layer.new_work()
        try:
            with self._lock:
                parent = self._parent(path)
                kind, obj = self.ns.lookup(path)
                if kind != NONE:
                    if flags & os.O_EXCL:
                        raise DominoError(f"{path}: exists", errno=_errno.EEXIST)
                    if kind == DIR or (kind == NODE and _stat.S_ISDIR(obj.mode)):
                        raise DominoError(f"{path}: is a folder", errno=_errno.EISDIR)
                else:
                    if work is None:
                        work, fd = self.layer.new_work()
                    now = time.time_ns()
                    uid, gid, m = self._owner(parent, ctx, _stat.S_IFREG | (mode & 0o7777))
                    node = Inode(
                        self.ns.new_ino(), m, uid, gid, atime=now, mtime=now, ctime=now, work=work
                    )
                    node.dirty = True
                    node.bases[path] = self._remote_key(path)
                    self._unhide(path)
                    self.ns.name(node, path)
                    installed = True
                    self.ns.touch_dir(parent, now)
                    opened = self._add_writer(node, flags, fd)
                    fd = -1  # the handle owns it
                    # Written at the close (a close survives a crash; an open file need not),
                    # or with any other change before it: one transaction per file copied in.
                    return opened
        finally:
            if fd >= 0:
                os.close(fd)
            if not installed:
                self._discard(work)
        return self._open_write(path, flags)

    # -- reading and writing -------------------------------------------------------------------

    def read(self, fh: int, size: int, offset: int) -> bytes:
        """Bytes of the open handle `fh` at `offset`.

        Raises:
            DominoError: EBADF for an unknown handle; the download's failure (EIO, ...).
        """
        data: bytes = self._handle(fh).read(size, offset)
        return data

    def read_into(self, fh: int, buf: memoryview, offset: int) -> int:
        """`read` into `buf` (as many bytes as it is long); returns how many were read."""
        n: int = self._handle(fh).read_into(buf, offset)
        return n

    def write(self, fh: int, data: bytes | memoryview, offset: int) -> int:
        """Write to an open handle (a file open for writing, or `.runs/start`).

        Raises:
            DominoError(EBADF, EFBIG).
        """
        h = self._handle(fh)
        if isinstance(h, FileHandle) and h.writable:
            node = h.node
            if h.append:
                offset = os.fstat(h.fd).st_size
            n = os.pwrite(h.fd, data, offset)
            if node.mode & (_stat.S_ISUID | _stat.S_ISGID):
                self._kill_privs(node)
            node.mtime = node.ctime = time.time_ns()
            node.dirty = True
            if offset + n > node.size:
                node.size = offset + n
            return n
        if not isinstance(h, StartHandle):
            raise DominoError("not open for writing", errno=_errno.EBADF)
        end = offset + len(data)
        if end > _MAX_START_BYTES:
            raise DominoError(".runs/start: request too large", errno=_errno.EFBIG)
        if len(h.buf) < offset:
            h.buf.extend(b"\0" * (offset - len(h.buf)))
        h.buf[offset:end] = data
        return len(data)

    def _kill_privs(self, node: Inode) -> None:
        """A write by a process without CAP_FSETID clears set-uid, and set-gid on a
        group-executable file, as Linux does (the kernel leaves it to us for direct writes)."""
        caller = self.caller
        if caller is None or caller()[0] == 0:
            return
        kill = _stat.S_ISUID
        if node.mode & _stat.S_IXGRP:
            kill |= _stat.S_ISGID
        if node.mode & kill:
            with self._lock:
                node.mode &= ~kill
                self.ns.save(node)
                self._commit()

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        """Truncate a file (by an open handle, or by path: an open, a truncate and a close).

        Raises:
            ReadOnly, NotFound, DominoError(EISDIR).
        """
        h = self._handles.get(fh) if fh is not None else None
        if isinstance(h, StartHandle):
            del h.buf[length:]
            return
        if path == RUNS + "/" + START:
            return  # open(O_TRUNC) of start: each handle starts empty anyway
        if isinstance(h, FileHandle) and h.writable:
            os.ftruncate(h.fd, length)
            node = h.node
            node.size = length
            node.dirty = True
            node.mtime = node.ctime = time.time_ns()
            return
        self._check_writable(path)
        if self.ns.lookup(path)[0] == NONE:
            raise NotFound(f"{path}: no such file")
        opened = self._open_write(path, os.O_WRONLY | (os.O_TRUNC if length == 0 else 0))
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
        if isinstance(h, StartHandle) and h.buf:
            data = bytes(h.buf)
            h.buf.clear()
            run_id = self._runs.start(data)
            log.info("started run %s", run_id)
        elif isinstance(h, FileHandle) and h.writable:
            self._save_written(h)

    def _save_written(self, h: FileHandle) -> None:
        """close(2) returns once this is done (RELEASE comes after it, asynchronously): what
        was written, and that its names are to be uploaded, are in the layer now, so a crash
        once close returned loses nothing (the restart queues the names)."""
        with self._lock:
            node = h.node
            if not node.names or not (node.dirty or node.staged):
                return
            if self.uploads is not None:
                self.uploads.mark_pending(node)
            state = saved_state(node)
            if state == h.saved:
                return
            self.ns.save(node)
            try:
                self._commit()
            except OSError as exc:
                log.warning("%s", exc)
            h.saved = state

    def release(self, fh: int) -> None:
        """Forget handle `fh`; the last writer's close queues the upload (never raises for a
        known handle)."""
        released: list[str] = []
        with self._lock:
            h = self._handles.pop(fh, None)
            if isinstance(h, FileHandle):
                released = self._release_file(h)
            elif isinstance(h, BlobHandle):
                released = self._release_blob(h)
        if h is not None:
            h.close()
        self._invalidate(released)

    def _release_file(self, h: FileHandle) -> list[str]:
        """Caller holds the lock; returns the paths whose kernel caches must go."""
        node = h.node
        released: list[str] = []
        if h.writable:
            node.writers -= 1
            soon = False
            if node.writers == 0 and node.names:
                # Queued but not sent (maybe held by an fsync while open): the timer restarts.
                if (node.dirty or node.staged) and self.uploads is not None:
                    try:
                        soon = self.uploads.schedule_soon(node)
                        if not soon:
                            self.uploads.schedule(node)
                    except Exception:
                        log.exception("%s: cannot queue the upload", node.names)
                if not soon or saved_state(node) != h.saved:
                    self.ns.save(node)  # else the close's flush wrote all of it
                if len(node.names) > 1:
                    released += node.names  # each name is its own node for the kernel
            if node.writers == 0 and not soon:
                self.ns.writing.pop(node.ino, None)
            if h.direct and any(getattr(o, "node", None) is node for o in self._handles.values()):
                # Pages a reader holds may predate these writes. Linux 6.18 drops them itself
                # on a direct write; older kernels may not.
                released += node.names
        if not node.names and not self._in_use(node):
            self._discard(node.work)
            node.work = None
            self.ns.drop(node)
        try:
            self._commit()
        except OSError as exc:
            log.warning("%s", exc)
        return released

    def _release_blob(self, h: BlobHandle) -> list[str]:
        """Caller holds the lock; returns the paths whose kernel caches must go."""
        keys = self._open_keys.get(h.path, {})
        n = keys.get(h.key, 0) - 1
        if n > 0:
            keys[h.key] = n
        else:
            keys.pop(h.key, None)
        if not keys:
            self._open_keys.pop(h.path, None)
        current = self._current_key(h.path)
        # Its pages may hold an old version: the next open must drop them.
        stale = current is None or current != h.key
        if stale and self._page_key.get(h.path) == h.key:
            self._page_key.pop(h.path, None)
        if h.path in self._held and (current is None or all(k == current for k in keys)):
            self._held.discard(h.path)
            self.ns.changed(h.path)
            return [h.path]
        if h.node is not None and not h.node.names and not self._in_use(h.node):
            self.ns.drop(h.node)
        return []

    def _current_key(self, path: str) -> str | None:
        kind, obj = self.ns.lookup(path)
        if kind == FILE:
            return str(obj.key)
        if kind == NODE and obj.work is None:
            return obj.key  # type: ignore[no-any-return]
        return None

    def fsync(self, fh: int) -> None:
        """Make the handle's bytes durable on local disk, with the inode and its upload entry
        (not the server)."""
        h = self._handles.get(fh)
        if not isinstance(h, FileHandle) or not h.writable:
            return
        os.fsync(h.fd)
        with self._lock:
            node = h.node
            up = self.uploads
            if node.names and up is not None and up.uploaded(node):
                # Held while a writer is open (this one is); the last close restarts the timer.
                up.schedule(node, held=node.writers > 0, durable=True)
            self.ns.save(node)
            self._commit(durable=True)
