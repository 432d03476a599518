"""Blob GETs over raw keep-alive sockets on plain http, one per thread (used by api.py only).

Owns: sending a GET, reading the answer's status line and headers with a parser of a few
lines, and handing its body (Content-Length framed) to BlobStream straight from the socket;
the connection goes back to its thread once the body was read to its end. An answer framed any
other way (chunked) is refused with `Unframed`, and api.py asks again over http.client.
Must not retry, map statuses to errors or log: api.py does that, in one place for all calls.

Why: a cold small file is a GET, and http.client parses each answer's headers with the email
package (measured here: a millisecond of CPU per answer under a profiler, most of a cold 10 KiB
read). This parser takes what a blob needs: the status, Content-Length, Content-Encoding,
Retry-After, Connection.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import socket
from collections.abc import Callable, Iterator, Mapping
from urllib.parse import urlsplit

from .keepalive import PerThread, peer_closed

_HEAD_MAX = 64 * 1024  # the status line and headers of one answer, at most
_RECV = 64 * 1024


class Unframed(Exception):
    """The answer is not Content-Length framed (chunked): ask again another way."""


class Headers(dict[str, str]):
    """An answer's headers by lower-case name; `get` takes any case."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


class FastGet:
    """Raw keep-alive GETs to one http:// server, one connection per calling thread."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not a plain http URL: {base_url}")
        self._address = (parts.hostname, parts.port or 80)
        self._prefix = parts.path.rstrip("/")
        host = parts.netloc.rsplit("@", 1)[-1]
        fixed = {"Host": host, "Accept-Encoding": "identity", **headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        # No bound method of self in the pool: __del__ must run when the client is dropped.
        connect = functools.partial(_connect, self._address, connect_timeout, read_timeout)
        self._conns: PerThread[socket.socket] = PerThread(
            connect, socket.socket.close, lambda sock: not peer_closed(sock)
        )

    def get(self, path: str, headers: Mapping[str, str]) -> FastResponse:
        """Send a GET of `path` and read its answer's head; the body is the caller's to read.

        Raises:
            OSError (refused, reset, timed out), http.client.HTTPException (a broken answer),
            Unframed: the connection is dropped.
        """
        sock, slot = self._conns.take()
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")
        request = b"GET " + (self._prefix + path).encode("ascii") + b" HTTP/1.1\r\n"
        try:
            sock.sendall(request + self._fixed + extra + b"\r\n")
            status, head, rest = _read_head(sock)
            if head.get("transfer-encoding") is not None:
                raise Unframed(head["transfer-encoding"])
            length = head.get("content-length")
            if length is None or not length.isdigit():
                raise Unframed("no Content-Length")
            keep = (head.get("connection") or "").lower() != "close"
        except BaseException:
            self._conns.finish(sock, slot, reuse=False)
            raise
        body = _Body(sock, rest, int(length))
        return FastResponse(
            status, head, body, lambda done: self._conns.finish(sock, slot, reuse=done and keep)
        )

    def close(self) -> None:
        self._conns.close()

    def __del__(self) -> None:
        # A client dropped without close() must not leave its sockets to the collector.
        with contextlib.suppress(Exception):
            self.close()


def _connect(
    address: tuple[str, int], connect_timeout: float, read_timeout: float
) -> socket.socket:
    sock = socket.create_connection(address, timeout=connect_timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(read_timeout)
    return sock


def _read_head(sock: socket.socket) -> tuple[int, Headers, bytes]:
    """(status, headers, the first bytes of the body) of the answer arriving on `sock`."""
    buf = b""
    while True:
        chunk = sock.recv(_RECV)
        if not chunk:
            raise http.client.RemoteDisconnected("the server closed the connection")
        buf += chunk
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buf) > _HEAD_MAX:
            raise http.client.LineTooLong("answer head")
    lines = buf[:end].decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise http.client.BadStatusLine(lines[0][:80])
    head = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise http.client.BadStatusLine(f"bad header line {line[:80]!r}")
        head[name.strip().lower()] = value.strip()
    if version == "HTTP/1.0" and (head.get("connection") or "").lower() != "keep-alive":
        head["connection"] = "close"
    return int(code), head, buf[end + 4 :]


class _Body:
    """A Content-Length framed body on a socket, as BlobStream reads http.client's: `readinto`,
    `length` (bytes still to come), and `fp` (None once all came)."""

    __slots__ = ("_pending", "_sock", "fp", "length")

    def __init__(self, sock: socket.socket, pending: bytes, length: int) -> None:
        self._sock = sock
        self._pending = memoryview(pending)[:length]
        self.length = length
        self.fp: object | None = self if length else None

    def readinto(self, buf: bytearray | memoryview) -> int:
        want = min(len(buf), self.length)
        if want <= 0:
            return 0
        if self._pending:
            n = min(want, len(self._pending))
            buf[:n] = self._pending[:n]
            self._pending = self._pending[n:]
        else:
            n = self._sock.recv_into(buf, want)
            if not n:
                return 0  # cut short: BlobStream calls it broken, with what is missing
        self.length -= n
        if not self.length:
            self.fp = None
        return n

    def read(self, amt: int) -> bytes:
        """`amt` bytes (fewer only at the end), as http.client's read gives them."""
        buf = bytearray(min(amt, self.length))
        view = memoryview(buf)
        got = 0
        while got < len(buf):
            n = self.readinto(view[got:])
            if not n:
                raise http.client.IncompleteRead(bytes(buf[:got]), self.length)
            got += n
        return bytes(buf)


class FastResponse:
    """What BlobStream reads of a requests.Response: `status_code`, `headers`, `raw.read`,
    `raw._fp.readinto`, and the end (`release_conn` after the last byte keeps the connection;
    `close` drops it unless the body was read to its end)."""

    __slots__ = ("_done", "_fp", "headers", "status_code")

    def __init__(
        self, status: int, headers: Headers, body: _Body, done: Callable[[bool], None]
    ) -> None:
        self.status_code = status
        self.headers = headers
        self._fp = body
        self._done: Callable[[bool], None] | None = done

    @property
    def raw(self) -> FastResponse:
        return self

    def read(self, amt: int, decode_content: bool = False) -> bytes:
        return self._fp.read(amt)

    def iter_content(self, chunk_size: int) -> Iterator[bytes]:
        while chunk := self._fp.read(chunk_size):
            yield chunk

    def release_conn(self) -> None:
        self._end()

    def close(self) -> None:
        self._end()

    def _end(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(self._fp.length == 0)
