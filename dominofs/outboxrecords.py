"""The outbox's records: a queued entry, a kept conflict, a conflict copy's name, the queue's
tables. Shared by the queue (outbox.py) and its sending half (outboxsend.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from .models import UploadResult

Op = Literal["upload", "delete"]
DeleteOutcome = Literal["deleted", "kept_local", "changed_remotely"]

OnUploaded = Callable[[str, UploadResult, Path, "Entry"], None]
OnConflict = Callable[[str, str, UploadResult, Path, "Entry"], None]
OnDeleted = Callable[[str, DeleteOutcome, "Entry"], None]

SCHEMA = """
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

COLUMNS = "id, path, op, staged, base_key, attempts, last_error, state, meta, created, sending"


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


def entry_from_row(row: tuple[Any, ...]) -> Entry:
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


def unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
