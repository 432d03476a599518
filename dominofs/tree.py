"""A commit's flat files list as a directory tree, the diff between two trees, and persistence.

Owns: deriving directories from file paths (the API has no directories, CONTRACT §2), answering
"is this a file, a folder, or nothing" and "what is in this folder" from memory, the diff that
tells the mount which paths changed between two commits, and the JSON form of a listing kept on
disk so a mount can start offline. Must not talk to a server, touch the cache or know FUSE.
A Tree is immutable once built: readers share it without a lock and a refresh swaps in a new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import DominoError
from .models import RemoteFile, clean_relpath

_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Diff:
    """Paths (project-relative) that differ between two trees."""

    added: frozenset[str]
    removed: frozenset[str]
    changed: frozenset[str]
    dirs_added: frozenset[str]
    dirs_removed: frozenset[str]

    @property
    def empty(self) -> bool:
        return not (
            self.added or self.removed or self.changed or self.dirs_added or self.dirs_removed
        )

    def touched(self) -> frozenset[str]:
        """Every path whose entry changed, plus the folders whose contents changed."""
        paths = set(self.added | self.removed | self.changed | self.dirs_added | self.dirs_removed)
        for p in self.added | self.removed | self.dirs_added | self.dirs_removed:
            paths.add(parent_of(p))
        return frozenset(paths)


def parent_of(path: str) -> str:
    """The folder holding `path` ('' is the project root)."""
    return path.rsplit("/", 1)[0] if "/" in path else ""


class Tree:
    """One commit's files, with folders derived from their paths. Immutable; share freely."""

    __slots__ = ("_children", "commit_id", "files")

    def __init__(self, commit_id: str, files: Iterable[RemoteFile]) -> None:
        self.commit_id = commit_id
        self.files: dict[str, RemoteFile] = {}
        children: dict[str, set[str]] = {"": set()}
        for f in files:
            path = clean_relpath(f.path)
            if path is None or path in children:
                continue  # unsafe, or a name that is already a folder: the folder wins
            self.files[path] = f
            child = path
            while True:
                parent = parent_of(child)
                name = child.rsplit("/", 1)[-1]
                known = parent in children
                children.setdefault(parent, set()).add(name)
                if known or parent == "":
                    break
                child = parent
        # A file shadowed by a deeper path is a folder (api.parse_listing does the same).
        for clash in self.files.keys() & children.keys():
            del self.files[clash]
        self._children: dict[str, tuple[str, ...]] = {
            d: tuple(sorted(names)) for d, names in children.items()
        }

    def __len__(self) -> int:
        return len(self.files)

    def file(self, path: str) -> RemoteFile | None:
        """The file at `path`, or None (a folder or nothing)."""
        return self.files.get(path)

    def is_dir(self, path: str) -> bool:
        return path in self._children

    def children(self, path: str) -> tuple[str, ...] | None:
        """Sorted names in folder `path`, or None if it is not a folder."""
        return self._children.get(path)

    def dirs(self) -> Iterable[str]:
        return self._children.keys()

    def diff(self, new: Tree) -> Diff:
        """What changed from this tree to `new` (a path's key or size differing is a change)."""
        old_files, new_files = self.files, new.files
        added = new_files.keys() - old_files.keys()
        removed = old_files.keys() - new_files.keys()
        changed = {
            p
            for p in old_files.keys() & new_files.keys()
            if (old_files[p].key, old_files[p].size, old_files[p].mtime_ms)
            != (new_files[p].key, new_files[p].size, new_files[p].mtime_ms)
        }
        dirs_added = new._children.keys() - self._children.keys()
        dirs_removed = self._children.keys() - new._children.keys()
        return Diff(
            frozenset(added),
            frozenset(removed),
            frozenset(changed),
            frozenset(dirs_added),
            frozenset(dirs_removed),
        )

    # -- persistence --------------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        return {
            "format": _FORMAT,
            "commit": self.commit_id,
            "files": [[f.path, f.size, f.mtime_ms, f.key] for f in self.files.values()],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Tree:
        """Rebuild a tree saved by to_json.

        Raises:
            DominoError: the data is not a saved listing.
        """
        try:
            if data.get("format") != _FORMAT:
                raise ValueError("unknown format")
            commit = data["commit"]
            rows = data["files"]
            if not isinstance(commit, str) or not isinstance(rows, list):
                raise ValueError("bad shape")
            files = [
                RemoteFile(path=str(p), size=int(s), mtime_ms=int(m), key=str(k))
                for p, s, m, k in rows
            ]
        except (KeyError, ValueError, TypeError) as exc:
            raise DominoError(f"saved listing is unreadable: {exc}") from None
        return cls(commit, files)

    def save(self, path: Path) -> None:
        """Write the listing to `path` atomically (a crash leaves the old or the new one)."""
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.to_json(), fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Tree | None:
        """The listing saved at `path`, or None if there is none or it is unreadable."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        try:
            return cls.from_json(data)
        except DominoError:
            return None
