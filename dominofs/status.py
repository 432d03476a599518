"""Status files and the per-user registry of running mounts and syncs.

Owns: writing a status JSON atomically (temp file + rename), one small registry JSON per running
sync or mount under `config.default_state_dir()/registry`, and `collect()`, which merges every
live registration with its status file (dead pids are skipped and their entries removed). Must
not talk to a server or import anything above models/errors/config.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .config import default_state_dir, ensure_private_dir

log = logging.getLogger(__name__)


def registry_dir() -> Path:
    """Where this user's running syncs and mounts register themselves."""
    return default_state_dir() / "registry"


def write_status(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON at `path` atomically, with `updated_at` set to now."""
    payload = dict(data)
    payload["updated_at"] = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _entry_path(kind: str, pid: int, directory: Path) -> Path:
    return directory / f"{kind}-{pid}.json"


def register(
    kind: str,
    project: str,
    path: Path | str,
    status_file: Path | str,
    *,
    directory: Path | None = None,
) -> Path:
    """Register this process as a running `kind` ("sync" or "mount"); returns the entry file."""
    directory = ensure_private_dir(directory or registry_dir())
    entry = _entry_path(kind, os.getpid(), directory)
    write_status(
        entry,
        {
            "kind": kind,
            "project": project,
            "path": str(path),
            "pid": os.getpid(),
            "status_file": str(status_file),
            "started_at": time.time(),
        },
    )
    return entry


def unregister(kind: str, *, directory: Path | None = None) -> None:
    """Remove this process's registration."""
    with contextlib.suppress(FileNotFoundError):
        _entry_path(kind, os.getpid(), directory or registry_dir()).unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect(*, directory: Path | None = None) -> list[dict[str, Any]]:
    """Every live registration merged with its status file's contents, sorted by path."""
    directory = directory or registry_dir()
    found: list[dict[str, Any]] = []
    try:
        children = sorted(directory.glob("*.json"))
    except OSError:
        return []
    for child in children:
        reg = read_status(child)
        if reg is None:
            continue
        pid = reg.get("pid")
        if not isinstance(pid, int) or not _alive(pid):
            log.debug("removing stale registration %s", child)
            with contextlib.suppress(OSError):
                child.unlink()
            continue
        merged: dict[str, Any] = {}
        status_file = reg.get("status_file")
        if isinstance(status_file, str):
            merged.update(read_status(Path(status_file)) or {})
        merged.update({k: reg[k] for k in ("kind", "project", "path", "pid", "status_file")})
        found.append(merged)
    return sorted(found, key=lambda d: (str(d.get("path")), str(d.get("kind"))))
