"""Making, linking, removing and renaming names of a mount, and the metadata calls.

Owns: mkdir, mknod (fifos, sockets, device nodes: local only), symlink (local only, or a
`NAME.dominolink` file with `--links`), link (two names, one inode; two plain files on the
server), unlink, rmdir, rename (of a file, or of a folder and all it holds; RENAME_NOREPLACE),
chmod, chown and utimens (UTIME_NOW / UTIME_OMIT), each with the times and link counts Linux's
filesystems give, and each a single transaction of the local layer. A server file renamed or
deleted here is deleted on the server through the outbox (kept local where the server has no
DELETE). Permission checks are the kernel's (`default_permissions`): nothing here second-guesses
them. Must not import the FUSE binding, requests or api.py; raises only errors.*.
"""

from __future__ import annotations

import errno as _errno
import os
import stat as _stat
import time
from typing import Any

from ..errors import DominoError, NotFound
from ..layer import Inode
from ..links import MAX_TARGET, link_file
from ..runsdir import START
from .base import RUNS, UTIME_NOW, UTIME_OMIT, Context
from .files import FileOps, _Staged
from .inodes import DIR, FILE, LINK, NODE, NONE, parent_of

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def _is_dir(kind: str, obj: Any) -> bool:
    return kind == DIR or (kind == NODE and _stat.S_ISDIR(obj.mode))


