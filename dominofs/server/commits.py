"""What a commit is made of: file entries, commit records and ids, and the shape of a file map.

Owns no files: these are the values projects.py writes to and reads from each project's log,
and the rules every change must keep (a file and a folder never share a name). Times are
milliseconds since the epoch, as Domino gives them.
Must not touch the disk, and must not import anything from dominofs outside dominofs/server.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple


def now_ms() -> int:
    return int(time.time() * 1000)


class FileEntry(NamedTuple):
    key: str
    size: int
    last_modified: int


FileMap = dict[str, FileEntry]


class NotFound(Exception):
    """A commit, blob, user or project that does not exist."""


class Conflict(Exception):
    """A change that would make a file and a folder share a name."""


@dataclass(frozen=True)
class CommitInfo:
    id: str
    parent: str | None
    time: int
    message: str


def commit_id_for(
    parent: str | None, when: int, message: str, files: Mapping[str, FileEntry | None]
) -> str:
    """sha1 of the canonical commit record (its changes; None deletes): equal records, equal ids.

    The parent id chains the whole history in, so the full file map need not be hashed.
    """
    record = {
        "parent": parent,
        "time": when,
        "message": message,
        "files": {p: None if e is None else list(e) for p, e in sorted(files.items())},
    }
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()


def parents(path: str) -> list[str]:
    """Every folder above path: "a/b/c" -> ["a", "a/b"]."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def folders_of(files: Iterable[str]) -> set[str]:
    return {parent for path in files for parent in parents(path)}


def check_shape(files: FileMap, folders: set[str], path: str) -> None:
    """Raise Conflict if adding path would make a file and a folder share a name."""
    for parent in parents(path):
        if parent in files:
            raise Conflict(f"{parent!r} is a file, so it cannot hold {path!r}")
    if path in folders:
        raise Conflict(f"{path!r} is a folder")
