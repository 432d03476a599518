"""Which paths of DIR may have changed: the watchdog observer and the per-path debounce.

Owns: the observer on DIR (inotify, or polling where inotify is refused), turning its events into
dirty paths (events are hints: each only marks a path), the per-path debounce with a ceiling, and
the requests for a subtree or full rescan (an inotify overflow is one). Must not read, upload or
download anything: the service drains what is due. Threads: the observer's, started and joined
by `Watcher`; `Debounce` is safe from any thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserverVFS

from .folder import Folder

log = logging.getLogger(__package__)  # the service logs as one: "dominofs.sync"

_WATCHDOG_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")


@dataclass
class _Dirty:
    """Per-path debounce: when it may be processed, and when it was first seen dirty."""

    due: float
    first: float


class Debounce:
    """Dirty paths, each due once quiet for the upload delay (at most `ceiling` after the first
    mark), plus the subtrees and the full rescan asked for."""

    def __init__(self, folder: Folder, upload_delay: float) -> None:
        self.folder = folder
        self.upload_delay = upload_delay
        self.ceiling = max(10.0, 10 * upload_delay)
        self._cond = threading.Condition()
        self._dirty: dict[str, _Dirty] = {}
        self._subtrees: set[str] = set()
        self._rescan_reason: str | None = None

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
        self.add_subtree(rel)

    def add_subtree(self, rel: str) -> None:
        with self._cond:
            self._subtrees.add(rel)
            self._cond.notify()

    def request_rescan(self, reason: str) -> None:
        log.warning("sync: full rescan of %s (%s)", self.folder.root, reason)
        with self._cond:
            self._rescan_reason = reason
            self._cond.notify()

    def take_subtrees(self) -> set[str]:
        with self._cond:
            subtrees, self._subtrees = self._subtrees, set()
        return subtrees

    def take_due(self, now: float, *, all_now: bool = False) -> list[str]:
        """The paths due at `now` (every dirty one with `all_now`), no longer dirty."""
        with self._cond:
            due = [p for p, d in self._dirty.items() if all_now or d.due <= now]
            for p in due:
                del self._dirty[p]
        return due

    def take_rescan_reason(self) -> str | None:
        with self._cond:
            reason, self._rescan_reason = self._rescan_reason, None
        return reason

    def any_dirty(self) -> bool:
        with self._cond:
            return bool(self._dirty)

    def wait(self, longest: float) -> None:
        """Sleep until a mark, a rescan request, the soonest due path, or `longest` seconds."""
        with self._cond:
            wait = longest
            if self._dirty:
                soonest = min(d.due for d in self._dirty.values())
                wait = max(0.0, min(wait, soonest - time.monotonic()))
            if wait > 0 and self._rescan_reason is None:
                self._cond.wait(wait)


class _Handler(FileSystemEventHandler):
    """Turns watchdog events into dirty paths. Never raises (that would kill the observer)."""

    def __init__(self, folder: Folder, debounce: Debounce) -> None:
        self.folder = folder
        self.debounce = debounce

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            if event.event_type in ("opened", "closed_no_write"):
                return
            for raw in (event.src_path, getattr(event, "dest_path", "")):
                if not raw:
                    continue
                path = raw.decode() if isinstance(raw, bytes) else str(raw)
                rel = self.folder.relative(path)
                if rel is None:
                    continue
                if event.is_directory:
                    self.debounce.mark_tree(rel)
                else:
                    self.debounce.mark(rel)
        except Exception:
            log.exception("sync: could not handle %r", event)
            self.debounce.request_rescan("event handler failure")


class _OverflowWatch(logging.Handler):
    """watchdog only logs an inotify overflow; this turns that log line into a full rescan."""

    def __init__(self, debounce: Debounce) -> None:
        super().__init__(logging.WARNING)
        self.debounce = debounce

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            if "overflow" in record.getMessage().lower():
                self.debounce.request_rescan("inotify queue overflowed")


def _polling(interval: float) -> Any:
    # lstat, not watchdog's default stat: a symlink to a folder is an entry, never walked into
    # (inotify does not follow one either).
    return PollingObserverVFS(os.lstat, os.scandir, polling_interval=interval)


class Watcher:
    """The observer on DIR feeding a Debounce. `start()`, then `stop()` (joins its thread)."""

    def __init__(self, folder: Folder, debounce: Debounce, *, polling: bool = False) -> None:
        self.folder = folder
        self.debounce = debounce
        self.polling = polling
        self._observer: Any = None
        self._overflow = _OverflowWatch(debounce)

    def start(self) -> None:
        for name in _WATCHDOG_LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self._overflow)
            if logger.getEffectiveLevel() > logging.WARNING:
                logger.setLevel(logging.WARNING)
        root = str(self.folder.root)
        observer: Any = _polling(1.0) if self.polling else Observer()
        observer.schedule(_Handler(self.folder, self.debounce), root, recursive=True)
        try:
            observer.start()
        except OSError as exc:  # inotify watch or instance limit: degrade, say so
            log.warning("inotify unavailable (%s); falling back to polling", exc)
            self.folder.last_error = f"inotify unavailable ({exc.strerror}); polling the folder"
            observer = _polling(2.0)
            observer.schedule(_Handler(self.folder, self.debounce), root, recursive=True)
            observer.start()
        self._observer = observer

    def alive(self) -> bool:
        return self._observer is not None and bool(self._observer.is_alive())

    def stop(self) -> None:
        if self._observer is not None:
            with contextlib.suppress(Exception):
                self._observer.stop()
                self._observer.join(10)
            self._observer = None
        for name in _WATCHDOG_LOGGERS:
            logging.getLogger(name).removeHandler(self._overflow)
