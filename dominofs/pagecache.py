"""Page-cache hints for big sequential writes (downloads into the blob cache).

Owns: starting writeback of what a writer just wrote, and dropping the pages well behind it.
Must not know blobs, paths or FUSE: callers hand an fd and how far they have written.

Why: the bytes a mount reader was served also sit in the mount's own page cache (the kernel's
copy for the FUSE file). Keeping the cache file's pages as well holds every byte of a big file
in RAM twice, and filling fresh memory is slow on a VM (here 1 GiB into new pages cost 1.5-2 s
of system time, into pages freed a moment earlier 0.25 s). Pages dropped behind the writer are
the ones its next writes reuse. Writeback is started early for another reason too: a few big
files left dirty reach the kernel's dirty limits, and from then on every write is throttled.
Not used for the mount's staging files: there, waiting for writeback in the write path made
`dd` into the mount 1.5-2x slower on this machine's disk.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

SEGMENT = 8 << 20  # writeback is started, and pages dropped, this many bytes at a time
BEHIND = 16 << 20  # pages this far behind the writer leave the page cache

_WRITE = 2  # SYNC_FILE_RANGE_WRITE
_WAIT_ALL = 7  # SYNC_FILE_RANGE_WAIT_BEFORE | _WRITE | _WAIT_AFTER


def _libc_sync_file_range() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _libc_sync_file_range()


class DropBehind:
    """Follows one sequential writer of one fd; call `wrote` after each write."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = SEGMENT  # the next segment end to act at

    def wrote(self, fd: int, end: int) -> None:
        """The writer has written up to `end` (a write that goes back changes nothing)."""
        if end < self._next:
            return
        boundary = end - end % SEGMENT
        self._next = boundary + SEGMENT
        if _sync_file_range is None:
            return
        _sync_file_range(fd, boundary - SEGMENT, SEGMENT, _WRITE)
        old = boundary - SEGMENT - BEHIND
        if old >= 0:
            # Written back BEHIND bytes ago, so the wait is short; only clean pages drop.
            _sync_file_range(fd, old, SEGMENT, _WAIT_ALL)
            os.posix_fadvise(fd, old, SEGMENT, os.POSIX_FADV_DONTNEED)
