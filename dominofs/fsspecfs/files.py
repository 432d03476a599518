"""The file objects of domino://: a seekable reader pinned to one blob, and a spooled writer.

Owns: reading (fsspec's AbstractBufferedFile over Range reads of the blob the path named at
open, so a concurrent upload never mixes two versions into one read; a read-ahead window that
doubles while reads go forward, so a sequential read costs few requests and a random one
fetches little), and writing (bytes spooled to a temporary file, memory flat however large;
exactly one upload when the file is closed or its transaction commits; a failure raises from
close(); an exception inside `with` uploads nothing). Must not know listings or HTTP: the
filesystem hands in `fetch` and `upload` callables.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any

from fsspec.caching import BaseCache
from fsspec.spec import AbstractBufferedFile

DEFAULT_BLOCK_SIZE = 1 << 20  # what a random read fetches beyond what it asked for
MAX_WINDOW = 32 << 20  # the read-ahead of a long sequential read
SPOOL_IN_MEMORY = 8 << 20  # a write larger than this goes to a temporary file on disk

Fetch = Callable[[int, int], bytes]
Upload = Callable[[IO[bytes], int], None]


class Readahead(BaseCache):  # type: ignore[misc]
    """One window of the file. A small read inside it is a hit; one that goes on from it
    doubles the window (up to MAX_WINDOW); one elsewhere starts over with one block. A read of
    a block or more is fetched as asked, into the bytes it returns (no copy here).

    fsspec's own "readahead" adds the same block to every read, so a sequential reader pays
    one request per block, a column read of a Parquet file a block it does not need, and a
    big read a copy of everything it fetched.
    """

    name = "domino-readahead"

    def __init__(self, blocksize: int, fetcher: Fetch, size: int, **_: Any) -> None:
        super().__init__(blocksize, fetcher, size)
        self._data = b""
        self._start = 0
        self._window = blocksize

    def _fetch(self, start: int | None, end: int | None) -> bytes:
        start = 0 if start is None else start
        end = self.size if end is None or end > self.size else end
        if start >= end:
            return b""
        have_from, have_to = self._start, self._start + len(self._data)
        if have_from <= start and end <= have_to:
            self.hit_count += 1
            return self._data[start - have_from : end - have_from]
        self.miss_count += 1
        part, begin = b"", start
        if self._data and have_from <= start <= have_to:
            part, begin = self._data[start - have_from :], have_to
            self._window = min(self._window * 2, MAX_WINDOW)
        else:
            self._window = self.blocksize
        stop = end if end - begin >= self.blocksize else min(self.size, end + self._window)
        self.total_requested_bytes += stop - begin
        self._data = self.fetcher(begin, stop)
        self._start = begin
        # A whole slice of bytes is the bytes itself: a big read is returned as fetched.
        new = self._data[: end - begin]
        return part + new if part else new


class ReadFile(AbstractBufferedFile):  # type: ignore[misc]
    """A file open for reading: the blob it named at open, whatever happens to the path."""

    def __init__(
        self,
        fs: Any,
        path: str,
        *,
        details: dict[str, Any],
        fetch: Fetch,
        block_size: int | None = None,
        cache_type: str | None = None,
        cache_options: dict[str, Any] | None = None,
        on_close: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self._fetch = fetch
        self._on_close = on_close
        super().__init__(
            fs,
            path,
            mode="rb",
            block_size=block_size or DEFAULT_BLOCK_SIZE,
            cache_type=cache_type or "none",
            cache_options=cache_options,
            size=details["size"],
            **kwargs,
        )
        self._details = details
        self.key: str = details["key"]
        self.commit: str | None = details.get("commit")
        if cache_type is None:
            self.cache = Readahead(self.blocksize, self._fetch_range, self.size)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self._fetch(start, end)

    def close(self) -> None:
        was_open = not self.closed
        try:
            super().close()
        finally:
            if was_open and self._on_close is not None:
                self._on_close()

    def __reduce__(self) -> tuple[Any, ...]:
        # Reopened elsewhere, it reads the same blob (fsspec's own reduce reopens the path).
        return (_reopen, (self.fs, self.details["name"], self.loc, self.blocksize))


def _reopen(fs: Any, name: str, loc: int, block_size: int) -> ReadFile:
    f: ReadFile = fs.open(name, "rb", block_size=block_size)
    f.seek(loc)
    return f


class WriteFile(io.IOBase):
    """A file open for writing: spooled here, one upload at close (or at its commit)."""

    def __init__(self, fs: Any, path: str, *, upload: Upload, autocommit: bool = True) -> None:
        super().__init__()
        self.fs = fs
        self.path = path
        self.mode = "wb"
        self.autocommit = autocommit
        self._upload = upload
        # Closed by commit() or discard(), whichever comes.
        self._spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
        self._size = 0
        self._finished = False

    def __repr__(self) -> str:
        return f"<domino:// file {self.path!r} open for writing>"

    def writable(self) -> bool:
        return not self.closed

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        n = self._spool.write(data)
        self._size += n
        return n

    def tell(self) -> int:
        return self._size

    def close(self) -> None:
        """Upload the file (unless in a transaction, which commits it later).

        Raises:
            OSError, PermissionError, FileExistsError, ...: the upload failed; nothing changed.
        """
        if self.closed:
            return
        try:
            if self.autocommit:
                self.commit()
        finally:
            super().close()

    def commit(self) -> None:
        """Upload the spooled bytes as the file (once)."""
        if self._finished:
            return
        self._finished = True
        try:
            self._spool.seek(0)
            self._upload(self._spool, self._size)
        finally:
            self._spool.close()

    def discard(self) -> None:
        """Drop what was written: nothing is uploaded."""
        self._finished = True
        self._spool.close()
        if not self.closed:
            super().close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.discard()  # half a file is never uploaded
        else:
            self.close()
