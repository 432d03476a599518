"""The sync service's lifecycle: one folder kept in step with one project (CONTRACT §5).

Owns: opening DIR (the --pull checks, the private DIR/.dominofs/, the lock that allows one sync
per folder, the state database, the outbox and the registry entry) and closing it, wiring the
parts together, the service loop (drain what is due, rescans, deletions, polls, status, systemd's
watchdog), `run_once`, and the verdict of whether the folder is in step. What each step does is
the parts' business (watcher, upload, download, deletes, symlinks, report). Must not import
requests or api.py: it receives a `models.Remote`. Threads: the observer's and the outbox's,
both started and joined here; the service loop runs in the caller's thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from .. import status as status_mod
from ..config import ensure_private_dir
from ..errors import DominoError, Unreachable, UsageError
from ..ignore import STATE_DIR_NAME
from ..models import Remote
from ..outbox import Outbox
from ..state import StateDB
from .deletes import CONFIRM_MARKER, DeleteGuard, Held
from .download import Poller
from .folder import Folder
from .report import StatusFile, sd_notify, status_record, summary
from .symlinks import Symlinks
from .upload import OutboxHooks, Uploader
from .watcher import Debounce, Watcher

log = logging.getLogger(__package__)

RESCAN_INTERVAL = 600.0


class SyncError(DominoError):
    """The folder is not in step and needs attention (held deletes, failed uploads)."""


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
        links: bool = False,
        max_backoff: float = 10.0,
        concurrency: int = 4,
        registry_dir: Path | None = None,
        use_polling_observer: bool = False,
    ) -> None:
        self.folder = Folder(root)
        self.root = self.folder.root
        self.remote = remote
        self.poll_interval = max(0.5, poll_interval)
        self.confirm_deletes = confirm_deletes
        self.pull = pull
        self.links = links
        self.registry_dir = registry_dir
        self.project = str(remote.project)
        self.state_dir = self.folder.state_dir
        self.debounce = Debounce(self.folder, max(0.0, upload_delay))
        self._watcher = Watcher(self.folder, self.debounce, polling=use_polling_observer)
        self._status_file = StatusFile(self.state_dir / "status.json")
        self._poll_wanted = threading.Event()  # the outbox's hooks ask for a poll now
        self._phase = "starting"
        self._lock_fh: Any = None
        self._max_backoff = max_backoff
        self._concurrency = concurrency
        self.state: StateDB | None = None
        self.outbox: Outbox | None = None
        self._guard: DeleteGuard | None = None
        self._uploader: Uploader | None = None
        self._poller: Poller | None = None
        self._symlinks: Symlinks | None = None

    def stop(self) -> None:
        """Ask the service to stop (safe from a signal handler)."""
        self.folder.stopping.set()

    # -- lifecycle ---------------------------------------------------------------------------

    def _open(self) -> tuple[Uploader, Poller, DeleteGuard, Outbox]:
        root = self.root
        if not root.is_dir():
            if self.pull and not root.exists():
                root.mkdir(parents=True)
            else:
                raise UsageError(f"{root} is not a folder")
        if self.pull:
            extra = [p.name for p in root.iterdir() if p.name != STATE_DIR_NAME]
            if extra:
                raise UsageError(
                    f"--pull needs an empty folder, and {root} holds {len(extra)} entries; "
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
            raise UsageError(f"another dominofs sync is already running on {root}") from None
        self._lock_fh.seek(0)
        self._lock_fh.truncate()
        self._lock_fh.write(str(os.getpid()))
        self._lock_fh.flush()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / CONFIRM_MARKER).unlink()  # a confirmation is for a running sync
        ensure_private_dir(self.folder.tmp_dir)
        for stale in self.folder.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                stale.unlink()
        state = self.state = StateDB(self.state_dir / "state.db")
        dev = state.get_meta("root_dev")
        root_dev = int(dev) if dev else os.stat(root).st_dev
        if dev is None:
            state.set_meta("root_dev", str(root_dev))
        hooks = OutboxHooks(self.folder, state, self._poll_wanted.set)
        outbox = self.outbox = Outbox(
            self.state_dir / "outbox",
            self.remote,
            concurrency=self._concurrency,
            max_backoff=self._max_backoff,
            on_uploaded=hooks.uploaded,
            on_conflict=hooks.conflict,
            on_deleted=hooks.deleted,
        )
        links = self._symlinks = Symlinks(self.folder, state, enabled=self.links)
        guard = self._guard = DeleteGuard(
            self.folder,
            state,
            outbox,
            self.debounce,
            project=self.project,
            root_dev=root_dev,
            present=links.present,
            confirmed=self.confirm_deletes,
        )
        parts = (state, outbox, self.debounce, guard, links)
        uploader = self._uploader = Uploader(self.folder, *parts)
        poller = self._poller = Poller(self.folder, self.remote, *parts, wanted=self._poll_wanted)
        status_mod.register(
            "sync", self.project, root, self._status_file.path, directory=self.registry_dir
        )
        return uploader, poller, guard, outbox

    def _close(self) -> None:
        self._watcher.stop()
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

    def run(self) -> int:
        """Watch, reconcile, then keep in step until stop(); returns the exit code (0)."""
        uploader, poller, guard, outbox = self._open()
        try:
            outbox.start()
            self._watcher.start()  # watch first, so nothing changed during the scan is missed
            self._phase = "reconciling"
            poller.poll(force=True)
            uploader.scan()
            uploader.drain(all_now=True)
            self._phase = "watching"
            self._write_status(force=True)
            sd_notify("READY=1\nSTATUS=" + self._summary())
            log.info("sync: %s is in step with %s; watching", self.root, self.project)
            return self._loop(uploader, poller, guard)
        finally:
            sd_notify("STOPPING=1")
            self._close()

    def _loop(self, uploader: Uploader, poller: Poller, guard: DeleteGuard) -> int:
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        feed_every = watchdog_usec / 2e6 if watchdog_usec else 0.0
        next_feed = 0.0
        next_poll = time.monotonic() + self.poll_interval
        next_rescan = time.monotonic() + RESCAN_INTERVAL
        last_summary = ""
        while not self.folder.stopping.is_set():
            now = time.monotonic()
            if not self._watcher.alive():
                self.folder.last_error = "the folder watcher died"
                log.error("sync: the folder watcher died; exiting so systemd restarts us")
                return 1
            if feed_every and now >= next_feed:
                sd_notify("WATCHDOG=1")
                next_feed = now + feed_every
            uploader.drain()
            reason = self.debounce.take_rescan_reason()
            if reason or now >= next_rescan:
                uploader.scan()
                next_rescan = now + RESCAN_INTERVAL
            guard.flush()
            forced = self._poll_wanted.is_set()
            if forced or now >= next_poll:
                poller.poll(force=forced)
                next_poll = time.monotonic() + self.poll_interval
            self._write_status()
            line = self._summary()
            if line != last_summary:
                sd_notify("STATUS=" + line)
                last_summary = line
            self.debounce.wait(0.25)
        log.info("sync: stopping; %d changes stay queued", self._pending())
        return 0

    def run_once(self, *, timeout: float = 120.0) -> None:
        """Reconcile both ways, wait for the queue, and return if in step.

        Raises:
            Unreachable: the server could not be reached (changes stay queued).
            SyncError: held deletes or failed uploads keep the folder out of step.
        """
        uploader, poller, guard, outbox = self._open()
        try:
            outbox.start()
            self._phase = "reconciling"
            deadline = time.monotonic() + timeout
            self._wait_outbox(outbox, deadline)
            for _ in range(4):
                completed = outbox.completed
                changed = poller.poll(force=True)
                uploader.scan()
                uploader.drain(all_now=True)
                guard.flush(grace=0.0)
                self._wait_outbox(outbox, deadline)
                if outbox.server_reachable is False or poller.error:
                    break
                if not changed and completed == outbox.completed and not self.debounce.any_dirty():
                    break
            self._phase = "stopped"
            self._write_status(force=True)
            self._raise_if_out_of_step(outbox, poller, guard)
        finally:
            self._close()

    @staticmethod
    def _wait_outbox(outbox: Outbox, deadline: float) -> None:
        while not outbox.wait_idle(0.2):
            if outbox.server_reachable is False or time.monotonic() > deadline:
                return

    def _raise_if_out_of_step(self, outbox: Outbox, poller: Poller, guard: DeleteGuard) -> None:
        pending = outbox.pending_count()
        if poller.error or outbox.server_reachable is False:
            why = poller.error or outbox.last_error or "server unreachable"
            raise Unreachable(f"{why}; {pending} changes kept in the queue for the next run")
        if guard.held.paths:
            raise SyncError(
                f"{len(guard.held.paths)} deletions held ({guard.held.reason}); check {self.root}"
                f" and run: dominofs sync {self.project} {self.root} --confirm-deletes"
            )
        failed = outbox.failed()
        if failed:
            raise SyncError(f"{len(failed)} changes failed, first {failed[0].path}: "
                            f"{failed[0].last_error}")  # fmt: skip
        if pending:
            raise SyncError(f"{pending} changes still queued")

    # -- status ------------------------------------------------------------------------------

    def _pending(self) -> int:
        return self.outbox.pending_count() if self.outbox is not None else 0

    def _held(self) -> Held:
        return self._guard.held if self._guard is not None else Held()

    def _poll_error(self) -> str | None:
        return self._poller.error if self._poller is not None else None

    def _skipped(self) -> dict[str, object]:
        if self._symlinks is not None:
            return self._symlinks.status()
        return {"links": self.links, "skipped_symlinks": [], "skipped_symlinks_count": 0}

    def _summary(self) -> str:
        skipped = self._symlinks.skipped_count() if self._symlinks is not None else 0
        return summary(
            self._phase, self.outbox, self._held(), poll_error=self._poll_error(), skipped=skipped
        )

    def status(self) -> dict[str, Any]:
        """What status.json holds (CONTRACT §6)."""
        return status_record(
            project=self.project,
            root=self.root,
            phase=self._phase,
            outbox=self.outbox,
            head=self.state.head if self.state is not None else None,
            held=self._held(),
            poll_error=self._poll_error(),
            last_error=self.folder.last_error,
            symlinks=self._skipped(),
        )

    def _write_status(self, *, force: bool = False) -> None:
        self._status_file.write(self.status, force=force)
