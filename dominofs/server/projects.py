"""One project's history on disk: the commit log, snapshots, the key set and group commit.

Owns, under projects/<id>/ (a folder Store hands out; runner.py and endpoint.py keep their own
files beside these):
    commits.jsonl     append-only log, one line per commit {id, parent, time, message,
                      changes}; its last complete line is the head
    commits/<c>.json  the full file map of some commits (a shortcut, not needed)
    keys.txt          every blob key any commit of the project ever referenced

Appends are fsynced before they count; a snapshot is written to a temporary name, fsynced and
renamed, so a crash at any moment leaves either the old or the new version. The head is not a
file of its own: replacing one per commit cost two fsyncs and freed an inode each time, and on
ext4 without a journal new files skip recently freed inodes one by one (under a burst of uploads
a third of the server's CPU went there). Writers to one project hold Project.lock; the file maps
of recent commits are cached in memory (bounded LRU) so listings stay fast.
Must not write blobs (it only makes their names durable) or meta.json, and must not import
anything from dominofs outside dominofs/server.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .blobs import fsync_dir, write_atomic
from .commits import (
    CommitInfo,
    Conflict,
    FileEntry,
    FileMap,
    NotFound,
    check_shape,
    commit_id_for,
    folders_of,
    now_ms,
    parents,
)

COMMIT_CACHE_SIZE = 8
SNAPSHOT_EVERY = 64  # a full file map on disk at least every this many commits


class _Files:
    """A commit's file map, and its paths sorted when first asked for (then kept)."""

    __slots__ = ("_paths", "files")

    def __init__(self, files: FileMap) -> None:
        self.files = files
        self._paths: list[str] | None = None

    def paths(self) -> list[str]:
        paths = self._paths
        if paths is None:
            # Two threads may both sort: the same result, so no lock.
            paths = self._paths = sorted(self.files)
        return paths


