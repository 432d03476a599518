"""Uploads and blob downloads over plain http.client connections, one kept alive per thread
(used by api.py only).

Owns: sending one request with a file body over a keep-alive connection of the calling thread,
noticing a connection the server closed while it sat idle, and reading the (small) answer; and
a streamed GET whose body the caller reads (a blob), the connection going back to its thread
once the body was read to its end. Must not retry, map statuses to errors or log: api.py does
that, in one place for all calls.

Why not requests: a burst of uploads (`cp -r` into the mount, a sync of many new files) or of
small cold reads is CPU-bound, and requests spends about 1.3 ms of CPU per PUT where http.client
spends 0.3 ms (500 PUTs of 10 KiB measured here); a GET is alike. Only plain http takes this
path; https stays with requests and its certificate handling.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO
from urllib.parse import urlsplit

from .keepalive import PerThread, peer_closed

_BLOCK = 1 << 20  # http.client sends a file body in reads this big (its default is 8 KiB)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes  # at most `max_body` bytes of it
    complete: bool  # False when the body was longer than `max_body`


class PlainHTTP:
    """Keep-alive connections to one http:// server, one per calling thread."""

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
        self._prefix = parts.path.rstrip("/")
        self._headers = dict(headers)
        # No bound method of self in the pool: __del__ must run when the client is dropped.
        connect = functools.partial(
            _connect, parts.hostname, parts.port or 80, connect_timeout, read_timeout
        )
        self._conns: PerThread[http.client.HTTPConnection] = PerThread(
            connect, http.client.HTTPConnection.close, lambda conn: not peer_closed(conn.sock)
        )

    def send(
        self,
        method: str,
        path: str,
        body: IO[bytes] | bytes,
        headers: Mapping[str, str],
        *,
        max_body: int,
    ) -> Answer:
        """One request on this thread's connection; the answer's body is read whole (up to
        `max_body`).

        Raises:
            OSError (refused, reset, timed out), http.client.HTTPException (a broken answer):
            the connection is dropped, the caller decides whether to send again.
        """
        conn, slot = self._conns.take()
        try:
            conn.request(
                method, self._prefix + path, body=body, headers={**self._headers, **headers}
            )
            resp = conn.getresponse()
            data = resp.read(max_body + 1)
        except BaseException:
            self._conns.finish(conn, slot, reuse=False)
            raise
        complete = len(data) <= max_body
        self._conns.finish(conn, slot, reuse=complete and resp.isclosed() and not resp.will_close)
        return Answer(resp.status, resp.msg, data[:max_body], complete)

    def open(self, path: str, headers: Mapping[str, str]) -> PlainResponse:
        """A GET whose body the caller reads as it streams in (its `close` or `release_conn`
        ends it). The thread's connection serves it; a second stream opened by the same thread
        meanwhile gets a connection of its own.

        Raises:
            OSError, http.client.HTTPException: as `send`.
        """
        conn, slot = self._conns.take()
        try:
            conn.request("GET", self._prefix + path, headers={**self._headers, **headers})
            resp = conn.getresponse()
        except BaseException:
            self._conns.finish(conn, slot, reuse=False)
            raise
        return PlainResponse(resp, lambda reuse: self._conns.finish(conn, slot, reuse=reuse))

    def close(self) -> None:
        self._conns.close()

    def __del__(self) -> None:
        # A client dropped without close() must not leave its sockets to the collector.
        with contextlib.suppress(Exception):
            self.close()


def _connect(
    host: str, port: int, connect_timeout: float, read_timeout: float
) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(host, port, timeout=connect_timeout, blocksize=_BLOCK)
    conn.connect()
    assert conn.sock is not None
    conn.sock.settimeout(read_timeout)
    return conn


class PlainResponse:
    """What BlobStream reads of a requests.Response, over an http.client answer: the status,
    the headers, the body (`raw.read`, or `raw._fp.readinto` straight into a buffer), and the
    end of it (`release_conn` after the last byte: the connection is kept; `close`: dropped
    unless the body was read to its end)."""

    __slots__ = ("_done", "_fp", "headers", "status_code")

    def __init__(self, resp: http.client.HTTPResponse, done: Callable[[bool], None]) -> None:
        self._fp = resp
        self.status_code = resp.status
        self.headers = resp.msg
        self._done: Callable[[bool], None] | None = done

    @property
    def raw(self) -> PlainResponse:
        return self

    def read(self, amt: int, decode_content: bool = False) -> bytes:
        fp = self._fp
        remaining = fp.length
        data = fp.read(amt)
        if not data and amt and remaining:
            # http.client returns b"" for a body cut short; urllib3 (and we) call it broken.
            raise http.client.IncompleteRead(b"", remaining)
        return data

    def iter_content(self, chunk_size: int) -> Iterator[bytes]:
        while chunk := self.read(chunk_size):
            yield chunk

    def release_conn(self) -> None:
        self._end()

    def close(self) -> None:
        self._end()

    def _end(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            fp = self._fp
            done(fp.isclosed() and not fp.will_close)
            fp.close()
