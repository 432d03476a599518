"""The server's durable state on disk: users, projects, commits and content-addressed blobs.

Owns everything under the data directory except run logs and endpoint state (runner.py and
endpoint.py keep theirs under each project's directory, which this module hands out).

Layout:
    meta.json                       users {name: {id, key}} and projects {"owner/name": {...}}
    blobs/ab/cdef...                blob bytes, key = blob_hasher() digest of the content
    tmp/                            uploads in flight (same filesystem, so rename is atomic)
    projects/<id>/commits.jsonl     append-only log, one line per commit {id, parent, time,
                                    message, changes}; its last complete line is the head
    projects/<id>/commits/<c>.json  the full file map of some commits (a shortcut, not needed)
    projects/<id>/keys.txt          every blob key any commit of the project ever referenced

Appends are fsynced before they count; every other file that matters is written to a temporary
name, fsynced and renamed, so a crash at any moment leaves either the old or the new version.
The head is not a file of its own: replacing one per commit cost two fsyncs and freed an inode
each time, and on ext4 without a journal new files skip recently freed inodes one by one (under
a burst of uploads a third of the server's CPU went there). Writers to one project hold
Project.lock; the file maps of recent commits are cached in memory (bounded LRU) so listings
stay fast.
Must not import anything from dominofs outside dominofs/server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

CHUNK = 1 << 20
COMMIT_CACHE_SIZE = 8
SNAPSHOT_EVERY = 64  # a full file map on disk at least every this many commits

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


class Hasher(Protocol):
    """The part of hashlib's hash objects the store uses."""

    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def blob_hasher() -> Hasher:
    """The one definition of a blob key: plain sha1 of the content (notes §7.2)."""
    return hashlib.sha1()


def new_object_id() -> str:
    """A Mongo-style 24-hex id, as Domino uses for projects, users and runs."""
    return secrets.token_hex(12)


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


def write_atomic(path: Path, data: bytes) -> None:
    """Write data to path so a crash leaves the old or the new content, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync_dir(path: Path) -> None:
    """Make the names in a directory (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Content-addressed blob files under blobs/ab/cdef..."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:]

    def exists(self, key: str) -> bool:
        return len(key) == 40 and self.path(key).is_file()

    def _install(self, tmp_path: str, key: str) -> None:
        """Move a finished, fsynced temp file into place (or drop it if the blob exists)."""
        dest = self.path(key)
        if dest.exists():
            os.unlink(tmp_path)
            return
        if not dest.parent.is_dir():
            dest.parent.mkdir(exist_ok=True)
            fsync_dir(self.root)
        os.replace(tmp_path, dest)  # the commit that first uses key fsyncs dest.parent

    async def ingest_stream(self, chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        """Stream chunks to a temp file while hashing; never holds the whole body in memory."""
        loop = asyncio.get_running_loop()
        fd, tmp_path = tempfile.mkstemp(dir=self.tmp, prefix="upload-")
        hasher = blob_hasher()
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    hasher.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                # fsync can take long for big files; keep the event loop free meanwhile.
                await loop.run_in_executor(None, os.fsync, f.fileno())
            key = hasher.hexdigest()
            await loop.run_in_executor(None, self._install, tmp_path, key)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)
            raise
        return key, size

    def ingest_bytes(self, data: bytes) -> tuple[str, int]:
        hasher = blob_hasher()
        hasher.update(data)
        key = hasher.hexdigest()
        if not self.exists(key):
            fd, tmp_path = tempfile.mkstemp(dir=self.tmp, prefix="bytes-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._install(tmp_path, key)
        return key, len(data)

    def ingest_file(self, src: Path) -> tuple[str, int]:
        """Copy a local file (a run's output) into the store; blocking, run it in an executor."""
        fd, tmp_path = tempfile.mkstemp(dir=self.tmp, prefix="file-")
        hasher = blob_hasher()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                while chunk := inp.read(CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            key = hasher.hexdigest()
            self._install(tmp_path, key)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)
            raise
        return key, size


def hash_file(path: Path) -> str:
    hasher = blob_hasher()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


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
