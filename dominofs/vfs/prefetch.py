"""Reading ahead across files: a program that reads a folder's files one after another.

Owns: noticing a sequential scan of siblings (`cat dir/*`, `grep -r`, pandas reading a folder of
CSVs, an image-folder data loader: two opens in a row of neighbouring names, in the folder's
sorted order), fetching the next siblings' blobs concurrently ahead of it within a budget (at
most `requests` downloads at once, at most `budget` bytes fetched ahead and not yet read,
files up to `largest` bytes; a window that starts at 4 files and doubles with every step, as the
kernel's readahead does), dropping from the cache what stays unread for 30 s (so a prefetch
costs cache space only within the budget, and only for a while), and its counters for status.
rclone, gcsfuse and mountpoint-s3 read ahead within one file; across files is ours.
Only opens for reading feed it: a stat-only walk (`ls -l`, `find`, `du`) downloads nothing.
Must not touch the namespace (it reads it) or block an open: downloads run in the cache's
workers, and every call here returns at once.
"""

from __future__ import annotations

import bisect
import stat as _stat
import threading
import time
from collections import OrderedDict
from typing import Any

from ..cache import BlobCache
from .inodes import FILE, NODE, Namespace

_LISTINGS = 4  # folders whose sorted names are kept (a scan reads one folder at a time)
_BEHIND = 64  # a file fetched ahead and this many names behind the scan no longer counts
_EXPIRE = 30.0  # seconds after which a file fetched ahead and still unread leaves the cache


class Prefetcher:
    """One mount's read-ahead across files (see the module docstring)."""

    def __init__(
        self,
        ns: Namespace,
        cache: BlobCache,
        *,
        requests: int = 16,
        budget: int = 64 << 20,
        largest: int = 8 << 20,
        window: int = 256,
    ) -> None:
        self._ns = ns
        self._cache = cache
        self.requests = requests
        self.budget = budget
        self.largest = largest
        self.window = window
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[int, int]] = {}  # folder -> (index last opened, run length)
        self._listings: OrderedDict[str, tuple[Any, list[str]]] = OrderedDict()
        # folder -> (its names, the first index not looked at yet by a fill)
        self._frontier: dict[str, tuple[list[str], int]] = {}
        # key -> (size, folder, index, when): fetched (or on its way), not opened yet, counted
        # in the budget; then, once the scan is well past it, only kept until it expires.
        self._ahead: OrderedDict[str, tuple[int, str, int, float]] = OrderedDict()
        self._passed: OrderedDict[str, float] = OrderedDict()
        self._ahead_bytes = 0
        self.started = 0
        self.used = 0
        self.unused = 0

    @property
    def enabled(self) -> bool:
        return self.requests > 0 and self.budget > 0

    def opened(self, path: str, key: str | None) -> None:
        """`path` was opened for reading (`key`: its blob; None when its bytes are local)."""
        if not self.enabled:
            return
        folder, _, name = path.rpartition("/")
        folder = folder or "/"
        with self._lock:
            if key is not None and key in self._ahead:
                self._take(key)
                self.used += 1
            elif key is not None and self._passed.pop(key, None) is not None:
                self.used += 1
            self._expire(time.monotonic())
            names = self._names(folder)
            i = bisect.bisect_left(names, name)
            if i >= len(names) or names[i] != name:
                return
            last = self._runs.get(folder)
            run = last[1] + 1 if last is not None and 0 < i - last[0] <= 2 else 1
            self._runs[folder] = (i, run)
            if len(self._runs) > 64:
                self._runs.pop(next(iter(self._runs)))
            self._pass(folder, i)
            if run >= 2:
                # As the kernel's readahead does: a short run earns a short window, which
                # doubles with every step (a random access pattern fetches little ahead).
                self._fill(folder, names, i, min(self.window, 4 << min(run - 2, 16)))

    def status(self) -> dict[str, int]:
        with self._lock:
            return {
                "requests": self.requests,
                "budget_bytes": self.budget,
                "ahead_files": len(self._ahead),
                "ahead_bytes": self._ahead_bytes,
                "started": self.started,
                "used": self.used,
                "unused": self.unused,
            }

    # -- the lock held ---------------------------------------------------------------------

    def _names(self, folder: str) -> list[str]:
        """The folder's sorted names, kept while the folder's stat (its identity) is unchanged."""
        mark = (self._ns.tree, self._ns.stat(folder))
        kept = self._listings.get(folder)
        if kept is not None and kept[0][0] is mark[0] and kept[0][1] is mark[1]:
            self._listings.move_to_end(folder)
            return kept[1]
        names = self._ns.names_in(folder)
        self._listings[folder] = (mark, names)
        if len(self._listings) > _LISTINGS:
            self._listings.popitem(last=False)
        return names

    def _take(self, key: str) -> float:
        size, _, _, when = self._ahead.pop(key)
        self._ahead_bytes -= size
        return when

    def _pass(self, folder: str, i: int) -> None:
        """The scan of `folder` is at index `i`: what it left far behind unread stops counting
        in the budget (not just behind: several readers open a folder's files out of order)."""
        behind = i - _BEHIND
        for key in [k for k, (_, f, j, _) in self._ahead.items() if f == folder and j < behind]:
            self._passed[key] = self._take(key)

    def _expire(self, now: float) -> None:
        """What was fetched ahead and is still unread after _EXPIRE seconds leaves the cache:
        a prefetch costs cache space only within the budget, and only for a while."""
        while self._ahead:
            key, (_, _, _, when) = next(iter(self._ahead.items()))
            if now - when < _EXPIRE:
                break
            self._take(key)
            self._unread(key)
        while self._passed:
            key, when = next(iter(self._passed.items()))
            if now - when < _EXPIRE:
                break
            del self._passed[key]
            self._unread(key)

    def _unread(self, key: str) -> None:
        self.unused += 1
        self._cache.drop(key)

    def _fill(self, folder: str, names: list[str], i: int, window: int) -> None:
        """Fetch ahead of index `i`, from where the last fill of this folder stopped (each name
        is looked at once per scan, not once per open)."""
        prefix = "/" if folder == "/" else folder + "/"
        busy = sum(1 for k in self._ahead if self._cache.downloading(k))
        now = time.monotonic()
        mark = self._frontier.get(folder)
        start = i + 1 if mark is None or mark[0] is not names else max(i + 1, mark[1])
        j = start
        for j in range(start, min(len(names), i + 1 + window)):
            if busy >= self.requests or self._ahead_bytes >= self.budget:
                break
            kind, obj = self._ns.lookup(prefix + names[j])
            if kind == FILE or (
                kind == NODE and _stat.S_ISREG(obj.mode) and obj.work is None and obj.key
            ):
                key, size = obj.key, obj.size
            else:
                continue
            if key in self._ahead or key in self._passed or not 0 < size <= self.largest:
                continue
            if self._ahead_bytes + size > self.budget:
                break
            if self._cache.prefetch(key, size):
                self._ahead[key] = (size, folder, j, now)
                self._ahead_bytes += size
                self.started += 1
                busy += 1
        else:
            j = min(len(names), i + 1 + window)
        self._frontier[folder] = (names, j)
        if len(self._frontier) > _LISTINGS:
            self._frontier.pop(next(iter(self._frontier)))
