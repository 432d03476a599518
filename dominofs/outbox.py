"""The durable upload queue shared by the mount and the sync service.

Owns: a SQLite queue (WAL, synchronous=NORMAL; FULL for a durable enqueue) of entries (path, op
upload|delete, staged file, base_key, attempts, last_error, state) plus the staged bytes in its
own directory; the uploader threads that send entries with bounded concurrency; capped jittered
backoff while the server is down; the conflict check before an overwrite (ours goes to
`NAME.conflict-<stamp>-<host>.EXT`, never a silent overwrite); deletions the server cannot do
("kept local"); the record of conflicts. An entry leaves the queue only after the server
answered 2xx. `enqueue_*` returns once the entry survives a crash of the process (one WAL
transaction); with durable=True (fsync(2)) it also survives a power loss (staged bytes, their
directory and the queue are fsynced). The conflict check reads one listing of the head per batch
of sendable entries (a view serving every entry queued before it was read), not one per entry.
Uploads wait while a burst of saves goes on (at most 5 s: `saving`). The sending half is
outboxsend.py, the records outboxrecords.py; this module is the queue and its public face.
Must not import requests or api.py (it receives a `models.Remote`), and must not touch the
watched tree or the mount: hooks tell the owner.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import create_private_file, ensure_private_dir, fsync_dir
from .models import Remote
from .outboxrecords import (
    COLUMNS,
    SCHEMA,
    ConflictRecord,
    DeleteOutcome,
    Entry,
    OnConflict,
    OnDeleted,
    OnUploaded,
    Op,
    conflict_name,
    entry_from_row,
    file_sha256,
    unlink_quietly,
)
from .outboxsend import Sender, _View

__all__ = [
    "ConflictRecord",
    "DeleteOutcome",
    "Entry",
    "Outbox",
    "conflict_name",
    "file_sha256",
]

log = logging.getLogger(__name__)

_HELD = 10 * 365 * 86400.0  # "not before" for a held entry: until it is re-enqueued
DEFAULT_CONCURRENCY = 12  # uploader threads; the client's connection pool holds 32
RESUME_SETTLE = 1.0  # an entry a crashed run was sending waits this long: the server may finish it


@dataclass(frozen=True, slots=True)
class StagedUpload:
    """An upload for `Outbox.enqueue_staged`: `staged` is in the staging dir, mode 0o600."""

    path: str
    staged: Path
    base_key: str | None
    not_before: float = 0.0


@dataclass(frozen=True, slots=True)
class _New:
    path: str
    op: Op
    staged: Path | None
    base_key: str | None
    meta: Mapping[str, Any] | None
    not_before: float


class Outbox(Sender):
    """A durable queue of uploads and deletes for one project, with its uploader threads.

    Hooks run on an uploader thread, before the entry leaves the queue (so a crash inside or
    just after a hook resends the entry, which the conflict check then recognises as ours).
    """

    def __init__(
        self,
        directory: Path,
        remote: Remote,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        base_backoff: float = 0.5,
        max_backoff: float = 30.0,
        host_name: str | None = None,
        on_uploaded: OnUploaded | None = None,
        on_conflict: OnConflict | None = None,
        on_deleted: OnDeleted | None = None,
    ) -> None:
        self.directory = ensure_private_dir(directory)  # 0700: the queue and the user's bytes
        self.staging_dir = ensure_private_dir(directory / "staged")
        self.remote = remote
        self.concurrency = max(1, concurrency)
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.host_name = host_name
        self.on_uploaded = on_uploaded
        self.on_conflict = on_conflict
        self.on_deleted = on_deleted
        self.server_reachable: bool | None = None
        self.last_error: str | None = None
        self.completed = 0  # entries finished since start: lets owners detect their own commits
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # uploaders wait on it for work
        # wait_idle callers wait on their own condition (same lock): a wake for work goes to
        # an uploader, a wake for "something finished" to them.
        self._idle = threading.Condition(lock)
        self._db_lock = threading.Lock()
        self._db = sqlite3.connect(
            str(create_private_file(directory / "outbox.db")),
            check_same_thread=False,
            isolation_level=None,
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives a crash of the process; a durable enqueue switches to FULL
        # for its own transaction (the WAL fsync then covers the earlier commits too).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(entries)")}
        if "sending" not in columns:  # a queue from an older version
            self._db.execute("ALTER TABLE entries ADD COLUMN sending INTEGER NOT NULL DEFAULT 0")
        self._kept = {r[0] for r in self._db.execute("SELECT path FROM kept_local")}
        self._view_lock = threading.Lock()  # one head listing at a time; the others reuse it
        self._view: _View | None = None
        # path -> (key or None for deleted, time.time()) of what we sent, laid over a listing
        # read before it landed.
        self._sent: dict[str, tuple[str | None, float]] = {}
        self._sent_lock = threading.Lock()  # not _cond: every uploader notes every send
        self._inflight: dict[str, int] = {}  # path -> entry id being sent
        # (uploader, monotonic time) of the idle uploader waiting for the soonest due entry
        self._timer: tuple[object | None, float] = (None, 0.0)
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._failures = 0
        self._pause_until = 0.0
        self._saved_at = self._burst_at = self._quiet = 0.0  # see saving()
        # path -> {key we uploaded: the key it replaced}: a caller that enqueued with the key
        # before our own upload landed is not in conflict with itself.
        self._ours: dict[str, dict[str, str | None]] = {}
        self._remove_orphans()

    # -- queueing (any thread) -------------------------------------------------------------

    def saving(self, quiet: float) -> None:
        """A save was just queued: nothing is sent until saving pauses for `quiet` seconds, for
        at most _YIELD_MAX seconds per burst. A burst of saves (cp -r, an unpacked archive, a
        job writing its outputs) gets the CPU first: on two cores the uploads' own work (and on
        loopback the server's) made a cp -r of 1,000 small files 3x slower."""
        now = time.monotonic()
        if now - self._saved_at > self._quiet:
            self._burst_at = now
        self._saved_at, self._quiet = now, quiet

    def staging_path(self) -> Path:
        """A fresh path in the staging directory for the caller to write, then enqueue."""
        return self.staging_dir / f"s-{uuid.uuid4().hex}"

    def enqueue_upload(
        self,
        path: str,
        staged: Path,
        *,
        base_key: str | None,
        meta: Mapping[str, Any] | None = None,
        not_before: float = 0.0,
        durable: bool = False,
    ) -> int:
        """Queue an upload of `staged` (moved into the staging dir) as `path`.

        On return the entry survives a crash of the process; with `durable` (what fsync(2)
        promises) the staged bytes and the entry are also on disk.
        A not-yet-sent entry for the same path is replaced (its base key is kept). The entry is
        not sent before the time.time() value `not_before` (a restart sends it at once).
        """
        if staged.parent != self.staging_dir:
            target = self.staging_path()
            os.replace(staged, target)
            staged = target
        fd = os.open(staged, os.O_RDONLY)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                os.fchmod(fd, mode & 0o700)  # a private copy of the user's bytes
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if durable:
            fsync_dir(self.staging_dir)
        new = _New(path, "upload", staged, base_key, meta, not_before)
        return self._insert([new], durable=durable)[0]

    def enqueue_staged(self, uploads: list[StagedUpload]) -> list[int]:
        """Queue uploads whose staged files the caller made in the staging dir (staging_path)
        with mode 0o600, in one transaction: a burst of saves costs one commit, not one each.
        On return the entries survive a crash of the process (not a power loss)."""
        news = [_New(u.path, "upload", u.staged, u.base_key, None, u.not_before) for u in uploads]
        return self._insert(news) if news else []

    def enqueue_delete(
        self,
        path: str,
        *,
        base_key: str | None,
        meta: Mapping[str, Any] | None = None,
        not_before: float = 0.0,
        durable: bool = False,
    ) -> int:
        """Queue a deletion of `path` (see enqueue_upload). Replaces a not-yet-sent entry."""
        new = _New(path, "delete", None, base_key, meta, not_before)
        return self._insert([new], durable=durable)[0]

    def _insert(self, news: list[_New], *, durable: bool = False) -> list[int]:
        """Write `news` as entries in one transaction; each replaces a not-yet-sent entry for
        its path (keeping that one's base key)."""
        ids: list[int] = []
        replaced: list[tuple[str, Path | None]] = []  # (staged file of an older entry, by)
        with self._cond:
            with self._db_lock:
                if durable:
                    self._db.execute("PRAGMA synchronous=FULL")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    for new in news:
                        inflight_id = self._inflight.get(new.path)
                        older = self._db.execute(
                            "SELECT id, staged, base_key FROM entries WHERE path = ? AND id != ? "
                            "ORDER BY id",
                            (new.path, inflight_id if inflight_id is not None else -1),
                        ).fetchall()
                        base_key = new.base_key
                        if older:
                            base_key = older[0][2]
                            self._db.executemany(
                                "DELETE FROM entries WHERE id = ?", [(r[0],) for r in older]
                            )
                            replaced += [(r[1], new.staged) for r in older if r[1]]
                        cur = self._db.execute(
                            "INSERT INTO entries "
                            "(path, op, staged, base_key, meta, created, next_try) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (
                                new.path,
                                new.op,
                                str(new.staged) if new.staged else None,
                                base_key,
                                json.dumps(dict(new.meta or {})),
                                time.time(),
                                new.not_before,
                            ),
                        )
                        ids.append(int(cur.lastrowid or 0))
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                finally:
                    if durable:
                        self._db.execute("PRAGMA synchronous=NORMAL")
            soonest = min(n.not_before for n in news)
            until = time.monotonic() + max(0.0, soonest - time.time())
            if self._timer[0] is None or until < self._timer[1]:
                self._cond.notify()  # due before what the timed uploader waits for
        for old, by in replaced:
            if old != str(by):
                unlink_quietly(Path(old))
        for new, entry_id in zip(news, ids, strict=True):
            log.debug("queued %s %s (entry %d)", new.op, new.path, entry_id)
        return ids

    def cancel(self, path: str) -> bool:
        """Drop a not-yet-sent entry for `path` (e.g. a new file deleted before upload)."""
        with self._cond:
            inflight_id = self._inflight.get(path, -1)
            with self._db_lock:
                rows = self._db.execute(
                    "SELECT id, staged FROM entries WHERE path = ? AND id != ?",
                    (path, inflight_id),
                ).fetchall()
                self._db.executemany("DELETE FROM entries WHERE id = ?", [(r[0],) for r in rows])
            self._idle.notify_all()  # nothing became sendable
        for _, staged in rows:
            if staged:
                unlink_quietly(Path(staged))
        return bool(rows)

    def in_flight(self, path: str) -> bool:
        """True while an entry for `path` is being sent."""
        with self._cond:
            return path in self._inflight

    def hold(self, path: str) -> bool:
        """Keep the not-yet-sent entries of `path` from being sent until they are re-enqueued.

        Returns False (and holds nothing) when an entry for `path` is being sent right now: the
        caller must then not modify its staged file. A restart sends held entries.
        """
        with self._cond:
            if path in self._inflight:
                return False
            with self._db_lock:
                self._db.execute(
                    "UPDATE entries SET next_try = ? WHERE path = ? AND state = 'pending'",
                    (time.time() + _HELD, path),
                )
            return True

    def withdraw(self, path: str) -> bool:
        """Drop the not-yet-sent entries of `path`, leaving their staged files to the caller.

        Returns True when nothing for `path` is being sent (False: one is in flight).
        """
        with self._cond:
            inflight_id = self._inflight.get(path, -1)
            with self._db_lock:
                self._db.execute(
                    "DELETE FROM entries WHERE path = ? AND id != ?", (path, inflight_id)
                )
            self._idle.notify_all()  # nothing became sendable
            return inflight_id == -1

    # -- what is queued --------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        with self._db_lock:
            rows = self._db.execute(f"SELECT {COLUMNS} FROM entries ORDER BY id").fetchall()
        return [entry_from_row(r) for r in rows]

    def find(self, path: str) -> Entry | None:
        """The newest entry for `path` (sent or not), or None."""
        with self._db_lock:
            row = self._db.execute(
                f"SELECT {COLUMNS} FROM entries WHERE path = ? ORDER BY id DESC LIMIT 1", (path,)
            ).fetchone()
        return entry_from_row(row) if row else None

    def pending_count(self) -> int:
        """Entries still to send (failed ones excluded: they wait for a new edit or a retry)."""
        with self._db_lock:
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM entries WHERE state = 'pending'"
            ).fetchone()
        return int(n)

    def failed(self) -> list[Entry]:
        return [e for e in self.entries() if e.state == "failed"]

    def conflicts(self) -> list[ConflictRecord]:
        with self._db_lock:
            rows = self._db.execute(
                "SELECT path, conflict_path, kind, detail, at FROM conflicts ORDER BY id"
            ).fetchall()
        return [ConflictRecord(*r) for r in rows]

    def kept_local(self) -> list[str]:
        """Paths deleted locally that the server could not delete (no DELETE)."""
        with self._db_lock:
            return [r[0] for r in self._db.execute("SELECT path FROM kept_local ORDER BY path")]

    def status(self, *, limit: int = 100) -> dict[str, Any]:
        """A JSON-ready summary for status files: counts, and at most `limit` rows of each list.

        Written every second by a mount: its cost must not grow with the queue (100,000 queued
        files took 1 s per summary when every row was read).
        """
        with self._db_lock:
            (pending_count,) = self._db.execute(
                "SELECT COUNT(*) FROM entries WHERE state = 'pending'"
            ).fetchone()
            pending = self._db.execute(  # next to be sent first: the due index's own order
                "SELECT path, op FROM entries WHERE state = 'pending' ORDER BY next_try, id "
                "LIMIT ?",
                (limit,),
            ).fetchall()
            failed = self._db.execute(
                "SELECT path, op, last_error, attempts FROM entries WHERE state = 'failed' "
                "ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
            conflicts = self._db.execute(
                "SELECT path, conflict_path, kind, detail, at FROM conflicts "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            kept = self._db.execute(
                "SELECT path FROM kept_local ORDER BY path LIMIT ?", (limit,)
            ).fetchall()
        return {
            "pending_uploads": int(pending_count),
            "pending": [{"path": p, "op": op} for p, op in pending],
            "failed": [
                {"path": p, "op": op, "error": err, "attempts": n} for p, op, err, n in failed
            ],
            "conflicts": [
                {"path": p, "conflict_path": cp, "kind": kind, "detail": detail, "at": at}
                for p, cp, kind, detail, at in reversed(conflicts)
            ],
            "deletions_kept_local": [r[0] for r in kept],
            "server_reachable": self.server_reachable,
            "last_error": self.last_error,
        }

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the uploader threads; queued entries (from a previous run too) are resumed."""
        with self._cond:
            if self._threads:
                return
            self._stopping = False
            with self._db_lock:
                # A restart retries what failed before: the cause may have been fixed.
                self._db.execute("UPDATE entries SET state = 'pending', next_try = 0")
                # Sent by a run that died: the server may still commit it; look a bit later.
                self._db.execute(
                    "UPDATE entries SET next_try = ? WHERE sending = 1",
                    (time.time() + RESUME_SETTLE,),
                )
            for i in range(self.concurrency):
                t = threading.Thread(target=self._worker, name=f"outbox-{i}", daemon=True)
                self._threads.append(t)
                t.start()

    def stop(self, timeout: float | None = None) -> None:
        """Let entries in flight finish, stop the threads and join them. The queue is kept."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    def close(self) -> None:
        """Stop (if running) and close the database."""
        self.stop()
        with self._db_lock:
            self._db.close()

    def kick(self) -> None:
        """The server is back (someone reached it): retry now instead of after the backoff."""
        with self._cond:
            self._pause_until = 0.0
            self._failures = 0
            with self._db_lock:
                self._db.execute("UPDATE entries SET next_try = 0 WHERE state = 'pending'")
            self._cond.notify_all()

    def retry_failed(self) -> None:
        with self._cond:
            with self._db_lock:
                self._db.execute(
                    "UPDATE entries SET state = 'pending', next_try = 0 WHERE state = 'failed'"
                )
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending or in flight; True if so before `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._inflight or self.pending_count():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(0.2 if left is None else min(0.2, left))
        return True

    # -- the uploader threads ------------------------------------------------------------------

    def _remove_orphans(self) -> None:
        """Staged files no entry names (a crash before enqueue committed) are dropped."""
        with self._db_lock:
            known = {r[0] for r in self._db.execute("SELECT staged FROM entries") if r[0]}
        for child in self.staging_dir.iterdir():
            if str(child) not in known:
                unlink_quietly(child)
