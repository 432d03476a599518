"""What every domino:// filesystem of a process shares: clients, listings, head pointers.

Owns: one DominoClient per (host, key, timeouts) in each process (fsspec makes an instance per
thread, and dask a thread per task: they must share one connection pool and one cache), the
bounded LRU of commit listings (a commit's files never change, so a listing never expires),
the head pointer of each project (expires after `ttl` seconds; only it is ever asked again),
and this process's own writes and deletions laid over the head's listing until a listing taken
after them shows them. After a fork the child starts empty: a new HTTP session, no inherited
sockets or locks. Must not know fsspec, files or paths beyond the project-relative ones, and
must never hold the key anywhere but in its client (the registry is keyed by its sha256).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..api import DominoClient, ProjectClient
from ..config import Settings
from ..models import ProjectRef, RemoteFile
from ..tree import Tree

DEFAULT_MAX_FILES = 200_000  # files of all kept listings together: about 100 MB
_MAX_LISTINGS = 64


class View:
    """A listing as the filesystem answers from it, with this process's own changes since laid
    over it: immutable, shared by threads.

    A file or folder question is answered from the listing and the changes; the merged tree
    that `children` and `files_under` need is built on first use only, so a run of writes into
    a big project (each checks its path) rebuilds nothing.
    """

    __slots__ = ("_base", "_changes", "_merged", "_paths", "commit", "entries", "fresh", "listing")

    def __init__(
        self,
        listing: Tree,
        changes: Mapping[str, RemoteFile | None] | None = None,
        base: View | None = None,
    ) -> None:
        self.listing = listing
        self.commit = listing.commit_id
        self._changes = dict(changes or {})  # path -> our upload, or None for our deletion
        self._base = base  # the view of `listing` alone: its sorted paths are reused
        self.fresh = frozenset(p for p, f in self._changes.items() if f is not None)
        self._merged: Tree | None = None if self._changes else listing
        self._paths: list[str] | None = None
        # What the filesystem made of a file's entry, by (the caller's project root, path):
        # a glob and the info of each name it found build it once.
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def tree(self) -> Tree:
        """The listing with the changes applied (built once, on first use)."""
        tree = self._merged
        if tree is None:
            files = dict(self.listing.files)
            for path, file in self._changes.items():
                if file is None:
                    files.pop(path, None)
                else:
                    files[path] = file
            tree = self._merged = Tree(self.commit, files.values())
        return tree

    def file(self, rel: str) -> RemoteFile | None:
        if rel in self._changes:
            return self._changes[rel]
        return self.listing.file(rel)

    def is_dir(self, rel: str) -> bool:
        if not rel:
            return True  # the project's root
        if self._merged is not None:
            return self._merged.is_dir(rel)
        prefix = rel + "/"
        if any(f is not None and p.startswith(prefix) for p, f in self._changes.items()):
            return True
        if not self.listing.is_dir(rel):
            return False
        # A folder of the listing is gone only when we deleted every file in it.
        under = self._base.files_under(rel) if self._base else []
        return any(self._changes.get(p, True) is not None for p in under)

    def children(self, rel: str) -> tuple[str, ...] | None:
        return self.tree.children(rel)

    def commit_of(self, rel: str) -> str | None:
        """The commit a file's entry comes from (None for one written here since)."""
        return None if rel in self.fresh else self.commit

    def files_under(self, rel: str) -> list[str]:
        """Sorted paths of the files in folder `rel` and below ('' is the whole project)."""
        paths = self._paths
        if paths is None:
            # A benign race: two threads may sort the same list once each.
            paths = self._paths = sorted(self.tree.files)
        if not rel:
            return paths
        return paths[bisect_left(paths, rel + "/") : bisect_left(paths, rel + "0")]


@dataclass(eq=False)
class _Head:
    """A project's head: its listing, when it was asked for, and our changes since."""

    view: View | None = None
    checked: float = -math.inf
    seq: int = 0  # own changes completed so far
    overlay: dict[str, tuple[int, RemoteFile | None]] = field(default_factory=dict)
    merged: View | None = None


