"""BlobStream: a file's bytes from one streamed GET, whichever route answered it.

Owns: reading a blob body off the socket (straight into a caller's buffer where it can), the
local fallback when a server ignores Range (a 200 to a request with an offset: the first bytes
are skipped here; a `length` cap is applied here too), returning the connection to the pool once
a body is read to its end, and mapping what breaks mid-body to errors.*. api.py makes the
request; this module never starts one. Must not import anything above models and errors.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any

import requests
import urllib3

from .errors import DominoError, ServerError, Unreachable
from .httperrors import why


class BlobStream(Iterator[bytes]):
    """A blob's bytes from a streamed GET: an iterator of `bytes` chunks, or `readinto`.

    `readinto(buffer)` fills a caller's buffer straight from the socket (no bytes object per
    chunk; the blob cache uses it); iteration yields chunks of up to `chunk_size`. Use one or the
    other. Errors are errors.* (Unreachable, ServerError), raised while reading. `close` (also on
    exhaustion or error) releases the connection. A body whose Range was ignored (200 to a
    request with an offset) has its first `offset` bytes skipped locally; with `length`, no more
    than `length` bytes are handed out whatever the server sends. `resp=None` is an empty stream.
    """

    __slots__ = (
        "_chunks",
        "_fp",
        "_host",
        "_left",
        "_pending",
        "_resp",
        "_skip",
        "_what",
        "chunk_size",
    )

    def __init__(
        self,
        resp: requests.Response | None,
        *,
        offset: int,
        chunk_size: int,
        host: str,
        what: str,
        length: int | None = None,
    ) -> None:
        self._resp = resp
        self.chunk_size = chunk_size
        self._host = host
        self._what = what
        self._chunks: Iterator[bytes] | None = None
        self._skip = offset if (resp is not None and offset > 0 and resp.status_code == 200) else 0
        self._left = length  # bytes still to hand out; None: to the end of the body
        self._fp: Any = None
        self._pending = b""
        if resp is None:
            return
        if resp.status_code == 416:
            self.close()  # asked for bytes at or past the end: there are none
        elif _identity(resp) and resp.headers.get("Content-Length") is not None:
            # http.client's response under urllib3's: its readinto is a recv_into the caller's
            # buffer (urllib3's own readinto reads a bytes object and copies it).
            fp = getattr(resp.raw, "_fp", None)
            if fp is not None and getattr(fp, "length", None) is not None:
                self._fp = fp

    def __iter__(self) -> BlobStream:
        return self

    def __next__(self) -> bytes:
        if self._resp is None:
            raise StopIteration
        if self._left == 0:
            self._release()
            raise StopIteration
        if self._chunks is None:
            self._chunks = _body_chunks(self._resp, self.chunk_size)
        try:
            while True:
                chunk = next(self._chunks)
                if self._skip:
                    if len(chunk) <= self._skip:
                        self._skip -= len(chunk)
                        continue
                    chunk, self._skip = chunk[self._skip :], 0
                if self._left is not None:
                    chunk = chunk[: self._left]
                    self._left -= len(chunk)
                return chunk
        except StopIteration:
            self.close()
            raise
        except BaseException as exc:
            self.close()
            raise self._mapped(exc) from None

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Fill up to len(buffer) bytes; 0 at the end of the blob. Raises errors.*."""
        resp = self._resp
        if resp is None or not len(buffer):
            return 0
        if self._fp is None:
            return self._readinto_chunks(buffer)
        if self._left is not None:
            if self._left == 0:
                self._release()
                return 0
            buffer = memoryview(buffer)[: self._left]
        try:
            while self._skip:
                view = memoryview(buffer)[: min(len(buffer), self._skip)]
                n = self._recv(view)
                self._skip -= n
            n = self._recv(buffer)
        except BaseException as exc:
            self.close()
            raise self._mapped(exc) from None
        if n == 0:
            self._release()
        elif self._left is not None:
            self._left -= n
        return n

    def _release(self) -> None:
        """The body was read to its end: the connection goes back to the pool for the next
        request (closing would cost a new connection per cold blob)."""
        resp, fp = self._resp, self._fp
        if resp is not None and fp is not None and fp.length == 0 and fp.fp is None:
            self._resp = self._fp = None
            try:
                resp.raw.release_conn()
            except Exception:
                resp.close()
            return
        self.close()

    def _recv(self, buffer: bytearray | memoryview) -> int:
        fp = self._fp
        remaining = fp.length
        n = fp.readinto(buffer)
        if not n and remaining:
            raise urllib3.exceptions.ProtocolError(
                f"Connection broken: IncompleteRead({remaining} bytes missing)"
            )
        return int(n)

    def _readinto_chunks(self, buffer: bytearray | memoryview) -> int:
        # A chunked or encoded body: copy from the iterator (which applies skip and cap),
        # keeping what does not fit.
        chunk = self._pending or next(self, b"")
        n = min(len(chunk), len(buffer))
        buffer[:n] = chunk[:n]
        self._pending = chunk[n:]
        return n

    def close(self) -> None:
        resp, self._resp = self._resp, None
        self._fp = None
        if resp is not None:
            resp.close()

    def _mapped(self, exc: BaseException) -> BaseException:
        host, what = self._host, self._what
        if isinstance(exc, DominoError):
            return exc
        if isinstance(
            exc,
            (
                requests.ConnectionError,
                requests.Timeout,
                urllib3.exceptions.TimeoutError,
                TimeoutError,
            ),
        ):
            return Unreachable(f"cannot read from {host} ({what}): {why(exc)}")
        if isinstance(
            exc,
            (
                requests.RequestException,
                urllib3.exceptions.HTTPError,
                OSError,
                http.client.HTTPException,
            ),
        ):
            return ServerError(f"{host} ({what}): download broke off: {why(exc)}")
        return exc


def range_header(offset: int, length: int | None) -> dict[str, str] | None:
    """The Range header for `length` bytes from `offset` (None: the whole body)."""
    if length is not None:
        return {"Range": f"bytes={max(offset, 0)}-{max(offset, 0) + length - 1}"}
    return {"Range": f"bytes={offset}-"} if offset > 0 else None


def _identity(resp: requests.Response) -> bool:
    return resp.headers.get("Content-Encoding", "identity").lower() == "identity"


def _body_chunks(resp: requests.Response, chunk_size: int) -> Iterator[bytes]:
    """The body in chunks of up to `chunk_size` bytes.

    An unencoded body is read straight from urllib3 (`raw.read`): iter_content's generator and
    decoder layers cost a Python round trip per chunk on the hot path of every cold read.
    urllib3 errors (ProtocolError for a broken or short body, ReadTimeoutError) propagate.
    """
    raw = resp.raw
    if not _identity(resp) or raw is None:
        yield from resp.iter_content(chunk_size)
        return
    read = raw.read
    while chunk := read(chunk_size, decode_content=False):
        yield chunk