@dataclass
class Project:
    """One project: its commits, its head and the blob keys it may serve."""

    id: str
    owner: str
    name: str
    dir: Path
    created: int
    head: str = ""
    index: dict[str, CommitInfo] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _cache: OrderedDict[str, _Files] = field(default_factory=OrderedDict)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock)
    _folders: OrderedDict[str, set[str]] = field(default_factory=OrderedDict)
    blob_root: Path = Path("blobs")  # the store's blobs/ folder (Store sets it)
    # commit id -> its changes (None deletes), for commits whose log line carries them
    _deltas: dict[str, dict[str, FileEntry | None]] = field(default_factory=dict)
    # commit id -> how many commits back its nearest snapshot file is (0: it has one)
    _depth: dict[str, int] = field(default_factory=dict)
    _torn: bool = False  # commits.jsonl may end in a partial line
    _pending: list[tuple[dict[str, FileEntry | None], str, asyncio.Future[str]]] = field(
        default_factory=list
    )
    _committer: asyncio.Task[None] | None = None

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def commits(self) -> list[str]:
        """Commit ids reachable from head, newest first."""
        out: list[str] = []
        cur: str | None = self.head or None
        while cur is not None and cur in self.index:
            out.append(cur)
            cur = self.index[cur].parent
        return out

    def resolve(self, commit: str) -> str:
        """Map a commit id (or the extension aliases head/latest/master) to a known id."""
        if commit in ("head", "latest", "master", "HEAD") and self.head:
            return self.head
        if commit in self.index:
            return commit
        raise NotFound(f"commit {commit!r} not found in project {self.full_name}")

    def files(self, commit: str) -> tuple[FileMap, list[str]]:
        """The file map of a commit and its sorted paths (cached; blocking on a miss)."""
        entry = self._entry(commit)
        return entry.files, entry.paths()

    def file_map(self, commit: str) -> FileMap:
        """The file map of a commit (cached; do not mutate it), without sorting its paths."""
        return self._entry(commit).files

    def _entry(self, commit: str) -> _Files:
        with self._cache_lock:
            hit = self._cache.get(commit)
            if hit is not None:
                self._cache.move_to_end(commit)
                return hit
        chain: list[dict[str, FileEntry | None]] = []
        cur: str | None = commit
        files: FileMap = {}
        while cur is not None:
            with self._cache_lock:
                hit = self._cache.get(cur)
            if hit is not None:
                files = dict(hit.files)
                break
            snapshot = self._read_snapshot(cur) if self._depth.get(cur, 0) == 0 else None
            if snapshot is not None:
                files = snapshot
                break
            delta = self._deltas.get(cur)
            info = self.index.get(cur)
            if delta is None or info is None:
                raise NotFound(f"commit {cur!r} of project {self.full_name} cannot be read")
            chain.append(delta)
            cur = info.parent
        for delta in reversed(chain):
            for path, change in delta.items():
                if change is None:
                    files.pop(path, None)
                else:
                    files[path] = change
        entry = _Files(files)
        self._remember(commit, entry)
        return entry

    def _read_snapshot(self, commit: str) -> FileMap | None:
        """The full file map stored in commits/<commit>.json, or None if there is none."""
        try:
            raw = json.loads((self.dir / "commits" / f"{commit}.json").read_bytes())
            return {p: FileEntry(*v) for p, v in raw["files"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def folders(self, commit: str) -> set[str]:
        """Every folder of a commit (cached; do not mutate the returned set)."""
        with self._cache_lock:
            hit = self._folders.get(commit)
        if hit is None:
            hit = folders_of(self.file_map(commit))
            self._remember_folders(commit, hit)
        return hit

    def _remember(self, commit: str, entry: _Files) -> None:
        with self._cache_lock:
            self._cache[commit] = entry
            self._cache.move_to_end(commit)
            while len(self._cache) > COMMIT_CACHE_SIZE:
                self._cache.popitem(last=False)

    def _remember_folders(self, commit: str, folders: set[str]) -> None:
        with self._cache_lock:
            self._folders[commit] = folders
            while len(self._folders) > COMMIT_CACHE_SIZE:
                self._folders.popitem(last=False)

    async def commit(self, changes: dict[str, FileEntry | None], message: str) -> str:
        """Queue changes as one new commit and wait until it is durable; returns its id.

        Group commit: while one batch is being written and fsynced, further requests queue up;
        the next batch makes each of them its own commit (a chain, in arrival order) and pays
        for one fsync pass and one head update. Raises Conflict / NotFound like write_commit.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        self._pending.append((changes, message, fut))
        if self._committer is None or self._committer.done():
            self._committer = loop.create_task(self._commit_loop())
        return await asyncio.shield(fut)

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            async with self.lock:
                batch, self._pending = self._pending, []
                try:
                    items = [(changes, message) for changes, message, _ in batch]
                    results = await loop.run_in_executor(None, self.write_commits, items)
                except BaseException as exc:  # the whole batch failed (I/O error)
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
            for (_, _, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    def write_commit(self, changes: dict[str, FileEntry | None], message: str) -> str:
        """Apply changes (None deletes) on top of head as one new commit; returns its id.

        The caller holds self.lock. Blocking (JSON + fsync): run it in an executor.
        Raises Conflict for a file/folder clash, NotFound when deleting what is not there.
        """
        (result,) = self.write_commits([(changes, message)])
        if isinstance(result, BaseException):
            raise result
        return result

    def write_commits(
        self, batch: list[tuple[dict[str, FileEntry | None], str]]
    ) -> list[str | Exception]:
        """Make each (changes, message) its own commit, chained on head, durable together.

        The caller holds self.lock; blocking. An item that clashes (Conflict) or deletes what is
        not there (NotFound) gets that exception instead of an id and makes no commit. Each
        commit is one line of commits.jsonl holding its changes (every SNAPSHOT_EVERY-th also
        gets a full file map in commits/<id>.json); the batch's lines and new keys are fsynced
        once for the whole batch. Nothing in memory changes unless all of it is durable.
        """
        head = self.head or None
        base = self.file_map(head) if head else {}
        files = dict(base)
        folders = set(self.folders(head)) if head else set()
        results: list[str | Exception] = []
        lines: list[str] = []
        new: list[tuple[CommitInfo, dict[str, FileEntry | None], int]] = []
        snapshots: list[tuple[str, dict[str, Any]]] = []
        new_keys: set[str] = set()
        parent = head
        depth = self._depth.get(head, 0) if head else 0
        for changes, message in batch:
            try:
                delta, folders = self._apply(files, changes, folders)
            except (Conflict, NotFound) as exc:
                results.append(exc)
                folders = folders_of(files)
                continue
            when = now_ms()
            cid = commit_id_for(parent, when, message, delta)
            depth = 0 if parent is None or depth + 1 >= SNAPSHOT_EVERY else depth + 1
            record: dict[str, Any] = {
                "id": cid,
                "parent": parent,
                "time": when,
                "message": message,
                "changes": {p: None if e is None else list(e) for p, e in delta.items()},
            }
            if depth == 0:
                record["snapshot"] = True
                full: dict[str, Any] = {"id": cid, "parent": parent, "time": when}
                full["message"] = message
                full["files"] = {p: list(e) for p, e in files.items()}
                snapshots.append((cid, full))
            lines.append(json.dumps(record) + "\n")
            new_keys |= {e.key for e in delta.values() if e is not None and e.key not in self.keys}
            new.append((CommitInfo(cid, parent, when, message), delta, depth))
            results.append(cid)
            parent = cid
        if not new:
            return results
        self._persist(lines, snapshots, new_keys)
        for info, delta, d in new:
            self.index[info.id] = info
            self._deltas[info.id] = delta
            self._depth[info.id] = d
        self.keys |= new_keys
        self.head = new[-1][0].id
        # Not sorted here: a burst of sequential commits would sort the whole project once per
        # commit (100,000 paths: 1.4 ms in order, 30 ms shuffled); a listing sorts once per
        # commit it shows.
        self._remember(self.head, _Files(files))
        self._remember_folders(self.head, folders)
        return results

    def _apply(
        self, files: FileMap, changes: dict[str, FileEntry | None], folders: set[str]
    ) -> tuple[dict[str, FileEntry | None], set[str]]:
        """Apply changes to files in place (all or nothing); returns the explicit delta.

        folders is the folder set of files before, updated in place; a deletion makes a new one,
        so use the returned set. After an exception, files is as it was but folders is not.
        """
        deletions = [path for path, entry in changes.items() if entry is None]
        removed: dict[str, FileEntry] = {}
        for path in deletions:
            doomed = [path] if path in files else [p for p in files if p.startswith(path + "/")]
            if not doomed:
                files.update(removed)
                raise NotFound(f"{path!r} not found")
            for p in doomed:
                removed[p] = files.pop(p)
        if deletions:
            folders = folders_of(files)
        delta: dict[str, FileEntry | None] = {p: None for p in removed}
        added: list[str] = []
        try:
            for path, entry in changes.items():
                if entry is None:
                    continue
                if path not in files:
                    check_shape(files, folders, path)
                    folders.update(parents(path))
                    added.append(path)
                else:
                    removed.setdefault(path, files[path])
                files[path] = entry
                delta[path] = entry
        except Conflict:
            for p in added:
                del files[p]
            files.update(removed)
            raise
        return delta, folders

    def _persist(
        self,
        lines: list[str],
        snapshots: list[tuple[str, dict[str, Any]]],
        new_keys: set[str],
    ) -> None:
        """Make a batch durable: snapshots, blob folders, keys, then the log lines (the commit
        point: the last complete line is the head)."""
        log_path = self.dir / "commits.jsonl"
        new_names = not log_path.exists() or not (self.dir / "keys.txt").exists()
        for cid, full in snapshots:
            write_atomic(self.dir / "commits" / f"{cid}.json", json.dumps(full).encode("utf-8"))
        if new_keys:
            # The blobs were renamed into place by their uploads; make those names durable.
            for folder in sorted({key[:2] for key in new_keys}):
                fsync_dir(self.blob_root / folder)
            with open(self.dir / "keys.txt", "a", encoding="ascii") as f:
                f.write("".join(k + "\n" for k in sorted(new_keys)))
                f.flush()
                os.fsync(f.fileno())
        with open(log_path, "a", encoding="utf-8") as f:
            # After a torn line (crash or failed write mid-append) start on a fresh line.
            f.write(("\n" if self._torn else "") + "".join(lines))
            self._torn = True
            f.flush()
            os.fsync(f.fileno())
            self._torn = False
        if new_names:
            fsync_dir(self.dir)  # the log's and keys.txt's names, once

    def load(self) -> None:
        """Read the commit index, head and key set back from disk.

        Lines written before group commit carry no "changes": their commits/<id>.json holds the
        full file map. Newer lines carry the commit's changes (a snapshot file only sometimes).
        """
        last: str | None = None
        index_path = self.dir / "commits.jsonl"
        if index_path.exists():
            text = index_path.read_text(encoding="utf-8")
            self._torn = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                try:
                    raw = json.loads(line)
                    info = CommitInfo(raw["id"], raw["parent"], raw["time"], raw["message"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn line from a crash mid-append: never acknowledged
                self.index[info.id] = info
                last = info.id
                changes = raw.get("changes")
                if changes is None or raw.get("snapshot"):
                    self._depth[info.id] = 0
                else:
                    parent_depth = self._depth.get(info.parent or "", 0)
                    self._depth[info.id] = parent_depth + 1
                if changes is not None:
                    self._deltas[info.id] = {
                        p: None if v is None else FileEntry(*v) for p, v in changes.items()
                    }
        head_path = self.dir / "HEAD"  # written by versions before the log decided the head
        if last is not None:
            self.head = last
        elif head_path.exists():
            self.head = head_path.read_text(encoding="ascii").strip()
        keys_path = self.dir / "keys.txt"
        if keys_path.exists():
            self.keys = {k for k in keys_path.read_text(encoding="ascii").split() if len(k) == 40}
