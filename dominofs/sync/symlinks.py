"""Symlinks in the synced folder: which ones travel, how they are read and made, which are not.

Owns: with --links, the mapping between a symlink NAME in DIR and the project path that carries
it (`links.link_file`, as the mount does), reading a symlink's target stat-stable into a staged
file, making a symlink from a link file (a new link renamed over the old one: nothing is ever
written through a link), and the record of the symlinks this sync does not carry (without
--links all of them, with it those whose place a plain NAME.dominolink file takes), which status
reports. Must not upload, download or queue: the two sides decide, this tells them what is where.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
from pathlib import Path

from ..links import encode_target, link_of
from ..state import StateDB
from .folder import Folder, Stat, stat_of, unlink

log = logging.getLogger(__package__)

SHOWN = 20  # skipped symlinks named in status; the count covers them all


class Symlinks:
    """The symlinks of one folder. `enabled` is --links. Used from the service loop."""

    def __init__(self, folder: Folder, state: StateDB, *, enabled: bool) -> None:
        self.folder = folder
        self.state = state
        self.enabled = enabled
        self._skipped: set[str] = set()

    # -- which project path is which local object ----------------------------------------

    def carrier_of(self, path: str) -> str | None:
        """With --links, the symlink a project path NAME.dominolink carries; else None."""
        return link_of(path) if self.enabled else None

    def ignored(self, path: str) -> bool:
        """The ignore rules match `path` or, for a link file, the symlink it carries."""
        rules = self.folder.rules
        name = self.carrier_of(path)
        return rules.is_ignored(path) or (name is not None and rules.is_ignored(name))

    def symlink_stat(self, name: str) -> os.stat_result | None:
        """The lstat of `name` in the tree if it is a symlink there, else None."""
        if not self.folder.inside(name):
            return None
        try:
            st = os.lstat(self.folder.root / name)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st if stat.S_ISLNK(st.st_mode) else None

    def was_carried(self, path: str, st: os.stat_result) -> bool:
        """The state row of `path` (NAME.dominolink) is the symlink with the lstat `st`: its
        link file came from it, or it from its link file (a row keeps the local inode)."""
        row = self.state.get(path)
        return row is not None and row.inode == st.st_ino

    def present(self, path: str) -> bool:
        """Something in the tree still stands for `path`: a regular file there, or the symlink
        its link file carries (carried before, if --links is off now: its link is not deleted).
        A symlink or fifo where a file was is no file: the file's deletion goes ahead."""
        if self.folder.is_file(path):
            return True
        name = link_of(path)
        if name is None:
            return False
        st = self.symlink_stat(name)
        return st is not None and (self.enabled or self.was_carried(path, st))

    # -- reading and making --------------------------------------------------------------

    def stage(self, name: str, dst: Path) -> tuple[str, Stat] | None:
        """Write the link file bytes of the symlink `name` to `dst`: (sha256, its lstat), or
        None if it changed while read or is no symlink any more."""
        path = self.folder.root / name
        try:
            before = os.lstat(path)
            target = os.readlink(path)
            after = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISLNK(before.st_mode) or stat_of(before) != stat_of(after):
            return None
        data = encode_target(target)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return hashlib.sha256(data).hexdigest(), stat_of(before)

    def make(self, name: str, target: str) -> os.stat_result:
        """Make `name` a symlink to `target`, replacing the symlink there, atomically.

        Raises:
            OSError: the link could not be made (a folder took its place, no space, ...).
        """
        tmp = self.folder.tmp_dir / f"ln-{os.getpid()}-{threading.get_ident()}"
        unlink(tmp)
        os.symlink(target, tmp)
        try:
            os.replace(tmp, self.folder.root / name)  # rename(2) replaces a link, never follows
        finally:
            unlink(tmp)
        return os.lstat(self.folder.root / name)

    # -- the ones not carried --------------------------------------------------------------

    def skip(self, name: str, why: str) -> None:
        if name not in self._skipped:
            self._skipped.add(name)
            log.info("sync: skipping the symlink %s: %s", name, why)

    def unskip(self, name: str) -> None:
        self._skipped.discard(name)

    def rescanned(self, sub: str, found: set[str]) -> None:
        """A walk of `sub` ("" for DIR) found exactly `found` symlinks not carried."""
        prefix = sub + "/" if sub else ""
        self._skipped = {p for p in self._skipped if sub and not p.startswith(prefix)} | found

    def skipped_count(self) -> int:
        return len(self._skipped)

    def status(self) -> dict[str, object]:
        """For status.json: --links or not, and the symlinks not carried (count, first ones)."""
        return {
            "links": self.enabled,
            "skipped_symlinks": sorted(self._skipped)[:SHOWN],
            "skipped_symlinks_count": len(self._skipped),
        }
