"""The synced folder on local disk: where things live, what is ignored, how it is read.

Owns: the folder's paths (DIR, DIR/.dominofs/ and its tmp/), the ignore rules in force, the lock
that orders local file changes between the service loop and the outbox hooks, the stop request,
the last error met, and the helpers that read DIR safely (stat tuples, hashing, a stat-stable
copy) and decide where a download may write (`safe_target`). Shared by every part of one sync.
Must not talk to the server, the queue or the state database.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
from pathlib import Path
from typing import Any

from ..ignore import STATE_DIR_NAME, IgnoreRules
from ..models import clean_relpath

Stat = tuple[int, int, int]  # (size, mtime_ns, inode): what says a local file is unchanged


class Folder:
    """One synced folder and what the parts of its sync share."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.state_dir = self.root / STATE_DIR_NAME
        self.tmp_dir = self.state_dir / "tmp"
        self.rules = IgnoreRules.for_root(self.root)
        self.lock = threading.RLock()  # local file changes: the loop vs. outbox hooks
        self.stopping = threading.Event()
        self.last_error: str | None = None

    def relative(self, path: str) -> str | None:
        """The project path of a local absolute path, or None if outside or private."""
        try:
            rel = os.path.relpath(path, self.root)
        except ValueError:
            return None
        if rel == "." or rel.startswith(".."):
            return None
        rel = rel.replace(os.sep, "/")
        if rel == STATE_DIR_NAME or rel.startswith(STATE_DIR_NAME + "/"):
            return None
        return rel

    def reload_rules(self) -> None:
        self.rules = IgnoreRules.for_root(self.root)

    def inside(self, rel: str) -> bool:
        """True unless an existing parent of `rel` is a symlink or no folder: then `root/rel`
        is not in the tree but reached through a link (and an lstat of it would follow it)."""
        return _parents_are_folders(self.root, rel.split("/"))

    def is_file(self, rel: str) -> bool:
        """`rel` is a regular file of the tree."""
        try:
            return self.inside(rel) and stat.S_ISREG(os.lstat(self.root / rel).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def is_folder(self, rel: str) -> bool:
        """`rel` is a real folder of the tree (a symlink to one is not: never walk into it)."""
        try:
            return self.inside(rel) and stat.S_ISDIR(os.lstat(self.root / rel).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False


def safe_target(root: Path, rel: str, *, link_ok: bool = False) -> Path | None:
    """`root/rel` if writing there cannot leave root, else None (logged by the caller).

    Rejects what `clean_relpath` rejects (.., absolute, NUL, empty), and existing parents that
    are symlinks or not directories (a link inside DIR must not lead a download outside); and a
    symlink at `rel` itself, unless `link_ok` (a new link renamed over it replaces it).
    """
    clean = clean_relpath(rel)
    if clean is None or clean != rel.strip("/") or rel.startswith("/"):
        return None
    if not _parents_are_folders(root, clean.split("/")):
        return None
    target = root / clean
    with contextlib.suppress(FileNotFoundError):
        if not link_ok and stat.S_ISLNK(os.lstat(target).st_mode):
            return None
    return target


def _parents_are_folders(root: Path, parts: list[str]) -> bool:
    cur = root
    for part in parts[:-1]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return True  # nothing further down exists either
        if not stat.S_ISDIR(st.st_mode):
            return False
    return True


def stat_of(st: os.stat_result) -> Stat:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def meta_stat(meta: Any) -> Stat:
    """The stat an outbox entry's meta recorded, or (-1, -1, -1)."""
    try:
        return (int(meta["size"]), int(meta["mtime_ns"]), int(meta["inode"]))
    except (KeyError, TypeError, ValueError):
        return (-1, -1, -1)


def hash_local(path: Path) -> tuple[str, str, Stat] | None:
    """(sha1, sha256, stat) of a local file, or None if unreadable or changed while read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        before = os.fstat(fd)
        h1 = hashlib.sha1(usedforsecurity=False)
        h256 = hashlib.sha256()
        n = 0
        while chunk := os.read(fd, 4 << 20):
            h1.update(chunk)
            h256.update(chunk)
            n += len(chunk)
        after = os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if stat_of(before) != stat_of(after) or n != before.st_size:
        return None
    return h1.hexdigest(), h256.hexdigest(), stat_of(before)


def stable_copy(src: Path, dst: Path) -> tuple[str, Stat] | None:
    """Copy `src` to `dst`, hashing; None if size, mtime or inode moved during the read."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        before = os.fstat(fd)
        h = hashlib.sha256()
        n = 0
        out_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(out_fd, "wb") as out:
            while chunk := os.read(fd, 1 << 20):
                out.write(chunk)
                h.update(chunk)
                n += len(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        now = os.lstat(src)
    except FileNotFoundError:
        return None
    if stat_of(before) != stat_of(after) or stat_of(now) != stat_of(before) or n != before.st_size:
        return None
    return h.hexdigest(), stat_of(before)


def unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
