"""The server's durable state on disk: the data directory, its users and its projects.

Owns the data directory and meta.json (users {name: {id, key}} and projects {"owner/name":
{...}}); the parts below it belong to:
    blobs/ab/cdef..., tmp/          blobs.py (content-addressed blob bytes, uploads in flight)
    projects/<id>/                  projects.py (commit log, snapshots, key set); runner.py and
                                    endpoint.py keep run logs and endpoint state there too
    scratch/                        runner.py and endpoint.py (checkouts)

meta.json is written to a temporary name, fsynced and renamed, so a crash leaves the old or the
new version. scripts/ and tests/load/ import FileEntry, Project, blob_hasher and now_ms from
here, so they are re-exported (__all__).
Must not import anything from dominofs outside dominofs/server.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .blobs import BlobStore, blob_hasher, write_atomic
from .commits import FileEntry, FileMap, now_ms
from .projects import Project

__all__ = [
    "DOMINOIGNORE_TEXT",
    "README_TEXT",
    "FileEntry",
    "Project",
    "Store",
    "User",
    "blob_hasher",
    "new_object_id",
    "now_ms",
]

README_TEXT = "# {name}\n\nA project served by the dominofs local server.\n"
DOMINOIGNORE_TEXT = """\
# This file lets you ignore certain files when syncing with the Domino server.
# Patterns use gitignore syntax: '*' is a wildcard, paths are relative to the project root,
# and a folder name ignores the folder and everything in it.
domino.log
dominodump-*
results/run-*/
.git
.gitignore
.svn/
.idea/
*.pyc
__pycache__/
.Rhistory
.RData
.Rproj.user/
*.asv
*.m~
.DS_Store
~*
"""


def new_object_id() -> str:
    """A Mongo-style 24-hex id, as Domino uses for projects, users and runs."""
    return secrets.token_hex(12)


@dataclass(frozen=True)
class User:
    id: str
    name: str
    key: str


class Store:
    """Users, projects and blobs under one data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = BlobStore(root / "blobs", root / "tmp")
        self.users: dict[str, User] = {}
        self.projects: dict[str, Project] = {}
        self._by_key: dict[str, User] = {}

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> Store:
        """Create or open the store; blocking, call before the event loop starts."""
        store = cls(Path(root).resolve())
        for sub in ("blobs", "tmp", "projects", "scratch"):
            (store.root / sub).mkdir(parents=True, exist_ok=True)
        for stale in (store.root / "tmp").iterdir():
            stale.unlink(missing_ok=True)  # half-received uploads from a crash
        meta_path = store.root / "meta.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            for name, u in meta.get("users", {}).items():
                store._set_user(User(u["id"], name, u["key"]))
            for full, p in meta.get("projects", {}).items():
                owner, name = full.split("/", 1)
                project = Project(
                    p["id"], owner, name, store.root / "projects" / p["id"], p["created"]
                )
                project.blob_root = store.blobs.root
                project.load()
                store.projects[full] = project
        return store

    def _set_user(self, user: User) -> None:
        old = self.users.get(user.name)
        if old is not None:
            self._by_key.pop(old.key, None)
        self.users[user.name] = user
        self._by_key[user.key] = user

    def _save_meta(self) -> None:
        meta: dict[str, Any] = {
            "users": {u.name: {"id": u.id, "key": u.key} for u in self.users.values()},
            "projects": {
                p.full_name: {"id": p.id, "created": p.created} for p in self.projects.values()
            },
        }
        write_atomic(self.root / "meta.json", json.dumps(meta, indent=1).encode("utf-8"))

    def add_user(self, name: str, key: str) -> User:
        """Add a user, or give an existing one this key."""
        if not name or not key or "/" in name:
            raise ValueError(f"bad user {name!r}: need NAME:KEY")
        old = self.users.get(name)
        user = User(old.id if old else new_object_id(), name, key)
        clash = self._by_key.get(key)
        if clash is not None and clash.name != name:
            raise ValueError(f"user {name!r} would share an API key with {clash.name!r}")
        self._set_user(user)
        self._save_meta()
        return user

    def add_project(self, full_name: str) -> Project:
        """Create OWNER/NAME with its first commit (README.md, .dominoignore); no-op if present."""
        if full_name in self.projects:
            return self.projects[full_name]
        owner, sep, name = full_name.partition("/")
        if not sep or not name or "/" in name:
            raise ValueError(f"bad project {full_name!r}: need OWNER/NAME")
        if owner not in self.users:
            raise ValueError(f"project {full_name!r}: owner {owner!r} is not a user")
        pid = new_object_id()
        project = Project(pid, owner, name, self.root / "projects" / pid, now_ms())
        for sub in ("commits", "runs"):
            (project.dir / sub).mkdir(parents=True, exist_ok=True)
        when = now_ms()
        files: FileMap = {}
        readme = README_TEXT.format(name=name)
        for path, text in ((".dominoignore", DOMINOIGNORE_TEXT), ("README.md", readme)):
            key, size = self.blobs.ingest_bytes(text.encode("utf-8"))
            files[path] = FileEntry(key, size, when)
        project.blob_root = self.blobs.root
        project.write_commit(dict(files), "Initial commit")
        self.projects[full_name] = project
        self._save_meta()
        return project

    def user_for_key(self, key: str) -> User | None:
        return self._by_key.get(key)

    def user_by_id(self, uid: str) -> User | None:
        return next((u for u in self.users.values() if u.id == uid), None)

    def project(self, owner: str, name: str) -> Project | None:
        return self.projects.get(f"{owner}/{name}")

    def project_by_id(self, pid: str) -> Project | None:
        return next((p for p in self.projects.values() if p.id == pid), None)

    def projects_of(self, owner: str) -> Iterable[Project]:
        return [p for p in self.projects.values() if p.owner == owner]
