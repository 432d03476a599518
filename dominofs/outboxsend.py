"""The outbox's sending half: the uploader threads, the claim of the next due entry, the
conflict check against one listing of the head per batch, backoff, and the end of an entry.

A base of `Outbox` (outbox.py), which owns the queue's state: what this uses is declared below.
Must not import requests or api.py (it is handed a `models.Remote`).
"""

from __future__ import annotations

import hashlib
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DominoError, ServerError, Unreachable
from .models import Remote, UploadResult
from .outboxrecords import (
    COLUMNS,
    DeleteOutcome,
    Entry,
    OnConflict,
    OnDeleted,
    OnUploaded,
    conflict_name,
    entry_from_row,
    file_sha256,
    unlink_quietly,
)

log = logging.getLogger("dominofs.outbox")

VIEW_GRACE = 0.2  # a head listing this young also serves entries queued after it was read
_BATCH = 3  # at least this many sendable entries: list their common folder once, not per path
# Seconds a burst of saves holds the uploads back (see Outbox.saving): rclone's default
# write-back delay. With 2 s, a cp -r of 1,000 small files that ran past it (slow creates)
# fell back to sharing the cores and took 4.8 s instead of 1.5-1.9 s.
_YIELD_MAX = 5.0
_FOLLOWER_WAIT = 1.0  # an idle uploader that is not the timed one looks again at least this often


