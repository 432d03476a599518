"""What the v1 API answers, checked and turned into models records: never trusted as sent.

Owns: the shapes of the files list (a hostile entry is skipped, never followed), a run object,
the commits list (strings, as deployments answer; objects with an `id` accepted too) and the
`{"data": [...]}` wrapper. Pure functions of parsed JSON: no HTTP, no I/O. Must not import
anything above models and errors.
"""

from __future__ import annotations

import logging
from typing import Any, TypeGuard

from .errors import ServerError
from .models import RemoteFile, Run, clean_relpath

log = logging.getLogger(__name__)

BAD_KEY_CHARS = frozenset("/\\?#% \0")
"""Characters no blob key may hold: a key goes into a URL path."""


def parse_commits(data: Any, *, host: str, what: str) -> list[str]:
    """Commit ids, newest first, from a commits answer.

    Deployments answer a list of id strings; a list of objects with a string `id` (the v4
    shape, which python-domino's `files_download` expects) is accepted too.

    Raises:
        ServerError: anything else.
    """
    if isinstance(data, list):
        ids = [c.get("id") if isinstance(c, dict) else c for c in data]
        if all(isinstance(c, str) and c for c in ids):
            return [str(c) for c in ids]
    raise ServerError(f"{host} ({what}): not a list of commit ids")


def parse_listing(data: Any, *, host: str, what: str) -> list[RemoteFile]:
    """Turn a files-list answer into RemoteFiles, skipping every entry that is unsafe.

    Skipped (with one logged error each kind): unsafe paths, non-integer or negative sizes,
    missing keys, duplicates, and a file whose path is also a folder of other files.
    """
    files: dict[str, RemoteFile] = {}
    skipped: dict[str, int] = {}
    for item in list_data(data, host, what):
        reason = None
        path = clean_relpath(item.get("path")) if isinstance(item, dict) else None
        if not isinstance(item, dict):
            reason = "not an object"
        elif path is None:
            reason = "unsafe path"
        else:
            size, key, mtime = item.get("size"), item.get("key"), item.get("lastModified", 0)
            if not is_int(size) or size < 0 or size > 1 << 50:
                reason = "bad size"
            elif not isinstance(key, str) or not key or BAD_KEY_CHARS.intersection(key):
                reason = "bad key"
            elif path in files:
                reason = "duplicate path"
            else:
                files[path] = RemoteFile(
                    path=path,
                    size=int(size),
                    mtime_ms=int(mtime) if is_int(mtime) and 0 <= mtime < 1 << 53 else 0,
                    key=key,
                    url=str(item.get("url") or ""),
                )
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
    # A name cannot be a file and a folder at once: the folder (the deeper paths) wins.
    folders = {p.rsplit("/", 1)[0] for p in files if "/" in p}
    folders |= {f.rsplit("/", i)[0] for f in folders for i in range(1, f.count("/") + 1)}
    for clash in folders & files.keys():
        del files[clash]
        skipped["file and folder share a name"] = skipped.get("file and folder share a name", 0) + 1
    for reason, count in skipped.items():
        log.error("%s (%s): skipped %d listing entries: %s", host, what, count, reason)
    return sorted(files.values(), key=lambda f: f.path)


def parse_run(data: Any) -> Run:
    """A Run from one run object of the API.

    Raises:
        ServerError: not a JSON object with a string `id`.
    """
    if not is_run(data):
        raise ServerError("the server sent a run that is not an object with a string id")

    def opt_int(name: str) -> int | None:
        v = data.get(name)
        return int(v) if is_int(v) else None

    def opt_str(name: str) -> str | None:
        v = data.get(name)
        return v if isinstance(v, str) else None

    return Run(
        id=str(data["id"]),
        number=opt_int("number"),
        status=str(data.get("status") or "Unknown"),
        title=opt_str("title"),
        commit_id=opt_str("commitId"),
        output_commit_id=opt_str("outputCommitId"),
        queued_ms=opt_int("queued"),
        started_ms=opt_int("started"),
        completed_ms=opt_int("completed"),
        is_completed=bool(data.get("isCompleted")),
        raw=dict(data),
    )


def is_run(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("id"), str)


def is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def list_data(data: Any, host: str, what: str) -> list[Any]:
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return list(data["data"])
    if isinstance(data, list):
        return data
    raise ServerError(f"{host} ({what}): answer is not a list")
