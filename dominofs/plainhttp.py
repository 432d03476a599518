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
import http.client
import select
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO
from urllib.parse import urlsplit

_BLOCK = 1 << 20  # http.client sends a file body in reads this big (its default is 8 KiB)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes  # at most `max_body` bytes of it
    complete: bool  # False when the body was longer than `max_body`


class _Slot:
    """One thread's keep-alive connection, and whether a streamed answer is being read from it.
    A stream may be finished on another thread: it updates the slot of the thread that asked."""

    __slots__ = ("busy", "conn")

    def __init__(self) -> None:
        self.conn: http.client.HTTPConnection | None = None
        self.busy = False


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
        self._hostname = parts.hostname
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self._headers = dict(headers)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

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
        slot = self._slot()
        conn = self._connection(slot)
        try:
            conn.request(
                method, self._prefix + path, body=body, headers={**self._headers, **headers}
            )
            resp = conn.getresponse()
            data = resp.read(max_body + 1)
        except BaseException:
            self._drop(conn, slot)
            raise
        complete = len(data) <= max_body
        if resp.will_close or not complete or not resp.isclosed():
            self._drop(conn, slot)
        return Answer(resp.status, resp.msg, data[:max_body], complete)

    def open(self, path: str, headers: Mapping[str, str]) -> PlainResponse:
        """A GET whose body the caller reads as it streams in (its `close` or `release_conn`
        ends it). The thread's connection serves it; a second stream opened by the same thread
        meanwhile gets a connection of its own.

        Raises:
            OSError, http.client.HTTPException: as `send`.
        """
        slot: _Slot | None = self._slot()
        if slot is not None and slot.busy:
            slot = None  # a second stream on this thread meanwhile: a connection of its own
        conn = self._connection(slot) if slot is not None else self._new_connection()
        if slot is not None:
            slot.busy = True
        try:
            conn.request("GET", self._prefix + path, headers={**self._headers, **headers})
            resp = conn.getresponse()
        except BaseException:
            self._finish(conn, slot, reuse=False)
            raise
        return PlainResponse(resp, lambda reuse: self._finish(conn, slot, reuse=reuse))

    def _finish(self, conn: http.client.HTTPConnection, slot: _Slot | None, *, reuse: bool) -> None:
        if slot is not None:
            if not reuse:
                self._drop(conn, slot)
            slot.busy = False
        else:
            conn.close()

    def _new_connection(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(
            self._hostname, self._port, timeout=self._connect_timeout, blocksize=_BLOCK
        )
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    def __del__(self) -> None:
        # A client dropped without close() must not leave its sockets to the collector.
        with contextlib.suppress(Exception):
            self.close()

    def _slot(self) -> _Slot:
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = _Slot()
        return slot

    def _connection(self, slot: _Slot) -> http.client.HTTPConnection:
        conn = slot.conn
        if conn is not None and conn.sock is not None and _dropped(conn.sock):
            self._drop(conn, slot)  # the server closed it while idle: do not send into it
            conn = None
        if conn is None or conn.sock is None:
            if conn is None:
                conn = http.client.HTTPConnection(
                    self._hostname, self._port, timeout=self._connect_timeout, blocksize=_BLOCK
                )
                slot.conn = conn
                with self._lock:
                    self._all.append(conn)
            conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(self._read_timeout)
        return conn

    def _drop(self, conn: http.client.HTTPConnection, slot: _Slot) -> None:
        conn.close()
        if slot.conn is conn:
            slot.conn = None
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)


def _dropped(sock: socket.socket) -> bool:
    """True when an idle keep-alive socket is readable: the peer closed it (or sent junk)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


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
