"""What the sync service tells the outside: status.json, the summary line, sd_notify.

Owns: the status record of one sync (CONTRACT §6) built from what its parts hold, the one-line
summary systemd shows as STATUS=, writing the status file atomically at most twice a second
(and, unchanged, every 5 s), and the datagrams sent to $NOTIFY_SOCKET. Must not change anything
it reports on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .. import status as status_mod
from ..outbox import Outbox
from .deletes import Held

log = logging.getLogger(__package__)


def sd_notify(message: str) -> bool:
    """Send one datagram to $NOTIFY_SOCKET (systemd); False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)
        return False
    return True


def summary(
    phase: str, outbox: Outbox | None, held: Held, *, poll_error: str | None, skipped: int = 0
) -> str:
    """`watching, 3 pending, 2 conflicts, server unreachable`: the STATUS= line."""
    pending = outbox.pending_count() if outbox is not None else 0
    parts = [phase, f"{pending} pending"]
    if held.paths:
        parts.append(f"{len(held.paths)} deletions held")
    conflicts = len(outbox.conflicts()) if outbox is not None else 0
    if conflicts:
        parts.append(f"{conflicts} conflicts")
    if skipped:
        parts.append(f"{skipped} symlinks skipped")
    if poll_error or (outbox and outbox.server_reachable is False):
        parts.append("server unreachable")
    return ", ".join(parts)


def status_record(
    *,
    project: str,
    root: Path,
    phase: str,
    outbox: Outbox | None,
    head: str | None,
    held: Held,
    poll_error: str | None,
    last_error: str | None,
    symlinks: Mapping[str, object],
) -> dict[str, Any]:
    """What status.json holds (CONTRACT §6)."""
    data: dict[str, Any] = {
        "kind": "sync",
        "project": project,
        "path": str(root),
        "pid": os.getpid(),
        "state": phase,
    }
    if outbox is not None:
        data.update(outbox.status())
    reachable = data.get("server_reachable")
    if poll_error:
        reachable = False
    elif reachable is None and head:
        reachable = True
    data["server_reachable"] = reachable
    data["held_deletes"] = sorted(held.paths)[:100]
    data["held_deletes_count"] = len(held.paths)
    data["held_reason"] = held.reason or None
    data["last_error"] = poll_error or data.get("last_error") or last_error
    data["head"] = head
    data.update(symlinks)  # links, and the symlinks not carried: count and the first paths
    return data


class StatusFile:
    """DIR/.dominofs/status.json, rewritten only when due."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: tuple[Any, ...] = ()
        self._last_at = 0.0

    def write(self, record: Callable[[], dict[str, Any]], *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_at < 0.5:
            return
        if not self.path.parent.is_dir():
            return  # DIR vanished: never recreate it
        data = record()
        key = tuple(sorted((k, repr(v)) for k, v in data.items()))
        if not force and key == self._last and now - self._last_at < 5.0:
            return
        self._last, self._last_at = key, now
        try:
            status_mod.write_status(self.path, data)
        except OSError as exc:
            log.warning("sync: cannot write %s: %s", self.path, exc.strerror)
