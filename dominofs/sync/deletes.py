"""Deletions made in DIR: when they are sent, and the mass-delete guard that holds them.

Owns: the deletion candidates (paths gone from DIR that the state database still has), judging a
burst of them as one once it pauses, the guard that holds them (DIR vanished, emptied, unlisted
or on another device; more than max(50, 10 %) of the files at once) until the user confirms, and
the marker by which `dominofs sync --confirm-deletes` confirms to the running service. Must not
touch files in DIR or talk to the server: a sent deletion is an outbox entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..ignore import STATE_DIR_NAME
from ..outbox import Outbox
from ..state import StateDB
from .folder import Folder
from .watcher import Debounce

log = logging.getLogger(__package__)

CONFIRM_MARKER = "confirm-deletes"
DELETE_GRACE = 2.0
DELETE_MAX_WAIT = 30.0  # deletions that never pause are judged together after this long


@dataclass
class Held:
    """Deletions the guard holds, and why."""

    paths: set[str] = field(default_factory=set)
    reason: str = ""


def request_confirm_deletes(root: Path) -> int | None:
    """Ask a sync already running on `root` to release its held deletes.

    Returns that service's pid, or None when no sync runs on `root` (the caller then runs
    with --confirm-deletes itself).
    """
    state_dir = root / STATE_DIR_NAME
    lock_path = state_dir / "lock"
    if not lock_path.exists():
        return None
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            text = fh.read().strip()
            (state_dir / CONFIRM_MARKER).write_text(str(time.time()))
            return int(text) if text.isdigit() else -1
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


class DeleteGuard:
    """The deletions of one folder on their way to the outbox. Used from the service loop."""

    def __init__(
        self,
        folder: Folder,
        state: StateDB,
        outbox: Outbox,
        debounce: Debounce,
        *,
        project: str,
        root_dev: int | None,
        present: Callable[[str], bool],
        confirmed: bool = False,
    ) -> None:
        self.folder = folder
        self.state = state
        self.outbox = outbox
        self.debounce = debounce
        self.project = project
        self.root_dev = root_dev
        self.present = present  # something in DIR still stands for a path: not a deletion
        self.confirmed = confirmed  # --confirm-deletes: covers what is held at the start, once
        self._candidates: dict[str, float] = {}
        self.held = Held()

    def candidate(self, path: str) -> None:
        """`path` is gone from DIR: a deletion once the burst it belongs to settles."""
        self._candidates.setdefault(path, time.monotonic())

    def drop(self, path: str) -> None:
        """`path` is no deletion candidate (it was handled another way)."""
        self._candidates.pop(path, None)

    def forget(self, path: str) -> None:
        """`path` is back or replaced: neither a candidate nor held."""
        self._candidates.pop(path, None)
        self.held.paths.discard(path)

    def flush(self, *, grace: float = DELETE_GRACE) -> None:
        """Queue the settled deletions the guard lets through; hold the others."""
        root = self.folder.root
        now = time.monotonic()
        # A burst of deletions (rm -rf) is judged as one: nothing is ready until none has come
        # for `grace` s. Judged piece by piece as each got old enough, a big deletion that took
        # longer than a flush interval passed the guard in slices each under its limit.
        times = self._candidates.values()
        newest, oldest = max(times, default=0.0), min(times, default=now)
        settled = now - newest >= grace or now - oldest >= DELETE_MAX_WAIT
        ready = set(self._candidates) if settled else set()
        ready |= self.held.paths
        if not ready:
            return
        with self.folder.lock:
            back = {p for p in ready if self.present(p)}
            for p in back:
                self.forget(p)
                self.debounce.mark(p, delay=0.0)
            ready -= back
            ready = {p for p in ready if self.state.get(p) is not None}
            if not ready:
                self.held = Held()
                return
            if not root.is_dir():
                self.held = Held(ready, f"{root} vanished")
                return  # never delete against a folder that is not there, confirmed or not
            confirmed = self.confirmed or self._take_confirmation()
            total = self.state.count()
            limit = max(50, total // 10)
            problem = self._root_problem()
            if problem is None and len(ready) > limit:
                problem = f"{len(ready)} of {total} files would be deleted (limit {limit})"
            if problem and not confirmed:
                if self.held.reason != problem or self.held.paths != ready:
                    log.warning(
                        "sync: holding %d deletions: %s; run dominofs sync %s %s "
                        "--confirm-deletes to send them",
                        len(ready), problem, self.project, root,
                    )  # fmt: skip
                self.held = Held(ready, problem)
                for p in ready:
                    self._candidates.pop(p, None)
                return
            for p in sorted(ready):
                row = self.state.get(p)
                self.outbox.enqueue_delete(p, base_key=row.key if row else None)
                self._candidates.pop(p, None)
            self.held = Held()
            if problem:
                self.confirmed = False  # a confirmation covers what was held, once

    def _root_problem(self) -> str | None:
        root = self.folder.root
        try:
            st = os.stat(root)
        except OSError:
            return f"{root} vanished"
        if self.root_dev is not None and st.st_dev != self.root_dev:
            return f"{root} is on another device than before (unmounted disk?)"
        try:
            names = [n for n in os.listdir(root) if n != STATE_DIR_NAME]
        except OSError:
            return f"{root} cannot be listed"
        if not names:
            return f"{root} is empty"
        return None

    def _take_confirmation(self) -> bool:
        marker = self.folder.state_dir / CONFIRM_MARKER
        if marker.exists():
            with contextlib.suppress(OSError):
                marker.unlink()
            log.info("sync: deletions confirmed by the user")
            return True
        return False
