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
Must not import requests or api.py (it receives a `models.Remote`), and must not touch the
watched tree or the mount: hooks tell the owner.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import socket
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from .config import create_private_file, ensure_private_dir, fsync_dir
from .errors import DominoError, ServerError, Unreachable
from .models import Remote, UploadResult

log = logging.getLogger(__name__)

Op = Literal["upload", "delete"]
DeleteOutcome = Literal["deleted", "kept_local", "changed_remotely"]

OnUploaded = Callable[[str, UploadResult, Path, "Entry"], None]
OnConflict = Callable[[str, str, UploadResult, Path, "Entry"], None]
OnDeleted = Callable[[str, DeleteOutcome, "Entry"], None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    op TEXT NOT NULL,
    staged TEXT,
    base_key TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    meta TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    next_try REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_path ON entries (path);
CREATE INDEX IF NOT EXISTS entries_due ON entries (state, next_try);
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    conflict_path TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kept_local (path TEXT PRIMARY KEY, at REAL NOT NULL);
"""

_HELD = 10 * 365 * 86400.0  # "not before" for a held entry: until it is re-enqueued
DEFAULT_CONCURRENCY = 12  # uploader threads; the client's connection pool holds 32
VIEW_GRACE = 0.2  # a head listing this young also serves entries queued after it was read
_BATCH = 3  # at least this many sendable entries: list their common folder once, not per path
_COLUMNS = "id, path, op, staged, base_key, attempts, last_error, state, meta, created, sending"
_FOLLOWER_WAIT = 1.0  # an idle uploader that is not the timed one looks again at least this often
RESUME_SETTLE = 1.0  # an entry a crashed run was sending waits this long: the server may finish it


@dataclass(frozen=True, slots=True)
class Entry:
    """One queued change. `base_key` is the remote key the edit started from (None: new)."""

    id: int
    path: str
    op: Op
    staged: Path | None
    base_key: str | None
    attempts: int
    last_error: str | None
    state: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    created: float = 0.0
    sending: bool = False  # a run claimed it for sending (maybe a crashed one)


@dataclass(frozen=True, slots=True)
class ConflictRecord:
    """A change that could not be applied as is; both versions were kept."""

    path: str
    conflict_path: str | None
    kind: str
    detail: str
    at: float


def conflict_name(path: str, *, when: datetime | None = None, host: str | None = None) -> str:
    """`dir/NAME.conflict-<YYYYmmdd-HHMMSS>-<host>.EXT` for `dir/NAME.EXT`."""
    stamp = (when or datetime.now()).strftime("%Y%m%d-%H%M%S")
    host = _safe_host(host if host is not None else socket.gethostname())
    folder, slash, name = path.rpartition("/")
    dot = name.rfind(".")
    if dot > 0:
        stem, ext = name[:dot], name[dot:]
    else:
        stem, ext = name, ""
    return f"{folder}{slash}{stem}.conflict-{stamp}-{host}{ext}"


def _safe_host(host: str) -> str:
    short = host.split(".")[0] or "host"
    return re.sub(r"[^A-Za-z0-9-]", "-", short)[:40]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Outbox:
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
        self._db.executescript(_SCHEMA)
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
        # path -> {key we uploaded: the key it replaced}: a caller that enqueued with the key
        # before our own upload landed is not in conflict with itself.
        self._ours: dict[str, dict[str, str | None]] = {}
        self._remove_orphans()

    # -- queueing (any thread) -------------------------------------------------------------

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
        return self._insert(path, "upload", staged, base_key, meta, not_before, durable=durable)

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
        return self._insert(path, "delete", None, base_key, meta, not_before, durable=durable)

    def _insert(
        self,
        path: str,
        op: Op,
        staged: Path | None,
        base_key: str | None,
        meta: Mapping[str, Any] | None,
        not_before: float = 0.0,
        *,
        durable: bool = False,
    ) -> int:
        with self._cond:
            inflight_id = self._inflight.get(path)
            with self._db_lock:
                if durable:
                    self._db.execute("PRAGMA synchronous=FULL")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    older = self._db.execute(
                        "SELECT id, staged, base_key FROM entries WHERE path = ? AND id != ? "
                        "ORDER BY id",
                        (path, inflight_id if inflight_id is not None else -1),
                    ).fetchall()
                    if older:
                        base_key = older[0][2]
                        self._db.executemany(
                            "DELETE FROM entries WHERE id = ?", [(r[0],) for r in older]
                        )
                    cur = self._db.execute(
                        "INSERT INTO entries (path, op, staged, base_key, meta, created, next_try) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            path,
                            op,
                            str(staged) if staged else None,
                            base_key,
                            json.dumps(dict(meta or {})),
                            time.time(),
                            not_before,
                        ),
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                finally:
                    if durable:
                        self._db.execute("PRAGMA synchronous=NORMAL")
            entry_id = int(cur.lastrowid or 0)
            until = time.monotonic() + max(0.0, not_before - time.time())
            if self._timer[0] is None or until < self._timer[1]:
                self._cond.notify()  # due before what the timed uploader waits for
        for row in older:
            if row[1] and row[1] != str(staged):
                _unlink(Path(row[1]))
        log.debug("queued %s %s (entry %d, base %s)", op, path, entry_id, base_key)
        return entry_id

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
                _unlink(Path(staged))
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
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY id").fetchall()
        return [_entry(r) for r in rows]

    def find(self, path: str) -> Entry | None:
        """The newest entry for `path` (sent or not), or None."""
        with self._db_lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE path = ? ORDER BY id DESC LIMIT 1", (path,)
            ).fetchone()
        return _entry(row) if row else None

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

    def forget_kept_local(self, path: str) -> None:
        with self._db_lock:
            if path in self._kept:  # an upload per path is the common case: no SQL for it
                self._kept.discard(path)
                self._db.execute("DELETE FROM kept_local WHERE path = ?", (path,))

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
        # At most two entries per path (one in flight, one newer): skipping the paths in
        # flight never needs more rows than this, in any order.
        limit = 2 * len(self._inflight) + 1
        with self._db_lock:
            # In the order of the (state, next_try) index, which ends in the id: the first rows
            # come without a sort. ORDER BY id sorted every due row per claim (11 ms each with
            # 100,000 due, as after a restart or an outage: a queue drained at 90 a second).
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE state = 'pending' AND next_try <= ? "
                "ORDER BY next_try, id LIMIT ?",
                (now, limit),
            ).fetchall()
            for row in rows:
                if row[1] not in self._inflight:
                    if not row[10]:
                        self._db.execute("UPDATE entries SET sending = 1 WHERE id = ?", (row[0],))
                    return _entry(row), 0.0
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
            _unlink(entry.staged)

    def _remove_orphans(self) -> None:
        """Staged files no entry names (a crash before enqueue committed) are dropped."""
        with self._db_lock:
            known = {r[0] for r in self._db.execute("SELECT staged FROM entries") if r[0]}
        for child in self.staging_dir.iterdir():
            if str(child) not in known:
                _unlink(child)


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


def _entry(row: tuple[Any, ...]) -> Entry:
    try:
        meta = json.loads(row[8]) if row[8] else {}
    except ValueError:
        meta = {}
    return Entry(
        id=int(row[0]),
        path=str(row[1]),
        op="delete" if row[2] == "delete" else "upload",
        staged=Path(row[3]) if row[3] else None,
        base_key=row[4],
        attempts=int(row[5]),
        last_error=row[6],
        state=str(row[7]),
        meta=meta if isinstance(meta, dict) else {},
        created=float(row[9]),
        sending=bool(row[10]),
    )


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
