"""What `.dominofs/status.json` (and the mount's status file) shows (CONTRACT §4).

Owns: rendering a mount's state as one JSON object: the project and commit, reachability and
the last error, the queue (pending uploads, including writes not queued yet, failures,
conflicts, deletions kept local), the cache's counters, open handles, and what the local layer
holds that never goes to the server, and the read-ahead across files (its budget and counters).
Must not change anything it reads.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from ..cache import BlobCache
from ..models import Remote
from ..outbox import Outbox
from .inodes import Namespace
from .prefetch import Prefetcher

_TOTALS_MAX_AGE = 2.0  # the totals walk every inode: the status file's are at most this old


class StatusView:
    """Renders one mount's status; the local-only totals are recomputed at most every 2 s."""

    def __init__(
        self,
        remote: Remote,
        ns: Namespace,
        cache: BlobCache,
        prefetcher: Prefetcher,
        lock: threading.Lock,
    ) -> None:
        self._lock = lock  # the VFS's: a close moves a write from "open" to "queued" under it
        self._remote = remote
        self._ns = ns
        self._cache = cache
        self._prefetcher = prefetcher
        self._totals: tuple[float, tuple[int, int]] = (-_TOTALS_MAX_AGE, (0, 0))

    def render(
        self,
        *,
        pinned: bool,
        read_only: bool,
        reachable: bool,
        last_refresh: float | None,
        last_error: str | None,
        open_handles: int,
        outbox: Outbox | None,
        fresh: bool = True,
    ) -> dict[str, Any]:
        ns = self._ns
        objects, size = self._local_totals(fresh)
        out: dict[str, Any] = {
            "project": str(self._remote.project),
            "host": self._remote.host,
            "commit": ns.tree.commit_id,
            "pinned": pinned,
            "read_only": read_only,
            "files": len(ns.tree),
            "server_reachable": reachable,
            "last_refresh": last_refresh,
            "last_error": last_error or self._cache.last_error,
            "pending_uploads": 0,
            "pending": [],
            "failed": [],
            "conflicts": [],
            "deletions_kept_local": [],
            "cache": self._cache.stats(),
            "open_handles": open_handles,
            "local_only": {"objects": objects, "bytes": size},
            "prefetch": self._prefetcher.status(),
        }
        if outbox is not None:
            self._outbox_status(out, outbox, bool(last_error))
        return out

    def _local_totals(self, fresh: bool) -> tuple[int, int]:
        made, totals = self._totals
        now = time.monotonic()
        if fresh or now - made >= _TOTALS_MAX_AGE:
            try:
                totals = self._ns.local_totals()
            except RuntimeError:  # the table changed under the walk: the last figures stand
                return totals
            self._totals = (now, totals)
        return totals

    def _outbox_status(self, out: dict[str, Any], outbox: Outbox, has_error: bool) -> None:
        # Both under the VFS lock: a close that queued its write between the two reads was
        # counted in neither (`dominofs status --wait` returned with an upload still to come).
        with self._lock:
            st = outbox.status()
            # Written but not queued yet (still open, or closed a moment ago): pending too.
            unqueued: list[str] = []
            for node in list(self._ns.writing.values()):
                if node.dirty and node.names:
                    unqueued += [
                        p[1:] for p in node.names if not self._ns.is_local_only(p, node.mode)
                    ]
        for k in ("pending_uploads", "pending", "failed", "conflicts"):
            out[k] = st[k]
        out["pending_uploads"] += len(unqueued)
        out["pending"] = [*out["pending"], *({"path": p, "op": "write"} for p in unqueued)]
        out["deletions_kept_local"] = st["deletions_kept_local"]
        if st["server_reachable"] is False:
            out["server_reachable"] = False
        if st["last_error"] and not has_error:
            out["last_error"] = st["last_error"]


def status_bytes(status: dict[str, Any]) -> bytes:
    return (json.dumps(status, indent=2, sort_keys=True) + "\n").encode("utf-8")
