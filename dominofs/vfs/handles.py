"""The kinds of open handle a mount hands out, one per way of reading or writing.

Owns: a handle on local bytes (an inode's file in the local layer, read and written with
pread/pwrite on its own fd), a handle on one version of a project file (read through the blob
cache: the version it opened, whatever the tree does meanwhile), a handle on fixed bytes (a
`.runs/` or status rendering: st_size equals what read returns), and the `.runs/start` handle
that collects a run request. Must not decide anything about the namespace or the outbox.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..layer import Inode


@dataclass(frozen=True, slots=True)
class Opened:
    """What `open` returns: the handle number and how the kernel may cache it."""

    fh: int
    keep_cache: bool = False
    direct_io: bool = False


class BytesHandle:
    """A handle on fixed bytes (a `.runs/` or status rendering)."""

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


class StartHandle:
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


class FileHandle:
    """A handle on an inode's local bytes (pread/pwrite on its own fd)."""

    __slots__ = ("append", "direct", "fd", "node", "saved", "writable")

    def __init__(
        self, node: Inode, fd: int, *, writable: bool, append: bool = False, direct: bool = False
    ) -> None:
        self.node = node
        self.fd = fd
        self.writable = writable
        self.append = append
        self.direct = direct  # opened with direct_io: its writes bypass the kernel's pages
        self.saved: tuple[object, ...] | None = None  # what the last flush wrote (saved_state)

    def read(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def read_into(self, buf: memoryview, offset: int) -> int:
        return os.preadv(self.fd, (buf,), offset)

    def close(self) -> None:
        os.close(self.fd)


class BlobHandle:
    """A handle on one version of a project file (`path`, blob key) read through the cache.

    `node` is the layer's inode when the path has one (its stat then comes from the inode),
    else None (a file of the remote tree, whose stat is the version opened).
    """

    __slots__ = ("key", "mtime_ns", "node", "path", "read", "read_into", "reader", "size")

    def __init__(self, path: str, reader: Any, mtime_ns: int, node: Inode | None = None) -> None:
        self.path = path
        self.reader = reader
        self.key: str = reader.key
        self.size: int = reader.size
        self.mtime_ns = mtime_ns
        self.node = node
        # Bound once: the read path is one dict lookup and one call.
        self.read = reader.read
        self.read_into = reader.read_into

    def close(self) -> None:
        self.reader.close()


def saved_state(node: Inode) -> tuple[object, ...]:
    """What of `node` a writer's close changes: equal values need no second write."""
    return (node.mtime, node.ctime, node.size, frozenset(node.pending), tuple(node.names))