class NameOps(FileOps):
    """The namespace and metadata operations of the VFS (see the module docstring)."""

    upload_delay: float

    # -- making ----------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int, *, ctx: Context | None = None) -> None:
        """Make a folder (the server learns of it through its files).

        Raises:
            ReadOnly, NotFound (no parent), DominoError(EEXIST, ENOTDIR, ENAMETOOLONG).
        """
        self._make(path, _stat.S_IFDIR | (mode & 0o7777), ctx)

    def mknod(self, path: str, mode: int, dev: int, *, ctx: Context | None = None) -> None:
        """Make a fifo, socket or device node (local only), or an empty file.

        Raises:
            as mkdir; DominoError(EINVAL) for an unknown type.
        """
        fmt = _stat.S_IFMT(mode) or _stat.S_IFREG
        if fmt == _stat.S_IFREG:
            opened = self.create(path, mode & 0o7777, os.O_WRONLY | os.O_CREAT | os.O_EXCL, ctx=ctx)
            self.release(opened.fh)
            return
        if fmt not in (_stat.S_IFIFO, _stat.S_IFSOCK, _stat.S_IFCHR, _stat.S_IFBLK):
            raise DominoError(f"{path}: cannot make a node of type {fmt:o}", errno=_errno.EINVAL)
        rdev = dev if fmt in (_stat.S_IFCHR, _stat.S_IFBLK) else 0
        self._make(path, fmt | (mode & 0o7777), ctx, rdev=rdev)

    def symlink(self, path: str, target: str, *, ctx: Context | None = None) -> None:
        """Make the symlink `path` -> `target` (kept in the layer; with --links, also uploaded
        as `path.dominolink`).

        Raises:
            as mkdir.
        """
        raw = target.encode("utf-8", "surrogateescape")
        if len(raw) > MAX_TARGET:
            raise DominoError(f"{path}: link target too long", errno=_errno.ENAMETOOLONG)
        self._make(path, _stat.S_IFLNK | 0o777, ctx, target=raw)

    def _make(
        self,
        path: str,
        mode: int,
        ctx: Context | None,
        *,
        rdev: int = 0,
        target: bytes | None = None,
    ) -> None:
        self._check_writable(path)
        self._check_name(path)
        assert self.uploads is not None
        with self._lock:
            parent = self._parent(path)
            if self.ns.lookup(path)[0] != NONE:
                raise DominoError(f"{path}: exists", errno=_errno.EEXIST)
            now = time.time_ns()
            uid, gid, mode = self._owner(parent, ctx, mode)
            node = Inode(
                self.ns.new_ino(), mode, uid, gid, atime=now, mtime=now, ctime=now,
                rdev=rdev, target=target,
            )  # fmt: skip
            uploaded = _stat.S_ISDIR(mode) or self.uploads.remote_path(path, node) is not None
            if _stat.S_ISLNK(mode) and uploaded:
                lf = self.ns.tree.files.get(link_file(path)[1:])
                node.bases[path] = lf.key if lf is not None else None
            if uploaded:
                self._unhide(path)
            self.ns.name(node, path)
            self.ns.touch_dir(parent, now)
            if _stat.S_ISLNK(mode) and uploaded:
                self.uploads.schedule(node)
            self._commit()

    def link(self, path: str, existing: str) -> None:
        """Give the file `existing` a second name `path` (one inode; on the server, each name is
        a plain file of the same bytes).

        Raises:
            ReadOnly, NotFound, DominoError(EEXIST, EPERM for a folder, ENAMETOOLONG).
        """
        self._check_writable(path)
        self._check_writable(existing)
        self._check_name(path)
        assert self.uploads is not None
        kind, obj = self.ns.lookup(existing)
        staged: _Staged | None = None
        # Two names share one inode's bytes, which must be local: staged before the lock.
        if kind == FILE or (kind == NODE and _stat.S_ISREG(obj.mode) and obj.work is None):
            staged = self._stage(obj.key, obj.size, empty=False)
        try:
            with self._lock:
                parent = self._parent(path)
                kind, obj = self.ns.lookup(existing)
                if kind == NONE:
                    raise NotFound(f"{existing}: no such file")
                if _is_dir(kind, obj):
                    raise DominoError(f"{existing}: is a folder", errno=_errno.EPERM)
                if self.ns.lookup(path)[0] != NONE:
                    raise DominoError(f"{path}: exists", errno=_errno.EEXIST)
                node = self.ns.copy_up(existing)
                if _stat.S_ISREG(node.mode) and node.work is None:
                    if staged is not None and staged.key == node.key:
                        node.work, node.key, staged = staged.work, None, None
                    else:
                        self.uploads.make_writable(node)
                now = time.time_ns()
                node.ctime = now
                base = self._remote_key(path)
                self.ns.name(node, path)
                if self.uploads.remote_path(path, node) is not None:
                    self._unhide(path)
                    node.bases[path] = base
                    if not node.writers:
                        self.uploads.schedule(node, names=[path])
                self.ns.touch_dir(parent, now)
                self.ns.save(node)
                others = [p for p in node.names if p != path]
                self._commit()
        finally:
            if staged is not None:
                self._discard(staged.work)
        self._invalidate(others)

    # -- removing --------------------------------------------------------------------------

    def unlink(self, path: str) -> None:
        """Remove a name; a server file's deletion is queued (after the upload delay).

        Raises:
            NotFound, DominoError(EISDIR).
        """
        self._check_writable(path)
        with self._lock:
            kind, obj = self.ns.lookup(path)
            if kind == NONE:
                raise NotFound(f"{path}: no such file")
            if _is_dir(kind, obj):
                raise DominoError(f"{path}: is a folder", errno=_errno.EISDIR)
            now = time.time_ns()
            others = self._remove_name(path, kind, obj, now, delete=True)
            self.ns.touch_dir(parent_of(path), now)
            self._commit()
        self._invalidate(others)

    def rmdir(self, path: str) -> None:
        """Remove an empty folder.

        Raises:
            NotFound, DominoError(ENOTDIR, ENOTEMPTY, EBUSY for the root).
        """
        self._check_writable(path)
        if path == "/":
            raise DominoError("/: is the mount's root", errno=_errno.EBUSY)
        with self._lock:
            kind, obj = self.ns.lookup(path)
            if kind == NONE:
                raise NotFound(f"{path}: no such folder")
            if not _is_dir(kind, obj):
                raise DominoError(f"{path}: not a folder", errno=_errno.ENOTDIR)
            if self.ns.names_in(path):
                raise DominoError(f"{path}: folder not empty", errno=_errno.ENOTEMPTY)
            self._remove_dir(path, kind, obj)
            self.ns.touch_dir(parent_of(path), time.time_ns())
            self._commit()

    def _remove_dir(self, path: str, kind: str, obj: Any) -> None:
        """Drop the (empty) folder `path`. Caller holds the lock."""
        if kind == NODE:
            self.ns.unname(path)
            self.ns.drop(obj)
        if self.ns.remote_has(path):
            self.ns.hide(path)

    def _remove_name(self, path: str, kind: str, obj: Any, now: int, *, delete: bool) -> list[str]:
        """Drop the non-folder name `path`; with `delete`, a server file there is deleted too.
        Caller holds the lock. Returns the inode's other names (their kernel caches must go)."""
        assert self.uploads is not None
        if kind in (FILE, LINK):
            remote = path[1:] if kind == FILE else link_file(path)[1:]
            self._delete_remote(path, remote, obj.key, delete=delete)
            return []
        node: Inode = obj
        rel = self.uploads.remote_path(path, node)
        sent = self.uploads.withdraw(node, path) if path in node.staged else False
        base = node.bases.get(path)
        self.ns.unname(path)
        if rel is not None and (sent or base is not None or self.ns.tree.files.get(rel)):
            self._delete_remote(path, rel, base or self._tree_key(rel), delete=delete)
        elif self.ns.remote_has(path) and delete:
            self.ns.hide(path)  # a local-only node shadowed a server file: keep it hidden
        for p in (path, *node.names):
            self._page_key.pop(p, None)
        if node.names:
            node.ctime = now
            self.ns.save(node)
        elif not self._in_use(node):
            self._discard(node.work)
            node.work = None
            self.ns.drop(node)
        return list(node.names)

    def _tree_key(self, rel: str) -> str | None:
        f = self.ns.tree.files.get(rel)
        return f.key if f is not None else None

    def _delete_remote(self, path: str, rel: str, base: str | None, *, delete: bool) -> None:
        """Hide `path` and, with `delete`, queue the deletion of `rel` on the server (a name
        that is never uploaded is never deleted there either). Caller holds the lock."""
        assert self.uploads is not None
        self.ns.hide(path)
        if delete and not self.ns.ignored("/" + rel):
            self.uploads.outbox.enqueue_delete(
                rel, base_key=base, not_before=time.time() + self.upload_delay
            )

    # -- renaming --------------------------------------------------------------------------

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """Rename a file or folder, replacing `new` if it exists (atomic in the mount's view).

        Raises:
            NotFound, DominoError(EEXIST with RENAME_NOREPLACE, EISDIR, ENOTDIR, ENOTEMPTY,
            EINVAL: into itself, or RENAME_EXCHANGE).
        """
        self._check_writable(old)
        self._check_writable(new)
        self._check_name(new)
        if flags & RENAME_EXCHANGE:
            raise DominoError(f"{old}: RENAME_EXCHANGE is not supported", errno=_errno.EINVAL)
        if old == new:
            if self.ns.lookup(old)[0] == NONE:
                raise NotFound(f"{old}: no such file or folder")
            return
        if new.startswith(old + "/"):
            raise DominoError(f"{new}: inside {old}", errno=_errno.EINVAL)
        staged = self._stage_moves(old, new)
        others: list[str] = []
        try:
            with self._lock:
                others = self._rename_locked(old, new, flags, staged)
        finally:
            for s in staged.values():
                self._discard(s.work)
        self._invalidate(others)

    def _moves(self, old: str, new: str) -> list[tuple[str, str]]:
        """The names a rename of `old` to `new` moves (it, and everything below a folder)."""
        kind, obj = self.ns.lookup(old)
        if not _is_dir(kind, obj):
            return [(old, new)]
        return [(old, new)] + [(p, new + p[len(old) :]) for p in self.ns.subtree(old)]

    def _stage_moves(self, old: str, new: str) -> dict[str, _Staged]:
        """Bytes of the files a rename moves that are only a blob key, staged without the lock
        (they may download): a new name is uploaded, and local-only bytes live in the layer."""
        staged: dict[str, _Staged] = {}
        try:
            for src, _ in self._moves(old, new):
                kind, obj = self.ns.lookup(src)
                if kind == FILE or (kind == NODE and _stat.S_ISREG(obj.mode) and obj.work is None):
                    staged[src] = self._stage(obj.key, obj.size, empty=False)
        except BaseException:
            for s in staged.values():
                self._discard(s.work)
            raise
        return staged

    def _rename_locked(
        self, old: str, new: str, flags: int, staged: dict[str, _Staged]
    ) -> list[str]:
        kind, obj = self.ns.lookup(old)
        if kind == NONE:
            raise NotFound(f"{old}: no such file or folder")
        self._parent(new)
        tkind, tobj = self.ns.lookup(new)
        moving_dir = _is_dir(kind, obj)
        others: list[str] = []
        replaced: dict[str, str | None] = {}
        now = time.time_ns()
        if tkind != NONE:
            if flags & RENAME_NOREPLACE:
                raise DominoError(f"{new}: exists", errno=_errno.EEXIST)
            if kind == NODE and tobj is obj:
                return []  # two names of one inode: POSIX says do nothing
            target_dir = _is_dir(tkind, tobj)
            if moving_dir and not target_dir:
                raise DominoError(f"{new}: not a folder", errno=_errno.ENOTDIR)
            if target_dir and not moving_dir:
                raise DominoError(f"{new}: is a folder", errno=_errno.EISDIR)
            if target_dir:
                if self.ns.names_in(new):
                    raise DominoError(f"{new}: folder not empty", errno=_errno.ENOTEMPTY)
                self._remove_dir(new, tkind, tobj)
            else:
                replaced[new] = self._remote_key(new)
                # The moved name's upload replaces a server file there; else it is deleted.
                mode = (
                    obj.mode if kind == NODE else (_stat.S_IFREG if kind == FILE else _stat.S_IFLNK)
                )
                uploaded = self.uploads is not None and self.uploads.remote_path(
                    new, Inode(0, mode, 0, 0, atime=0, mtime=0, ctime=0)
                )
                others += self._remove_name(new, tkind, tobj, now, delete=not uploaded)
        for src, dst in self._moves(old, new):
            others += self._move_one(src, dst, now, staged, replaced)
        self.ns.touch_dir(parent_of(old), now)
        self.ns.touch_dir(parent_of(new), now)
        self._commit()
        return others

    def _move_one(
        self,
        src: str,
        dst: str,
        now: int,
        staged: dict[str, _Staged],
        replaced: dict[str, str | None],
    ) -> list[str]:
        """Move one name (a folder's own name, or a non-folder). Caller holds the lock."""
        assert self.uploads is not None
        up = self.uploads
        node = self.ns.copy_up(src)
        src_rel = up.remote_path(src, node)
        sent = up.withdraw(node, src) if src in node.staged else False
        src_base = node.bases.get(src)
        dst_base = replaced[dst] if dst in replaced else self._remote_key(dst)
        self.ns.unname(src)
        if _stat.S_ISDIR(node.mode):
            if self.ns.remote_has(src):
                self.ns.hide(src)
        elif src_rel is not None and (sent or src_base is not None or self.ns.remote_has(src)):
            self._delete_remote(src, src_rel, src_base or self._tree_key(src_rel), delete=True)
        self.ns.name(node, dst)
        node.ctime = now
        for p in (src, dst):
            self._page_key.pop(p, None)
        dst_rel = up.remote_path(dst, node)
        if dst_rel is not None or _stat.S_ISDIR(node.mode):
            self._unhide(dst)
        if _stat.S_ISREG(node.mode) and node.work is None:
            pre = staged.pop(src, None)
            if pre is not None and pre.key == node.key:
                node.work, node.key = pre.work, None
            else:
                if pre is not None:
                    self._discard(pre.work)
                up.make_writable(node)
        if dst_rel is not None:
            node.bases[dst] = dst_base
            if node.writers:
                node.dirty = True  # the last close queues it
            else:
                up.schedule(node, names=[dst])
        self.ns.save(node)
        return [p for p in node.names if p != dst]

    # -- metadata --------------------------------------------------------------------------

    def chmod(self, path: str, mode: int) -> None:
        """Set the permission bits (kept in the layer: the API has no modes)."""
        self._set(path, lambda n: setattr(n, "mode", (n.mode & ~0o7777) | (mode & 0o7777)))

    def chown(self, path: str, uid: int, gid: int) -> None:
        """Set the owner and group (-1 keeps one); the kernel has checked who may."""

        def apply(n: Inode) -> None:
            if uid not in (-1, 0xFFFFFFFF):
                n.uid = uid
            if gid not in (-1, 0xFFFFFFFF):
                n.gid = gid

        self._set(path, apply)

    def utimens(self, path: str, times: tuple[int, int] | None) -> None:
        """Set atime and mtime in ns (UTIME_NOW / UTIME_OMIT; None: both now)."""
        if path == RUNS + "/" + START:
            return  # `touch .runs/start` is harmless
        a, m = times if times is not None else (UTIME_NOW, UTIME_NOW)
        if a == UTIME_OMIT and m == UTIME_OMIT:
            self._check_writable(path)
            if self.ns.lookup(path)[0] == NONE:
                raise NotFound(f"{path}: no such file or folder")
            return

        def apply(n: Inode) -> None:
            now = time.time_ns()
            if a != UTIME_OMIT:
                n.atime = now if a == UTIME_NOW else a
            if m != UTIME_OMIT:
                n.mtime = now if m == UTIME_NOW else m

        self._set(path, apply)

    def _set(self, path: str, apply: Any) -> None:
        """Change `path`'s metadata (copied up into the layer first); ctime is now."""
        self._check_writable(path)
        with self._lock:
            if self.ns.lookup(path)[0] == NONE:
                raise NotFound(f"{path}: no such file or folder")
            node = self.ns.copy_up(path)
            apply(node)
            node.ctime = time.time_ns()
            self.ns.save(node)
            others = [p for p in node.names if p != path]
            self._commit()
        self._invalidate(others)
