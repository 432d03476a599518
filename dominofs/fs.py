"""The FUSE adapter: mfusepy Operations that translate kernel calls into VFS calls.

Owns: the libfuse 3 binding (mfusepy with FUSE_LIBRARY_NAME=fuse3), mount options, the kernel
cache settings (attribute/entry timeouts, per-open keep_cache and direct_io), kernel cache
invalidation of changed paths, and the ONE place where exceptions become errno values
(`_FUSE._wrapper`): an errors.* error returns its errno, anything unexpected is logged with its
traceback and returns EIO, so one bad request never takes the mount down.
Must not decide anything (that is vfs.py), and must not import requests, diskcache or api.py.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterable
from typing import Any

os.environ["FUSE_LIBRARY_NAME"] = "fuse3"  # mfusepy would otherwise load libfuse 2 first

import mfusepy

from .vfs import UTIME_NOW, UTIME_OMIT, VFS, Opened

log = logging.getLogger(__name__)

# libfuse's worker threads are not Python's: ctypes gives each callback on them a new Python
# thread state and drops it at the return, so whatever a thread keeps in a threading.local
# (diskcache's SQLite connection, a keep-alive socket) was made again at every call: a cold
# `cat` of 300 small files opened the cache's database 222 times. One extra PyGILState_Ensure
# per worker, never released, keeps its thread state for the worker's life (ten at most).
_pinned: set[int] = set()
_pythonapi: Any = ctypes.pythonapi


def _pin_thread_state() -> None:
    ident = threading.get_ident()
    if ident not in _pinned:
        _pythonapi.PyGILState_Ensure()
        _pinned.add(ident)


NEGATIVE_TIMEOUT = 1.0  # a name the server adds is not invalidated: it shows within 1 s


_TIMES = {"st_atime": "st_atimespec", "st_mtime": "st_mtimespec", "st_ctime": "st_ctimespec"}
_STAT_SIZE = ctypes.sizeof(mfusepy.c_stat)
_READDIR_PLUS = 1  # enum fuse_readdir_flags: the kernel asked for attributes too
_FILL_DIR_PLUS = 2  # enum fuse_fill_dir_flags: this entry carries them
_DIR_MODE = stat.S_IFDIR | 0o755
_UTIME_NOW = (1 << 30) - 1  # what libfuse puts in tv_nsec for "now" and "leave it"
_UTIME_OMIT = (1 << 30) - 2


def _fill(st: Any, attrs: dict[str, int]) -> None:
    """Copy a stat dict (times in ns) into a zeroed struct stat."""
    for k, v in attrs.items():
        t = _TIMES.get(k)
        if t is None:
            setattr(st, k, v)
        else:
            ts = getattr(st, t)
            ts.tv_sec, ts.tv_nsec = divmod(v, 1_000_000_000)


class _FUSE(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy's FUSE with our error translation and leaner read, getattr and readdir paths."""

    def __init__(self, operations: Operations, mountpoint: str, **kwargs: Any) -> None:
        vfs = operations.vfs
        self._vfs_read_into = vfs.read_into
        self._vfs_write = vfs.write
        self._vfs_getattr = vfs.getattr
        self._vfs_readdir = vfs.readdir
        self._vfs_entry_stat = vfs.entry_stat
        super().__init__(operations, mountpoint, raw_fi=True, **kwargs)

    def getattr_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        # One dict lookup in the vfs and a struct fill: no per-call option handling.
        ctypes.memset(buf, 0, _STAT_SIZE)
        fh = fip.contents.fh if fip else None
        _fill(buf.contents, self._vfs_getattr(_decode(path), fh))
        return 0

    def readdir_fuse_3(
        self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int
    ) -> int:
        # Entries carry their attributes (READDIRPLUS, with offsets so libfuse links them): a
        # walk that stats every file then needs no lookup per file.
        p = _decode(path)
        names = self._vfs_readdir(p)
        base = "/" if p == "/" else p + "/"
        plus = flags & _READDIR_PLUS
        st = mfusepy.c_stat()
        entry_stat = self._vfs_entry_stat
        i = offset
        end = len(names) + 2
        while i < end:
            ctypes.memset(ctypes.byref(st), 0, _STAT_SIZE)
            fill_flags = 0
            if i < 2:
                name = "." if i == 0 else ".."
                st.st_mode = _DIR_MODE
                # With use_ino a d_ino of 0 would hide the entry (glibc skips those).
                st.st_ino = self._dir_ino(p if i == 0 else p.rsplit("/", 1)[0] or "/")
                statp: Any = st
            else:
                name = names[i - 2]
                attrs = entry_stat(base + name)
                if attrs is None:
                    statp = None
                else:
                    _fill(st, attrs)
                    statp = st
                    if plus:
                        fill_flags = _FILL_DIR_PLUS
            i += 1
            if filler(buf, name.encode("utf-8", "surrogateescape"), statp, i, fill_flags):
                break
        return 0

    def _dir_ino(self, path: str) -> int:
        attrs = self._vfs_entry_stat(path)
        return attrs["st_ino"] if attrs is not None and "st_ino" in attrs else 1

    def _wrapper(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
        # The one errno mapping: errors.* carry their errno; everything else is EIO.
        _pin_thread_state()
        try:
            try:
                return int(func(*args, **kwargs) or 0)
            except OSError as exc:
                if func.__name__ == "init":
                    raise
                if isinstance(exc.errno, int) and exc.errno > 0:
                    if exc.errno not in (errno.ENOENT, errno.EROFS):
                        log.debug("%s: %s", func.__name__, exc)
                    return -exc.errno
                log.exception("%s: OSError without errno; returning EIO", func.__name__)
                return -errno.EIO
            except Exception:
                if func.__name__ == "init":
                    raise
                log.exception("%s failed unexpectedly; returning EIO", func.__name__)
                return -errno.EIO
        except BaseException as exc:
            self._FUSE__critical_exception = exc
            log.critical("%s: fatal %s; unmounting", func.__name__, type(exc).__name__)
            mfusepy.fuse_exit()
            return -errno.EFAULT

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        # mfusepy drops the flags: RENAME_NOREPLACE and RENAME_EXCHANGE must not run as a
        # plain rename.
        return int(self.operations.rename(_decode(old), _decode(new), flags) or 0)

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        # The raw timespecs: mfusepy folds UTIME_NOW / UTIME_OMIT into nanoseconds.
        times: tuple[int, int] | None = None
        if buf:
            times = (_time_of(buf.contents.actime), _time_of(buf.contents.modtime))
        return int(self.operations.utimens(_decode(path) if path else "", times) or 0)

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        # Skips mfusepy's per-call path decoding: a read needs only its handle. The bytes go
        # straight into libfuse's buffer (valid for this call only), no bytes object between.
        addr = ctypes.addressof(buf.contents)
        view = memoryview((ctypes.c_ubyte * size).from_address(addr)).cast("B")
        return int(self._vfs_read_into(fip.contents.fh, view, offset))

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        # No copy of the data into a bytes object, no path decoding: the vfs writes straight
        # from libfuse's buffer (valid for this call only; the vfs keeps no reference).
        data = memoryview((ctypes.c_char * size).from_address(ctypes.addressof(buf.contents)))
        return int(self._vfs_write(fip.contents.fh, data, offset))


def _time_of(ts: Any) -> int:
    if ts.tv_nsec == _UTIME_NOW:
        return UTIME_NOW
    if ts.tv_nsec == _UTIME_OMIT:
        return UTIME_OMIT
    return int(ts.tv_sec) * 1_000_000_000 + int(ts.tv_nsec)


def _caller() -> tuple[int, int]:
    """(uid, gid) of the process whose call this is: the owner of what it makes."""
    uid, gid, _ = mfusepy.fuse_get_context()
    return int(uid), int(gid)


def _decode(path: bytes | None) -> str:
    return "" if path is None else path.decode("utf-8", "surrogateescape")


def _fh(fi: Any) -> int | None:
    return int(fi.fh) if fi is not None else None


class Operations(mfusepy.Operations):  # type: ignore[misc]
    """FUSE operations over a VFS: translation only."""

    use_ns = True

    def __init__(
        self,
        vfs: VFS,
        *,
        on_init: Callable[[], None] | None = None,
        on_destroy: Callable[[], None] | None = None,
    ) -> None:
        self.vfs = vfs
        vfs.caller = _caller
        self._on_init = on_init
        self._on_destroy = on_destroy
        self._fuse_ptr: ctypes.c_void_p | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.entry_timeout = self.vfs.attr_timeout
            config.attr_timeout = self.vfs.attr_timeout
            config.negative_timeout = NEGATIVE_TIMEOUT
            config.kernel_cache = 0  # decided per open (keep_cache), by blob key
            config.auto_cache = 0
            config.use_ino = 1  # st_ino is the layer's: stable across renames and remounts
        lib = mfusepy._libfuse
        if hasattr(lib, "fuse_invalidate_path"):
            lib.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.fuse_invalidate_path.restype = ctypes.c_int
            self._fuse_ptr = ctypes.c_void_p(lib.fuse_get_context().contents.fuse)
            self.vfs.invalidate = self._invalidate
        if self._on_init is not None:
            self._on_init()

    def destroy(self, path: str) -> None:
        self.vfs.invalidate = None
        self._fuse_ptr = None
        if self._on_destroy is not None:
            self._on_destroy()

    def _invalidate(self, paths: Iterable[str]) -> None:
        ptr = self._fuse_ptr
        if ptr is None:
            return
        for p in paths:
            # ENOENT: the kernel never looked the path up; nothing to drop.
            mfusepy._libfuse.fuse_invalidate_path(ptr, p.encode("utf-8", "surrogateescape"))

    # -- metadata ------------------------------------------------------------------------

    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        return self.vfs.getattr(path, _fh(fh))

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *self.vfs.readdir(path)]

    def statfs(self, path: str) -> dict[str, int]:
        return self.vfs.statfs()

    # -- files ---------------------------------------------------------------------------

    def _set(self, fi: Any, opened: Opened) -> int:
        fi.fh = opened.fh
        fi.keep_cache = 1 if opened.keep_cache else 0
        fi.direct_io = 1 if opened.direct_io else 0
        return 0

    def open(self, path: str, fi: Any) -> int:
        return self._set(fi, self.vfs.open(path, fi.flags))

    def create(self, path: str, mode: int, fi: Any) -> int:
        return self._set(fi, self.vfs.create(path, mode, fi.flags, ctx=_caller()))

    def read(self, path: str | None, size: int, offset: int, fh: Any) -> bytes:
        return self.vfs.read(fh.fh, size, offset)  # _FUSE.read is what libfuse calls

    def write(self, path: str | None, data: bytes, offset: int, fh: Any) -> int:
        return self.vfs.write(fh.fh, data, offset)

    def truncate(self, path: str | None, length: int, fh: Any = None) -> int:
        self.vfs.truncate(path or "", length, _fh(fh))
        return 0

    def flush(self, path: str | None, fh: Any) -> int:
        self.vfs.flush(fh.fh)
        return 0

    def release(self, path: str | None, fh: Any) -> int:
        self.vfs.release(fh.fh)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: Any) -> int:
        self.vfs.fsync(fh.fh)
        return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: Any) -> int:
        self.vfs.fsyncdir()
        return 0

    def readlink(self, path: str) -> str:
        return self.vfs.readlink(path)

    # -- mutations -----------------------------------------------------------------------

    def mkdir(self, path: str, mode: int) -> int:
        self.vfs.mkdir(path, mode, ctx=_caller())
        return 0

    def rmdir(self, path: str) -> int:
        self.vfs.rmdir(path)
        return 0

    def unlink(self, path: str) -> int:
        self.vfs.unlink(path)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self.vfs.rename(old, new, flags)
        return 0

    def chmod(self, path: str | None, mode: int) -> int:
        self.vfs.chmod(path or "", mode)
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        self.vfs.chown(path or "", uid, gid)
        return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        self.vfs.utimens(path or "", times)
        return 0

    def symlink(self, target: str, source: str) -> int:
        # mfusepy passes the NEW name first (`target`), then what it points to (fusepy #11).
        self.vfs.symlink(target, source, ctx=_caller())
        return 0

    def link(self, target: str, source: str) -> int:
        self.vfs.link(target, source)  # the new name first, as for symlink
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        self.vfs.mknod(path, mode, dev, ctx=_caller())
        return 0


def mount(
    vfs: VFS,
    mountpoint: str,
    *,
    on_init: Callable[[], None] | None = None,
    on_destroy: Callable[[], None] | None = None,
    debug: bool = False,
    allow_other: bool = False,
) -> None:
    """Mount `vfs` at `mountpoint` and serve it until unmounted (SIGINT/SIGTERM unmount).

    The kernel checks permissions from the modes and owners the mount reports
    (`default_permissions`, always); `allow_other` lets other users in.

    Raises:
        RuntimeError: libfuse could not mount.
    """
    ops = Operations(vfs, on_init=on_init, on_destroy=on_destroy)
    _FUSE(
        ops,
        mountpoint,
        foreground=True,
        nothreads=False,
        debug=debug,
        fsname="dominofs",
        subtype="dominofs",
        default_permissions=True,
        allow_other=allow_other,
    )
