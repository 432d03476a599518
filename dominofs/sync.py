"""The sync service: a plain local folder kept in step with a project (CONTRACT §5).

Owns: the watchdog observer on DIR (events are hints: each only marks a path dirty), the per-path
debounce with a ceiling, the stat-stable staging copy, the startup and overflow reconcile (stat
only; hash only on a stat change; upload only on a content change), the mass-delete guard, the
remote poller that downloads remote changes atomically (temp file + rename, never outside DIR),
local handling of conflicts (our copy renamed to the conflict name), the status file, the
registry entry and sd_notify. State and queue live in DIR/.dominofs/ (never uploaded).
Must not import requests or api.py: it receives a `models.Remote`. Threads: the observer's and
the outbox's, both started and joined here; the service loop runs in the caller's thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from . import status as status_mod
from .config import ensure_private_dir
from .errors import DominoError, NotFound, Unreachable, UsageError
from .ignore import IGNORE_FILE, STATE_DIR_NAME, IgnoreRules
from .models import Remote, RemoteFile, UploadResult, clean_relpath
from .outbox import DeleteOutcome, Entry, Outbox
from .state import FileState, StateDB

log = logging.getLogger(__name__)

CONFIRM_MARKER = "confirm-deletes"
DELETE_GRACE = 2.0
DELETE_MAX_WAIT = 30.0  # deletions that never pause are judged together after this long
RESCAN_INTERVAL = 600.0
_SHA1_KEY = re.compile(r"^[0-9a-f]{40}$")  # the local server's keys: sha1 of the content
_HASH_THREADS = 4  # hashlib releases the GIL: hash local files in parallel
_ADOPT_BATCH = 512
_WATCHDOG_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")


class SyncError(DominoError):
    """The folder is not in step and needs attention (held deletes, failed uploads)."""


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


def safe_target(root: Path, rel: str) -> Path | None:
    """`root/rel` if writing there cannot leave root, else None (logged by the caller).

    Rejects what `clean_relpath` rejects (.., absolute, NUL, empty), and existing parents that
    are symlinks or not directories (a link inside DIR must not lead a download outside).
    """
    clean = clean_relpath(rel)
    if clean is None or clean != rel.strip("/") or rel.startswith("/"):
        return None
    cur = root
    parts = clean.split("/")
    for part in parts[:-1]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            break
        if not stat.S_ISDIR(st.st_mode):
            return None
    target = root / clean
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISLNK(os.lstat(target).st_mode):
            return None
    return target


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


@dataclass
class _Dirty:
    """Per-path debounce: when it may be processed, and when it was first seen dirty."""

    due: float
    first: float


@dataclass
class _Held:
    paths: set[str] = field(default_factory=set)
    reason: str = ""


class _Handler(FileSystemEventHandler):
    """Turns watchdog events into dirty paths. Never raises (that would kill the observer)."""

    def __init__(self, service: SyncService) -> None:
        self.service = service

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            if event.event_type in ("opened", "closed_no_write"):
                return
            for raw in (event.src_path, getattr(event, "dest_path", "")):
                if not raw:
                    continue
                path = raw.decode() if isinstance(raw, bytes) else str(raw)
                rel = self.service.relative(path)
                if rel is None:
                    continue
                if event.is_directory:
                    self.service.mark_tree(rel)
                else:
                    self.service.mark(rel)
        except Exception:
            log.exception("sync: could not handle %r", event)
            self.service.request_rescan("event handler failure")


class _OverflowWatch(logging.Handler):
    """watchdog only logs an inotify overflow; this turns that log line into a full rescan."""

    def __init__(self, service: SyncService) -> None:
        super().__init__(logging.WARNING)
        self.service = service

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            if "overflow" in record.getMessage().lower():
                self.service.request_rescan("inotify queue overflowed")


class SyncService:
    """Keeps `root` and one project in step. Create, then `run()` or `run_once()`."""

    def __init__(
        self,
        root: Path,
        remote: Remote,
        *,
        upload_delay: float = 1.0,
        poll_interval: float = 15.0,
        confirm_deletes: bool = False,
        pull: bool = False,
        max_backoff: float = 10.0,
        concurrency: int = 4,
        registry_dir: Path | None = None,
        use_polling_observer: bool = False,
    ) -> None:
        self.root = root.absolute()
        self.remote = remote
        self.upload_delay = max(0.0, upload_delay)
        self.ceiling = max(10.0, 10 * self.upload_delay)
        self.poll_interval = max(0.5, poll_interval)
        self.confirm_deletes = confirm_deletes
        self.pull = pull
        self.registry_dir = registry_dir
        self.use_polling_observer = use_polling_observer
        self.project = str(remote.project)
        self.state_dir = self.root / STATE_DIR_NAME
        self.status_file = self.state_dir / "status.json"
        self.rules = IgnoreRules.for_root(self.root)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._fs_lock = threading.RLock()  # local file changes: the loop vs. outbox hooks
        self._dirty: dict[str, _Dirty] = {}
        self._rescan_subtrees: set[str] = set()
        self._rescan_reason: str | None = None
        self._delete_candidates: dict[str, float] = {}
        self._held = _Held()
        self._force_poll = False
        self._poll_error: str | None = None
        self._download_failed = False  # a poll whose downloads failed is repeated next time
        self._last_error: str | None = None
        self._phase = "starting"
        self._observer: Any = None
        self._overflow = _OverflowWatch(self)
        self._lock_fh: Any = None
        self._max_backoff = max_backoff
        self._concurrency = concurrency
        self.state: StateDB | None = None
        self.outbox: Outbox | None = None
        self._root_dev: int | None = None
        self._last_status: tuple[Any, ...] = ()
        self._last_status_at = 0.0

    # -- called from watchdog's thread -----------------------------------------------------

    def relative(self, path: str) -> str | None:
        """The project path of a local absolute path, or None if outside or private."""
        try:
            rel = os.path.relpath(path, self.root)
        except ValueError:
            return None
        if rel == "." or rel.startswith(".."):
            return None
        rel = rel.replace(os.sep, "/")
        if rel == STATE_DIR_NAME or rel.startswith(STATE_DIR_NAME + "/"):
            return None
        return rel

    def mark(self, rel: str, *, delay: float | None = None) -> None:
        """A path may have changed: process it once it has been quiet for the upload delay."""
        now = time.monotonic()
        wait = self.upload_delay if delay is None else delay
        with self._cond:
            d = self._dirty.get(rel)
            if d is None:
                self._dirty[rel] = _Dirty(now + wait, now)
            else:
                d.due = min(now + wait, d.first + self.ceiling)
            self._cond.notify()

    def mark_tree(self, rel: str) -> None:
        """A directory appeared, vanished or moved: look at everything under it."""
        self.mark(rel)
        with self._cond:
            self._rescan_subtrees.add(rel)
            self._cond.notify()

    def request_rescan(self, reason: str) -> None:
        log.warning("sync: full rescan of %s (%s)", self.root, reason)
        with self._cond:
            self._rescan_reason = reason
            self._cond.notify()

    def stop(self) -> None:
        """Ask the service to stop (safe from a signal handler)."""
        self._stop.set()

    # -- lifecycle ---------------------------------------------------------------------------

    def _open(self) -> None:
        if not self.root.is_dir():
            if self.pull and not self.root.exists():
                self.root.mkdir(parents=True)
            else:
                raise UsageError(f"{self.root} is not a folder")
        if self.pull:
            extra = [p.name for p in self.root.iterdir() if p.name != STATE_DIR_NAME]
            if extra:
                raise UsageError(
                    f"--pull needs an empty folder, and {self.root} holds {len(extra)} entries; "
                    "leave out --pull to sync an existing folder"
                )
        ensure_private_dir(self.state_dir)  # 0700: state, queue and staged copies are private
        lock_fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._lock_fh = os.fdopen(lock_fd, "a+")  # held for the run
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            self._lock_fh = None
            raise UsageError(f"another dominofs sync is already running on {self.root}") from None
        self._lock_fh.seek(0)
        self._lock_fh.truncate()
        self._lock_fh.write(str(os.getpid()))
        self._lock_fh.flush()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / CONFIRM_MARKER).unlink()  # a confirmation is for a running sync
        ensure_private_dir(self.state_dir / "tmp")
        for stale in (self.state_dir / "tmp").iterdir():
            with contextlib.suppress(OSError):
                stale.unlink()
        self.state = StateDB(self.state_dir / "state.db")
        dev = self.state.get_meta("root_dev")
        self._root_dev = int(dev) if dev else os.stat(self.root).st_dev
        if dev is None:
            self.state.set_meta("root_dev", str(self._root_dev))
        self.outbox = Outbox(
            self.state_dir / "outbox",
            self.remote,
            concurrency=self._concurrency,
            max_backoff=self._max_backoff,
            on_uploaded=self._on_uploaded,
            on_conflict=self._on_conflict,
            on_deleted=self._on_deleted,
        )
        status_mod.register(
            "sync", self.project, self.root, self.status_file, directory=self.registry_dir
        )

    def _close(self) -> None:
        if self._observer is not None:
            with contextlib.suppress(Exception):
                self._observer.stop()
                self._observer.join(10)
            self._observer = None
        for name in _WATCHDOG_LOGGERS:
            logging.getLogger(name).removeHandler(self._overflow)
        if self.outbox is not None:
            self.outbox.stop()  # the upload in flight finishes; the queue is kept
            self._phase = "stopped"
            self._write_status(force=True)
            self.outbox.close()
            self.outbox = None
        if self.state is not None:
            self.state.close()
            self.state = None
        status_mod.unregister("sync", directory=self.registry_dir)
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def _start_observer(self) -> None:
        for name in _WATCHDOG_LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self._overflow)
            if logger.getEffectiveLevel() > logging.WARNING:
                logger.setLevel(logging.WARNING)
        observer: Any = PollingObserver(timeout=1.0) if self.use_polling_observer else Observer()
        observer.schedule(_Handler(self), str(self.root), recursive=True)
        try:
            observer.start()
        except OSError as exc:  # inotify watch or instance limit: degrade, say so
            log.warning("inotify unavailable (%s); falling back to polling", exc)
            self._last_error = f"inotify unavailable ({exc.strerror}); polling the folder"
            observer = PollingObserver(timeout=2.0)
            observer.schedule(_Handler(self), str(self.root), recursive=True)
            observer.start()
        self._observer = observer

    def run(self) -> int:
        """Watch, reconcile, then keep in step until stop(); returns the exit code (0)."""
        self._open()
        try:
            assert self.outbox is not None
            self.outbox.start()
            self._start_observer()  # watch first, so nothing changed during the scan is missed
            self._phase = "reconciling"
            self._poll(force=True)
            self._scan()
            self._drain_due(all_now=True)
            self._phase = "watching"
            self._write_status(force=True)
            sd_notify("READY=1\nSTATUS=" + self._summary())
            log.info("sync: %s is in step with %s; watching", self.root, self.project)
            return self._loop()
        finally:
            sd_notify("STOPPING=1")
            self._close()

    def _loop(self) -> int:
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        feed_every = watchdog_usec / 2e6 if watchdog_usec else 0.0
        next_feed = 0.0
        next_poll = time.monotonic() + self.poll_interval
        next_rescan = time.monotonic() + RESCAN_INTERVAL
        last_summary = ""
        while not self._stop.is_set():
            now = time.monotonic()
            if self._observer is None or not self._observer.is_alive():
                self._last_error = "the folder watcher died"
                log.error("sync: the folder watcher died; exiting so systemd restarts us")
                return 1
            if feed_every and now >= next_feed:
                sd_notify("WATCHDOG=1")
                next_feed = now + feed_every
            self._drain_due()
            with self._cond:
                reason, self._rescan_reason = self._rescan_reason, None
            if reason or now >= next_rescan:
                self._scan()
                next_rescan = now + RESCAN_INTERVAL
            self._flush_deletes()
            if self._force_poll or now >= next_poll:
                self._poll(force=self._force_poll)
                next_poll = time.monotonic() + self.poll_interval
            self._write_status()
            summary = self._summary()
            if summary != last_summary:
                sd_notify("STATUS=" + summary)
                last_summary = summary
            with self._cond:
                wait = 0.25
                if self._dirty:
                    soonest = min(d.due for d in self._dirty.values())
                    wait = max(0.0, min(wait, soonest - time.monotonic()))
                if wait > 0 and self._rescan_reason is None:
                    self._cond.wait(wait)
        log.info("sync: stopping; %d changes stay queued", self._pending())
        return 0

    def run_once(self, *, timeout: float = 120.0) -> None:
        """Reconcile both ways, wait for the queue, and return if in step.

        Raises:
            Unreachable: the server could not be reached (changes stay queued).
            SyncError: held deletes or failed uploads keep the folder out of step.
        """
        self._open()
        try:
            assert self.outbox is not None
            self.outbox.start()
            self._phase = "reconciling"
            deadline = time.monotonic() + timeout
            self._wait_outbox(deadline)
            for _ in range(4):
                completed = self.outbox.completed
                changed = self._poll(force=True)
                self._scan()
                self._drain_due(all_now=True)
                self._flush_deletes(grace=0.0)
                self._wait_outbox(deadline)
                if self.outbox.server_reachable is False or self._poll_error:
                    break
                if not changed and completed == self.outbox.completed and not self._dirty:
                    break
            self._phase = "stopped"
            self._write_status(force=True)
            self._raise_if_out_of_step()
        finally:
            self._close()

    def _wait_outbox(self, deadline: float) -> None:
        assert self.outbox is not None
        while not self.outbox.wait_idle(0.2):
            if self.outbox.server_reachable is False or time.monotonic() > deadline:
                return

    def _raise_if_out_of_step(self) -> None:
        assert self.outbox is not None
        pending = self.outbox.pending_count()
        if self._poll_error or self.outbox.server_reachable is False:
            why = self._poll_error or self.outbox.last_error or "server unreachable"
            raise Unreachable(f"{why}; {pending} changes kept in the queue for the next run")
        if self._held.paths:
            raise SyncError(
                f"{len(self._held.paths)} deletions held ({self._held.reason}); check {self.root}"
                f" and run: dominofs sync {self.project} {self.root} --confirm-deletes"
            )
        failed = self.outbox.failed()
        if failed:
            raise SyncError(f"{len(failed)} changes failed, first {failed[0].path}: "
                            f"{failed[0].last_error}")  # fmt: skip
        if pending:
            raise SyncError(f"{pending} changes still queued")

    # -- local -> remote -------------------------------------------------------------------

    def _drain_due(self, *, all_now: bool = False) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            with self._cond:
                subtrees, self._rescan_subtrees = self._rescan_subtrees, set()
            for sub in subtrees:
                self._scan(sub, delay=None)  # files in a new folder may still be written
            with self._cond:
                due = [p for p, d in self._dirty.items() if all_now or d.due <= now]
                for p in due:
                    del self._dirty[p]
            if not due:
                return
            for rel in sorted(due):
                if self._stop.is_set():
                    return
                try:
                    with self._fs_lock:
                        self._process(rel)
                except DominoError as exc:
                    self._last_error = str(exc)
                    log.error("sync: %s: %s", rel, exc)
                except OSError as exc:
                    self._last_error = f"{rel}: {exc.strerror or exc}"
                    log.warning("sync: cannot read %s: %s; will retry", rel, exc.strerror or exc)
                    self.mark(rel, delay=max(5.0, self.upload_delay))
            if not all_now:
                return

    def _process(self, rel: str) -> None:
        """Decide what one path needs: nothing, an upload, or a deletion candidate."""
        assert self.state is not None
        assert self.outbox is not None
        if rel == IGNORE_FILE:
            self.rules = IgnoreRules.for_root(self.root)
        if self.rules.is_ignored(rel):
            return
        path = self.root / rel
        try:
            st: os.stat_result | None = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            with self._cond:
                self._rescan_subtrees.add(rel)
            return
        if st is None or not stat.S_ISREG(st.st_mode):
            if st is not None:
                log.debug("sync: skipping %s: not a regular file", rel)
            if self.state.get(rel) is None:
                self.outbox.cancel(rel)  # created and removed before it was ever sent
            else:
                self._delete_candidates.setdefault(rel, time.monotonic())
            return
        self._delete_candidates.pop(rel, None)
        self._held.paths.discard(rel)
        pending = self.outbox.find(rel)  # before the row: a hook updates the row first
        if pending is not None and pending.op == "upload" and _meta_stat(pending.meta) == _stat(st):
            return
        row = self.state.get(rel)
        if pending is None and row is not None and row.same_stat(*_stat(st)):
            return
        staged = self.outbox.staging_path()
        copied = _stable_copy(path, staged)
        if copied is None:
            _unlink(staged)
            log.debug("sync: %s changed while being read; trying again later", rel)
            self.mark(rel)
            return
        sha, st2 = copied
        meta = {"sha256": sha, "size": st2[0], "mtime_ns": st2[1], "inode": st2[2]}
        if pending is not None and pending.op == "upload" and pending.meta.get("sha256") == sha:
            _unlink(staged)
            return
        if pending is None and row is not None and row.sha256 == sha:
            # Same bytes (a touch, a chmod): remember the new stat, send nothing.
            self.state.put(FileState(rel, row.key, sha, *st2, base_key=row.base_key))
            _unlink(staged)
            return
        # Not fsynced: the local file is the truth, and a restart after a power loss finds it
        # changed (stat) and queues it again.
        self.outbox.enqueue_upload(
            rel, staged, base_key=row.key if row else None, meta=meta, durable=False
        )

    def _scan(self, sub: str = "", *, delay: float | None = 0.0) -> None:
        """Stat-only reconcile of the tree (or a subtree) against the state database.

        Changed paths are marked dirty after `delay` (None: the upload delay).
        """
        assert self.state is not None
        self.rules = IgnoreRules.for_root(self.root)
        start = self.root / sub if sub else self.root
        known = self.state.snapshot()
        for rel, st in self._walk(start, sub):
            row = known.pop(rel, None)
            if row is None or row[1:] != _stat(st):
                self.mark(rel, delay=delay)
        prefix = sub + "/" if sub else ""
        for rel in known:  # in the state, not found by the walk: gone (or moved)
            if not sub or rel == sub or rel.startswith(prefix):
                self.mark(rel, delay=delay)

    def _walk(self, directory: Path, rel_dir: str) -> Iterator[tuple[str, os.stat_result]]:
        try:
            it = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            log.warning("sync: cannot list %s: %s", directory, exc.strerror)
            return
        with it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if rel == STATE_DIR_NAME:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if not self.rules.is_ignored(rel, is_dir=True):
                        yield from self._walk(Path(entry.path), rel)
                elif stat.S_ISREG(st.st_mode) and not self.rules.is_ignored(rel):
                    yield rel, st

    # -- deletes and the guard -----------------------------------------------------------------

    def _root_problem(self) -> str | None:
        try:
            st = os.stat(self.root)
        except OSError:
            return f"{self.root} vanished"
        if self._root_dev is not None and st.st_dev != self._root_dev:
            return f"{self.root} is on another device than before (unmounted disk?)"
        try:
            names = [n for n in os.listdir(self.root) if n != STATE_DIR_NAME]
        except OSError:
            return f"{self.root} cannot be listed"
        if not names:
            return f"{self.root} is empty"
        return None

    def _flush_deletes(self, *, grace: float = DELETE_GRACE) -> None:
        assert self.state is not None
        assert self.outbox is not None
        now = time.monotonic()
        # A burst of deletions (rm -rf) is judged as one: nothing is ready until none has come
        # for `grace` s. Judged piece by piece as each got old enough, a big deletion that took
        # longer than a flush interval passed the guard in slices each under its limit.
        times = self._delete_candidates.values()
        newest, oldest = max(times, default=0.0), min(times, default=now)
        settled = now - newest >= grace or now - oldest >= DELETE_MAX_WAIT
        ready = set(self._delete_candidates) if settled else set()
        ready |= self._held.paths
        if not ready:
            return
        with self._fs_lock:
            back = {p for p in ready if os.path.lexists(self.root / p)}
            for p in back:
                self._delete_candidates.pop(p, None)
                self._held.paths.discard(p)
                self.mark(p, delay=0.0)
            ready -= back
            ready = {p for p in ready if self.state.get(p) is not None}
            if not ready:
                self._held = _Held()
                return
            if not self.root.is_dir():
                self._held = _Held(ready, f"{self.root} vanished")
                return  # never delete against a folder that is not there, confirmed or not
            confirmed = self.confirm_deletes or self._take_confirmation()
            total = self.state.count()
            limit = max(50, total // 10)
            problem = self._root_problem()
            if problem is None and len(ready) > limit:
                problem = f"{len(ready)} of {total} files would be deleted (limit {limit})"
            if problem and not confirmed:
                if self._held.reason != problem or self._held.paths != ready:
                    log.warning(
                        "sync: holding %d deletions: %s; run dominofs sync %s %s "
                        "--confirm-deletes to send them",
                        len(ready), problem, self.project, self.root,
                    )  # fmt: skip
                self._held = _Held(ready, problem)
                for p in ready:
                    self._delete_candidates.pop(p, None)
                return
            for p in sorted(ready):
                row = self.state.get(p)
                self.outbox.enqueue_delete(p, base_key=row.key if row else None)
                self._delete_candidates.pop(p, None)
            self._held = _Held()
            if problem:
                self.confirm_deletes = False  # a confirmation covers what was held, once

    def _take_confirmation(self) -> bool:
        marker = self.state_dir / CONFIRM_MARKER
        if marker.exists():
            with contextlib.suppress(OSError):
                marker.unlink()
            log.info("sync: deletions confirmed by the user")
            return True
        return False

    # -- hooks (outbox threads) ------------------------------------------------------------------

    def _on_uploaded(self, path: str, result: UploadResult, staged: Path, entry: Entry) -> None:
        assert self.state is not None
        m = entry.meta
        self.state.put(
            FileState(
                path,
                result.key,
                str(m.get("sha256", "")),
                int(m.get("size", -1)),
                int(m.get("mtime_ns", -1)),
                int(m.get("inode", -1)),
            )
        )

    def _on_conflict(
        self, path: str, cpath: str, result: UploadResult, staged: Path, entry: Entry
    ) -> None:
        """Ours went to the server as `cpath`: mirror that locally, then fetch theirs."""
        assert self.state is not None
        m = entry.meta
        with self._fs_lock:
            local = self.root / path
            target = safe_target(self.root, cpath)
            try:
                st = os.lstat(local)
            except FileNotFoundError:
                st = None
            if (
                target is not None
                and st is not None
                and _stat(st) == _meta_stat(m)
                and not os.path.lexists(target)
            ):
                os.rename(local, target)
                self.state.put(FileState(cpath, result.key, str(m.get("sha256", "")), *_stat(st)))
                self.state.remove(path)
            self._force_poll = True

    def _on_deleted(self, path: str, outcome: DeleteOutcome, entry: Entry) -> None:
        assert self.state is not None
        self.state.remove(path)
        if outcome == "changed_remotely":
            self._force_poll = True  # download the server's newer version

    # -- remote -> local ---------------------------------------------------------------------

    def _poll(self, *, force: bool = False) -> bool:
        """Apply remote changes if the head moved; True if anything was downloaded or removed."""
        assert self.state is not None
        assert self.outbox is not None
        self._force_poll = False
        if self.outbox.pending_count() and not force:
            return False  # our own uploads first; their commits would look like remote edits
        completed = self.outbox.completed
        try:
            commits = self.remote.commits()
            if not commits:
                raise NotFound(f"{self.project} has no commit")
            head = commits[0]
            if head == self.state.head and not force:
                self._poll_ok()
                return False
            listing = self.remote.list_files(head)
        except Unreachable as exc:
            self._poll_error = str(exc)
            log.warning("sync: %s", exc)
            return False
        except DominoError as exc:
            self._poll_error = str(exc)
            self._last_error = str(exc)
            log.error("sync: %s", exc)
            return False
        self._poll_ok()
        self._download_failed = False
        kept = set(self.outbox.kept_local())
        known = self.state.snapshot()
        remote_paths: set[str] = set()
        adopt: list[tuple[RemoteFile, os.stat_result]] = []
        changed = False
        for rf in listing:
            if self._stop.is_set() or self.outbox.completed != completed:
                return changed  # our upload landed meanwhile: look again next time
            if self.rules.is_ignored(rf.path):
                continue
            remote_paths.add(rf.path)
            if rf.path in kept:
                continue
            row = known.get(rf.path)
            if row is not None and row[0] == rf.key:
                continue  # in step (the common case: no query, no stat)
            if row is None and _SHA1_KEY.match(rf.key):
                st = self._adoptable(rf)
                if st is not None:
                    adopt.append((rf, st))
                    if len(adopt) >= _ADOPT_BATCH:
                        self._adopt(adopt)
                        adopt = []
                    continue
            with self._fs_lock:
                changed |= self._apply_remote_file(rf)
        self._adopt(adopt)
        if self.outbox.completed != completed:
            return changed
        gone = [p for p in known if p not in remote_paths and not self.rules.is_ignored(p)]
        del known
        for path in gone:
            with self._fs_lock:
                row_state = self.state.get(path)
                if row_state is not None:
                    changed |= self._apply_remote_delete(row_state)
        if self.outbox.completed == completed and not self._download_failed:
            self.state.head = head
        return changed

    def _adoptable(self, rf: RemoteFile) -> os.stat_result | None:
        """The stat of a local file with no state row and the remote size (maybe the same bytes:
        a first sync of a folder already on the server), else None."""
        target = safe_target(self.root, rf.path)
        if target is None:
            return None
        try:
            st = os.lstat(target)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != rf.size:
            return None
        return st

    def _adopt(self, batch: list[tuple[RemoteFile, os.stat_result]]) -> None:
        """Record as in step the local files whose bytes are the remote ones (sha1 = key).

        Hashing only, in parallel; anything else (other bytes, changed meanwhile, a queued
        change) goes the normal way: marked dirty, so the upload path with its conflict check
        decides.
        """
        assert self.state is not None
        assert self.outbox is not None
        if not batch:
            return
        with concurrent.futures.ThreadPoolExecutor(_HASH_THREADS) as pool:
            hashes = list(pool.map(lambda item: _hash_local(self.root / item[0].path), batch))
        rows: list[FileState] = []
        with self._fs_lock:
            for (rf, st), got in zip(batch, hashes, strict=True):
                if (
                    got is not None
                    and got[0] == rf.key
                    and got[2] == _stat(st)
                    and self.outbox.find(rf.path) is None
                ):
                    rows.append(FileState(rf.path, rf.key, got[1], *got[2]))
                else:
                    self.mark(rf.path, delay=0.0)
            self.state.put_many(rows)
        if rows:
            log.info("sync: %d local files already match the server", len(rows))

    def _poll_ok(self) -> None:
        assert self.outbox is not None
        if self._poll_error or self.outbox.server_reachable is False:
            # The server is back (or takes the key again after a 401): do not wait out the
            # backoff, and retry what failed meanwhile, as a restart would.
            self.outbox.retry_failed()
            self.outbox.kick()
        self._poll_error = None

    def _apply_remote_file(self, rf: RemoteFile) -> bool:
        assert self.state is not None
        assert self.outbox is not None
        row = self.state.get(rf.path)
        if row is not None and row.key == rf.key:
            return False
        target = safe_target(self.root, rf.path)
        if target is None:
            log.error("sync: refusing to write %r from the server: outside %s", rf.path, self.root)
            return False
        if self.outbox.find(rf.path) is not None:
            return False  # our pending change decides (with its conflict check)
        try:
            st: os.stat_result | None = os.lstat(target)
        except FileNotFoundError:
            st = None
        except NotADirectoryError:
            log.error("sync: %s from the server clashes with a local file", rf.path)
            return False
        if st is not None:
            if not stat.S_ISREG(st.st_mode):
                log.error("sync: %s from the server clashes with a local folder", rf.path)
                return False
            if row is None or not row.same_stat(*_stat(st)):
                self.mark(rf.path, delay=0.0)  # changed here too: the upload path decides
                return False
        self._delete_candidates.pop(rf.path, None)
        self._held.paths.discard(rf.path)
        return self._download(rf, target, st)

    def _download(self, rf: RemoteFile, target: Path, expected: os.stat_result | None) -> bool:
        assert self.state is not None
        tmp = self.state_dir / "tmp" / f"dl-{os.getpid()}-{threading.get_ident()}"
        h = hashlib.sha256()
        by_key = hashlib.sha1(usedforsecurity=False) if _SHA1_KEY.match(rf.key) else None
        size = 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in self.remote.iter_blob(rf.key):
                    fh.write(chunk)
                    h.update(chunk)
                    if by_key is not None:
                        by_key.update(chunk)
                    size += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            if size != rf.size or (by_key is not None and by_key.hexdigest() != rf.key):
                # Never let bad bytes into DIR; the next poll downloads it again.
                self._download_failed = True
                self._last_error = f"{rf.path}: the downloaded bytes do not match the listing"
                log.error("sync: %s; will retry", self._last_error)
                return False
            target.parent.mkdir(parents=True, exist_ok=True)
            if safe_target(self.root, rf.path) is None:
                return False
            try:
                now_st: os.stat_result | None = os.lstat(target)
            except FileNotFoundError:
                now_st = None
            if (now_st is None) != (expected is None) or (
                now_st is not None and expected is not None and _stat(now_st) != _stat(expected)
            ):
                self.mark(rf.path, delay=0.0)  # changed locally while downloading
                return False
            os.replace(tmp, target)
        except DominoError as exc:
            self._download_failed = True
            self._last_error = str(exc)
            log.error("sync: cannot download %s: %s; will retry", rf.path, exc)
            return False
        finally:
            _unlink(tmp)
        st = os.lstat(target)
        self.state.put(FileState(rf.path, rf.key, h.hexdigest(), *_stat(st)))
        log.info("sync: downloaded %s", rf.path)
        return True

    def _apply_remote_delete(self, row: FileState) -> bool:
        assert self.state is not None
        assert self.outbox is not None
        if self.outbox.find(row.path) is not None:
            return False
        target = safe_target(self.root, row.path)
        if target is None:
            self.state.remove(row.path)
            return False
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            self.state.remove(row.path)
            self._delete_candidates.pop(row.path, None)
            return False
        if stat.S_ISREG(st.st_mode) and row.same_stat(*_stat(st)):
            target.unlink()
            self.state.remove(row.path)
            log.info("sync: %s was deleted on the server; deleted here", row.path)
            return True
        self.mark(row.path, delay=0.0)  # changed here: ours is uploaded again
        return False

    # -- status ------------------------------------------------------------------------------

    def _pending(self) -> int:
        return self.outbox.pending_count() if self.outbox is not None else 0

    def _summary(self) -> str:
        parts = [self._phase, f"{self._pending()} pending"]
        if self._held.paths:
            parts.append(f"{len(self._held.paths)} deletions held")
        conflicts = len(self.outbox.conflicts()) if self.outbox is not None else 0
        if conflicts:
            parts.append(f"{conflicts} conflicts")
        if self._poll_error or (self.outbox and self.outbox.server_reachable is False):
            parts.append("server unreachable")
        return ", ".join(parts)

    def status(self) -> dict[str, Any]:
        """What status.json holds (CONTRACT §6)."""
        data: dict[str, Any] = {
            "kind": "sync",
            "project": self.project,
            "path": str(self.root),
            "pid": os.getpid(),
            "state": self._phase,
        }
        if self.outbox is not None:
            data.update(self.outbox.status())
        reachable = data.get("server_reachable")
        if self._poll_error:
            reachable = False
        elif reachable is None and self.state is not None and self.state.head:
            reachable = True
        data["server_reachable"] = reachable
        data["held_deletes"] = sorted(self._held.paths)[:100]
        data["held_deletes_count"] = len(self._held.paths)
        data["held_reason"] = self._held.reason or None
        data["last_error"] = self._poll_error or data.get("last_error") or self._last_error
        data["head"] = self.state.head if self.state is not None else None
        return data

    def _write_status(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status_at < 0.5:
            return
        if not self.state_dir.is_dir():
            return  # DIR vanished: never recreate it
        data = self.status()
        key = tuple(sorted((k, repr(v)) for k, v in data.items()))
        if not force and key == self._last_status and now - self._last_status_at < 5.0:
            return
        self._last_status, self._last_status_at = key, now
        try:
            status_mod.write_status(self.status_file, data)
        except OSError as exc:
            log.warning("sync: cannot write %s: %s", self.status_file, exc.strerror)


def _stat(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _meta_stat(meta: Any) -> tuple[int, int, int]:
    try:
        return (int(meta["size"]), int(meta["mtime_ns"]), int(meta["inode"]))
    except (KeyError, TypeError, ValueError):
        return (-1, -1, -1)


def _hash_local(path: Path) -> tuple[str, str, tuple[int, int, int]] | None:
    """(sha1, sha256, stat) of a local file, or None if unreadable or changed while read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        before = os.fstat(fd)
        h1 = hashlib.sha1(usedforsecurity=False)
        h256 = hashlib.sha256()
        n = 0
        while chunk := os.read(fd, 4 << 20):
            h1.update(chunk)
            h256.update(chunk)
            n += len(chunk)
        after = os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if _stat(before) != _stat(after) or n != before.st_size:
        return None
    return h1.hexdigest(), h256.hexdigest(), _stat(before)


def _stable_copy(src: Path, dst: Path) -> tuple[str, tuple[int, int, int]] | None:
    """Copy `src` to `dst`, hashing; None if size, mtime or inode moved during the read."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        before = os.fstat(fd)
        h = hashlib.sha256()
        n = 0
        out_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(out_fd, "wb") as out:
            while chunk := os.read(fd, 1 << 20):
                out.write(chunk)
                h.update(chunk)
                n += len(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        now = os.lstat(src)
    except FileNotFoundError:
        return None
    if _stat(before) != _stat(after) or _stat(now) != _stat(before) or n != before.st_size:
        return None
    return h.hexdigest(), _stat(before)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
