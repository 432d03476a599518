"""Keep-alive connections kept one per thread: the bookkeeping fastget.py and plainhttp.py share.

Owns: each calling thread's slot (its kept connection, and whether an answer is being read from
it), every connection kept (closed with the pool), the check that an idle kept connection is
still open, and where a connection goes when its answer ends. A second request on a thread
whose answer is still being read gets a connection of its own, closed after its answer. An
answer may end on another thread than the one that asked: it updates the slot of the thread
that asked (captured when the connection was taken), never the ending thread's.
Must not know HTTP: callers hand in how a connection is made, checked and closed.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

C = TypeVar("C")


class Slot(Generic[C]):
    """One thread's kept connection, and whether an answer is being read from it."""

    __slots__ = ("busy", "conn")

    def __init__(self) -> None:
        self.conn: C | None = None
        self.busy = False


class PerThread(Generic[C]):
    """Connections to one server, one kept per calling thread."""

    def __init__(
        self,
        connect: Callable[[], C],
        close: Callable[[C], None],
        alive: Callable[[C], bool],
    ) -> None:
        self._connect = connect
        self._close = close
        self._alive = alive
        self._local = threading.local()
        self._all: list[C] = []
        self._lock = threading.Lock()

    def take(self) -> tuple[C, Slot[C] | None]:
        """A connection for one request and its answer, and the slot it is kept in (None: a
        connection of its own, closed when the answer ends). Hand both to `finish`.

        Raises:
            OSError: connecting failed.
        """
        slot: Slot[C] | None = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = Slot()
        if slot.busy:
            return self._connect(), None
        conn = slot.conn
        if conn is not None and not self._alive(conn):
            self._drop(conn, slot)  # the server closed it while idle: do not send into it
            conn = None
        if conn is None:
            conn = self._connect()
            slot.conn = conn
            with self._lock:
                self._all.append(conn)
        slot.busy = True
        return conn, slot

    def finish(self, conn: C, slot: Slot[C] | None, *, reuse: bool) -> None:
        """The answer on `conn` ended; `reuse`: it was read to its end and the connection may
        carry the next request. Any thread may call it."""
        if slot is None:
            self._close(conn)
            return
        if not reuse:
            self._drop(conn, slot)
        slot.busy = False

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(OSError):
                self._close(conn)

    def _drop(self, conn: C, slot: Slot[C]) -> None:
        with contextlib.suppress(OSError):
            self._close(conn)
        if slot.conn is conn:
            slot.conn = None
        with self._lock, contextlib.suppress(ValueError):
            self._all.remove(conn)


def peer_closed(sock: socket.socket | None) -> bool:
    """True when an idle keep-alive socket is gone or readable: the peer closed it (or sent
    junk)."""
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