class Sender:
    """The uploader threads' side of the outbox (see the module docstring)."""

    remote: Remote
    base_backoff: float
    max_backoff: float
    host_name: str | None
    on_uploaded: OnUploaded | None
    on_conflict: OnConflict | None
    on_deleted: OnDeleted | None
    server_reachable: bool | None
    last_error: str | None
    completed: int
    _cond: threading.Condition
    _idle: threading.Condition
    _db_lock: threading.Lock
    _db: sqlite3.Connection
    _kept: set[str]
    _view_lock: threading.Lock
    _view: _View | None
    _sent: dict[str, tuple[str | None, float]]
    _sent_lock: threading.Lock
    _inflight: dict[str, int]
    _timer: tuple[object | None, float]
    _stopping: bool
    _failures: int
    _pause_until: float
    _saved_at: float
    _burst_at: float
    _quiet: float
    _ours: dict[str, dict[str, str | None]]

    def forget_kept_local(self, path: str) -> None:
        with self._db_lock:
            if path in self._kept:  # an upload per path is the common case: no SQL for it
                self._kept.discard(path)
                self._db.execute("DELETE FROM kept_local WHERE path = ?", (path,))

    def _worker(self) -> None:
        me = object()
        while True:
            with self._cond:
                entry = None
                while not self._stopping:
                    entry, wait = self._claim()
                    if entry is not None:
                        break
                    until = time.monotonic() + wait
                    if self._timer[0] is not None and self._timer[1] <= until + 0.001:
                        # Another idle uploader waits for the next due entry and wakes one of
                        # us when it takes it: a dozen timed waits would all wake for each.
                        self._cond.wait(_FOLLOWER_WAIT)
                        continue
                    self._timer = (me, until)
                    try:
                        self._cond.wait(wait)
                    finally:
                        if self._timer[0] is me:
                            self._timer = (None, 0.0)
                if entry is None:
                    return
                self._inflight[entry.path] = entry.id
                self._cond.notify()  # more may be sendable: another uploader looks
            try:
                self._process(entry)
            finally:
                with self._cond:
                    self._inflight.pop(entry.path, None)
                    self._idle.notify_all()

    def _claim(self) -> tuple[Entry | None, float]:
        """The sendable entry due first (the oldest among equals), or None and how long to wait.
        Needs self._cond held."""
        now = time.time()
        if self._pause_until > now:
            return None, min(1.0, self._pause_until - now)
        mono = time.monotonic()
        calm, burst = mono - self._saved_at, mono - self._burst_at
        if calm < self._quiet and burst < _YIELD_MAX:
            return None, max(0.001, min(self._quiet - calm, _YIELD_MAX - burst))
        # At most two entries per path (one in flight, one newer): skipping the paths in
        # flight never needs more rows than this, in any order.
        limit = 2 * len(self._inflight) + 1
        with self._db_lock:
            # In the order of the (state, next_try) index, which ends in the id: the first rows
            # come without a sort. ORDER BY id sorted every due row per claim (11 ms each with
            # 100,000 due, as after a restart or an outage: a queue drained at 90 a second).
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM entries WHERE state = 'pending' AND next_try <= ? "
                "ORDER BY next_try, id LIMIT ?",
                (now, limit),
            ).fetchall()
            for row in rows:
                if row[1] not in self._inflight:
                    if not row[10]:
                        self._db.execute("UPDATE entries SET sending = 1 WHERE id = ?", (row[0],))
                    return entry_from_row(row), 0.0
            (soonest,) = self._db.execute(
                "SELECT MIN(next_try) FROM entries WHERE state = 'pending' AND next_try > ?",
                (now,),
            ).fetchone()
        return None, 1.0 if soonest is None else max(0.001, min(1.0, soonest - now))

    def _process(self, entry: Entry) -> None:
        try:
            if entry.op == "upload":
                self._upload(entry)
            else:
                self._delete(entry)
        except (Unreachable, ServerError) as exc:
            self._transient(entry, exc)
        except DominoError as exc:
            self._fail(entry, str(exc))
        except FileNotFoundError as exc:
            self._fail(entry, f"staged bytes missing: {exc.filename}")
        except Exception as exc:  # a bug must not kill the uploader: report, keep the bytes
            log.exception("outbox: unexpected failure sending %s", entry.path)
            self._fail(entry, f"internal error: {type(exc).__name__}: {exc}")
        else:
            with self._cond:
                self.server_reachable = True
                self._failures = 0

    def _transient(self, entry: Entry, exc: DominoError) -> None:
        with self._cond:
            self._failures += 1
            cap = min(self.max_backoff, self.base_backoff * 2 ** min(self._failures, 20))
            delay = random.uniform(cap / 2, cap)  # jittered, so clients do not return in step
            self._pause_until = time.time() + delay
            self.server_reachable = not isinstance(exc, Unreachable)
            self.last_error = str(exc)
            with self._db_lock:
                self._db.execute(
                    "UPDATE entries SET attempts = attempts + 1, last_error = ?, next_try = ? "
                    "WHERE id = ?",
                    (str(exc), time.time() + delay, entry.id),
                )
        log.warning("%s; %s stays queued, retry in %.1fs", exc, entry.path, delay)

    def _fail(self, entry: Entry, message: str) -> None:
        with self._cond:
            self.last_error = message
            with self._db_lock:
                self._db.execute(
                    "UPDATE entries SET attempts = attempts + 1, last_error = ?, state = 'failed' "
                    "WHERE id = ?",
                    (message, entry.id),
                )
        log.error("could not send %s %s: %s (kept in the queue)", entry.op, entry.path, message)

    def _remote_key(self, entry: Entry) -> str | None:
        """The server's key of the entry's path (None: not there), from a fresh enough view.

        A view serves the entries queued before it was read (or at most VIEW_GRACE after):
        a server change made more than VIEW_GRACE before an edit was queued is always seen.
        With several entries sendable, one listing of their common folder serves them all.
        """
        with self._view_lock:
            view = self._view
            if entry.sending:
                # Maybe sent just before a crash (or a failed attempt that the server
                # finished anyway): read the path itself, as late as possible.
                view = self._read_view(entry, alone=True)
            elif view is None or not view.serves(entry):
                view = self._read_view(entry)
                if view.prefix != entry.path:
                    self._view = view  # a one-path view is not worth keeping
            with self._sent_lock:
                sent = self._sent.get(entry.path)
            if sent is not None and sent[1] >= view.started:
                return sent[0]  # ours landed after the listing was read
            return view.files.get(entry.path)

    def _read_view(self, entry: Entry, *, alone: bool = False) -> _View:
        now = time.time()
        due: list[str] = []
        if not alone:
            with self._db_lock:
                due = [
                    r[0]
                    for r in self._db.execute(
                        "SELECT path FROM entries WHERE state = 'pending' AND next_try <= ? "
                        "ORDER BY next_try, id LIMIT 512",
                        (now,),
                    )
                ]
        if len(due) < _BATCH:
            prefix = entry.path
        else:
            folders = {p.rpartition("/")[0] for p in due}
            folders.add(entry.path.rpartition("/")[0])
            prefix = _common_folder(folders)
        started = time.time()
        commits = self.remote.commits()
        files: dict[str, str] = {}
        if commits:
            files = {f.path: f.key for f in self.remote.list_files(commits[0], prefix)}
        with self._sent_lock:
            horizon = time.time() - 600.0
            self._sent = {p: v for p, v in self._sent.items() if v[1] >= horizon}
        return _View(started, prefix, files)

    def _note_sent(self, path: str, key: str | None) -> None:
        with self._sent_lock:
            self._sent[path] = (key, time.time())

    def _same_content(self, key: str, staged: Path) -> bool:
        h = hashlib.sha256()
        for chunk in self.remote.iter_blob(key):
            h.update(chunk)
        return h.hexdigest() == file_sha256(staged)

    def _upload(self, entry: Entry) -> None:
        assert entry.staged is not None
        staged = entry.staged
        size = staged.stat().st_size
        remote_key = self._remote_key(entry)
        if remote_key is not None and not self._based_on(entry, remote_key):
            if self._same_content(remote_key, staged):
                # Ours already (a resend after a crash) or an identical edit: nothing to send.
                result = UploadResult(path=entry.path, size=size, mtime_ms=0, key=remote_key)
                self._finish_upload(entry, result)
                return
            cpath = conflict_name(entry.path, host=self.host_name)
            with open(staged, "rb") as fh:
                result = self.remote.upload(cpath, fh, size=size)
            self._note_sent(cpath, result.key)
            detail = (
                f"{entry.path} changed on the server since this edit started; "
                f"ours was uploaded as {cpath}"
            )
            log.warning("conflict: %s", detail)
            self._record_conflict(entry.path, cpath, "both_changed", detail)
            if self.on_conflict is not None:
                self._hook(self.on_conflict, entry.path, cpath, result, staged, entry)
            self._complete(entry, rebase_key=None)
            return
        with open(staged, "rb") as fh:
            result = self.remote.upload(entry.path, fh, size=size)
        log.info("uploaded %s (%d bytes)", entry.path, size)
        self._finish_upload(entry, result)

    def _based_on(self, entry: Entry, remote_key: str) -> bool:
        """True if `remote_key` is the entry's base, or our own uploads descending from it."""
        chain = self._ours.get(entry.path, {})
        key: str | None = remote_key
        for _ in range(len(chain) + 1):
            if key == entry.base_key:
                return True
            if key not in chain:
                return False
            key = chain[key]
        return False

    def _finish_upload(self, entry: Entry, result: UploadResult) -> None:
        assert entry.staged is not None
        self._note_sent(entry.path, result.key)
        with self._cond:
            chain = self._ours.setdefault(entry.path, {})
            if result.key != entry.base_key:
                chain[result.key] = entry.base_key
            while len(chain) > 16:
                del chain[next(iter(chain))]
        if self.on_uploaded is not None:
            self._hook(self.on_uploaded, entry.path, result, entry.staged, entry)
        self.forget_kept_local(entry.path)
        self._complete(entry, rebase_key=result.key)

    def _delete(self, entry: Entry) -> None:
        remote_key = self._remote_key(entry)
        outcome: DeleteOutcome
        if remote_key is None:
            outcome = "deleted"  # already gone: what was asked
        elif entry.base_key is not None and not self._based_on(entry, remote_key):
            outcome = "changed_remotely"
            detail = (
                f"{entry.path} was deleted here but changed on the server; "
                "kept the server's version"
            )
            log.warning("conflict: %s", detail)
            self._record_conflict(entry.path, None, "delete_vs_change", detail)
        elif self.remote.delete(entry.path):
            outcome = "deleted"
            self._note_sent(entry.path, None)
            log.info("deleted %s on the server", entry.path)
        else:
            outcome = "kept_local"
            log.warning("%s: the server has no DELETE; the deletion is kept local", entry.path)
            with self._db_lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO kept_local (path, at) VALUES (?, ?)",
                    (entry.path, time.time()),
                )
                self._kept.add(entry.path)
        if self.on_deleted is not None:
            self._hook(self.on_deleted, entry.path, outcome, entry)
        self._complete(entry, rebase_key=None)

    def _hook(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:  # the owner's bug must not lose the queue entry's outcome
            log.exception("outbox hook %s failed for %s", getattr(hook, "__name__", hook), args[0])

    def _record_conflict(self, path: str, cpath: str | None, kind: str, detail: str) -> None:
        with self._db_lock:
            self._db.execute(
                "INSERT INTO conflicts (path, conflict_path, kind, detail, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (path, cpath, kind, detail, time.time()),
            )

    def _complete(self, entry: Entry, *, rebase_key: str | None) -> None:
        """Remove a sent entry; later edits of the path are now based on our upload."""
        with self._cond:
            with self._db_lock:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM entries WHERE id = ?", (entry.id,))
                if rebase_key is not None:
                    self._db.execute(
                        "UPDATE entries SET base_key = ? WHERE path = ? AND id > ?",
                        (rebase_key, entry.path, entry.id),
                    )
                self._db.execute("COMMIT")
            self.completed += 1
        if entry.staged is not None:
            unlink_quietly(entry.staged)


@dataclass(frozen=True, slots=True)
class _View:
    """The server's keys under `prefix` (a folder, a file, or "" for all), read at `started`."""

    started: float
    prefix: str
    files: dict[str, str]

    def serves(self, entry: Entry) -> bool:
        p = self.prefix
        if p and entry.path != p and not entry.path.startswith(p + "/"):
            return False
        return entry.created <= self.started or time.time() - self.started <= VIEW_GRACE


def _common_folder(folders: set[str]) -> str:
    """The deepest folder holding all of `folders` ("" for the root)."""
    parts = [f.split("/") if f else [] for f in folders]
    common: list[str] = []
    for names in zip(*parts, strict=False):
        if any(n != names[0] for n in names):
            break
        common.append(names[0])
    return "/".join(common)
