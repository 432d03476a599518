"""Where each blob key can be read by path: key -> (commit, path), learned from listings.

Owns: the client's memory of the listings it has seen, so that a blob can be read through
Domino's path-based content route (`/api/projects/v1/projects/{id}/files/{commit}/{path}/
content`) on a deployment that has dropped the key-based v1 blob route. Every reader gets a
listing (or loads a saved one) before it reads, so the location of every key it can ask for is
known by then. Must not import requests or anything above models.

Why an entry stays true: a key names bytes, and a commit never changes, so any (commit, path)
a listing ever gave for a key serves that key's bytes forever. A newer listing's location
replaces an older one only to let the older listing's strings go.

Bounded: past twice the largest listing plus `spare` (100,000) entries, the keys of the
least recently listed commits are forgotten first, down to the largest listing plus `spare`,
always keeping the newest listing of the whole project (prefix listings, such as the outbox's
conflict check, come after it). So keys only older commits have, which a reader that opened an
old version may still need, outlive at least `spare` keys of churn. Thread-safe: one lock, held
for a dict update per listing (20-30 ms for 100,000 files here) and a dict lookup per read.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

from .models import RemoteFile

DEFAULT_SPARE = 100_000


class Locations:
    """key -> (commit id, path) of the listings seen; see the module docstring."""

    __slots__ = ("_age", "_clock", "_largest", "_lock", "_spare", "_where", "_whole")

    def __init__(self, *, spare: int = DEFAULT_SPARE) -> None:
        self._lock = threading.Lock()
        self._where: dict[str, tuple[str, str]] = {}
        self._age: dict[str, int] = {}  # commit -> the clock when it was last learned
        self._clock = 0
        # The largest listing seen, not the newest: a prefix listing (the outbox's conflict
        # check lists one folder) must not shrink the bound below the whole project.
        self._largest = 0
        self._whole = ""  # the commit of the newest listing of (about) the whole project
        self._spare = spare

    def __len__(self) -> int:
        return len(self._where)

    def learn(self, commit_id: str, files: Iterable[RemoteFile]) -> None:
        """Remember where each of `files` (a listing of `commit_id`) can be read."""
        with self._lock:
            where = self._where
            n = 0
            for n, f in enumerate(files, 1):  # noqa: B007 (n counts the files)
                where[f.key] = (commit_id, f.path)
            self._clock += 1
            self._age[commit_id] = self._clock
            self._largest = max(self._largest, n)
            if 2 * n >= self._largest:
                self._whole = commit_id
            if len(where) > 2 * (self._largest + self._spare):
                self._forget_oldest()

    def find(self, key: str) -> tuple[str, str] | None:
        """(commit id, path) of a listing that named `key`, or None."""
        with self._lock:
            return self._where.get(key)

    def _forget_oldest(self) -> None:
        """Keep the newest whole-project listing's entries and those of the most recently
        learned commits, up to the largest listing plus `spare`; forget the older ones. Half
        the slack goes at once, so this O(n) pass is rare. Caller holds the lock."""
        per_commit = Counter(c for c, _ in self._where.values())
        budget = self._largest + self._spare
        # The whole listing stays even when many small (prefix) listings came after it: its
        # keys are what the mount's tree holds.
        kept = {self._whole}
        total = per_commit.get(self._whole, 0)
        for commit in sorted(self._age, key=self._age.__getitem__, reverse=True):
            if commit in kept:
                continue
            total += per_commit.get(commit, 0)
            if total > budget:
                break
            kept.add(commit)
        self._where = {k: v for k, v in self._where.items() if v[0] in kept}
        self._age = {c: a for c, a in self._age.items() if c in kept}