class Shared:
    """One process's state for one (host, key): see the module docstring."""

    def __init__(self, settings: Settings, *, max_files: int = DEFAULT_MAX_FILES) -> None:
        self.host = settings.host
        self.pid = os.getpid()
        self.client = DominoClient.from_settings(settings)
        self.max_files = max_files
        self._lock = threading.Lock()
        self._projects: dict[ProjectRef, ProjectClient] = {}
        self._fetching: dict[ProjectRef, threading.Lock] = {}  # one listing fetch at a time
        self._views: OrderedDict[tuple[ProjectRef, str], View] = OrderedDict()
        self._kept_files = 0
        self._heads: dict[ProjectRef, _Head] = {}

    def __repr__(self) -> str:
        return f"Shared({self.host!r})"

    def project(self, ref: ProjectRef) -> ProjectClient:
        with self._lock:
            pc = self._projects.get(ref)
            if pc is None:
                pc = self._projects[ref] = self.client.project(ref)
            return pc

    def view(self, ref: ProjectRef, commit: str | None, *, ttl: float, refresh: bool) -> View:
        """The listing of `commit` (kept for good), or of head (asked again after `ttl`).

        Raises:
            DominoError: the server's answer (NotFound for an unknown project or commit).
        """
        if commit is not None:
            return self._commit_view(ref, commit)
        asked = time.monotonic()
        with self._lock:
            head = self._head(ref)
            if head.view is not None and not refresh and asked - head.checked < ttl:
                return self._merged(head)
        with self._fetch_lock(ref):
            with self._lock:
                # Another thread asked while this one waited: a listing asked for since this
                # call began (for refresh), or still young enough (for the rest).
                young = not refresh and time.monotonic() - head.checked < ttl
                if head.view is not None and (head.checked >= asked or young):
                    return self._merged(head)
                seen = head.seq
            started = time.monotonic()
            view = self._commit_view(ref, self.project(ref).head_commit(), locked=True)
            with self._lock:
                head.view, head.checked, head.merged = view, started, None
                # Changes that completed before the commits request are in this listing.
                head.overlay = {p: e for p, e in head.overlay.items() if e[0] > seen}
                return self._merged(head)

    def changed(self, ref: ProjectRef, path: str, file: RemoteFile | None) -> None:
        """Our upload (`file`) or deletion (None) of `path` completed: show it at once."""
        with self._lock:
            head = self._head(ref)
            head.seq += 1
            head.overlay[path] = (head.seq, file)
            head.merged = None

    def expire(self, ref: ProjectRef | None = None) -> None:
        """Forget the head pointer of `ref` (of every project for None); listings stay."""
        with self._lock:
            for key, head in self._heads.items():
                if ref is None or key == ref:
                    head.checked = -math.inf

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"listings": len(self._views), "files": self._kept_files}

    # -- needs self._lock, or takes it -------------------------------------------------------

    def _head(self, ref: ProjectRef) -> _Head:
        """The head record of `ref`, made on first use. Needs self._lock."""
        head = self._heads.get(ref)
        if head is None:
            head = self._heads[ref] = _Head()
        return head

    def _merged(self, head: _Head) -> View:
        """The head's listing with our own changes laid over it. Needs self._lock."""
        if head.merged is None:
            base = head.view
            assert base is not None
            changes = {path: file for path, (_, file) in head.overlay.items()}
            head.merged = View(base.listing, changes, base) if changes else base
        return head.merged

    def _fetch_lock(self, ref: ProjectRef) -> threading.Lock:
        with self._lock:
            lock = self._fetching.get(ref)
            if lock is None:
                lock = self._fetching[ref] = threading.Lock()
            return lock

    def _commit_view(self, ref: ProjectRef, commit: str, *, locked: bool = False) -> View:
        """A commit's listing from the LRU, or fetched once however many threads ask.
        `locked`: the caller holds this project's fetch lock."""
        key = (ref, commit)
        with self._lock:
            view = self._views.get(key)
            if view is not None:
                self._views.move_to_end(key)
                return view
        if not locked:
            with self._fetch_lock(ref):
                return self._commit_view(ref, commit, locked=True)
        with self._lock:
            view = self._views.get(key)
        if view is None:
            view = View(Tree(commit, self.project(ref).list_files(commit)))
        with self._lock:
            if key not in self._views:
                self._views[key] = view
                self._kept_files += len(view.listing)
                while len(self._views) > 1 and (
                    self._kept_files > self.max_files or len(self._views) > _MAX_LISTINGS
                ):
                    _, old = self._views.popitem(last=False)
                    self._kept_files -= len(old.listing)
            return view


_registry: dict[tuple[str, str, float, float], Shared] = {}
_registry_lock = threading.Lock()


def shared_for(settings: Settings, *, max_files: int = DEFAULT_MAX_FILES) -> Shared:
    """This process's Shared for the settings' host, key and timeouts."""
    fingerprint = hashlib.sha256(settings.api_key.encode("utf-8", "surrogateescape")).hexdigest()
    key = (settings.host, fingerprint, settings.connect_timeout, settings.read_timeout)
    with _registry_lock:
        shared = _registry.get(key)
        if shared is None:
            shared = _registry[key] = Shared(settings, max_files=max_files)
        return shared


def _forget_after_fork() -> None:
    # The parent's sessions, sockets and locks (maybe held by a thread that does not exist
    # here) must not be used by the child: it starts with none and builds its own.
    global _registry, _registry_lock
    _registry = {}
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
