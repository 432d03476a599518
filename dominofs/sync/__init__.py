"""The sync service: a plain local folder kept in step with a project (CONTRACT §5).

A package of one service's nouns; the arrows point at what is imported, nothing points up:

    service ─► report ───┐
       ├─────► upload ───┼─► deletes ───► watcher ─► folder
       └─────► download ─┴─► symlinks ─────────────► folder
                (upload and download also use watcher and folder directly)

- service:  lifecycle, wiring, the loop, run_once and its verdict
- report:   status.json, the STATUS= summary, sd_notify
- upload:   local -> remote: the scan, one path's decision, the staging copy, the outbox hooks
- download: remote -> local: the poll, verified atomic downloads, remote deletions, adoption
- deletes:  deletion candidates and the mass-delete guard, --confirm-deletes
- symlinks: --links (a symlink as NAME.dominolink), reading and making links, the ones skipped
- watcher:  the watchdog observer and the per-path debounce
- folder:   DIR's paths, ignore rules, the shared lock and stop flag, safe reads and targets

State and queue live in DIR/.dominofs/ (never uploaded). No module imports requests or api.py:
the service receives a `models.Remote`.
"""

from __future__ import annotations

from .deletes import request_confirm_deletes
from .folder import safe_target
from .report import sd_notify
from .service import SyncError, SyncService

__all__ = ["SyncError", "SyncService", "request_confirm_deletes", "safe_target", "sd_notify"]
