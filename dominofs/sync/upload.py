"""Local -> remote: the scan of DIR and what each changed path needs.

Owns: draining the debounce's due paths, deciding for one path (nothing, an upload, a deletion
candidate), the stat-only reconcile of the tree or a subtree against the state database (hash
only on a stat change, upload only on a content change), the stat-stable staging copy handed to
the outbox (of a file, or with --links of a symlink's target, sent as its link file), and the
outbox's hooks, which record what the server confirmed and mirror a conflict copy in DIR. Never
follows a symlink. Must not download or poll: a remote change reaches it as a dirty path only.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import DominoError
from ..ignore import IGNORE_FILE, STATE_DIR_NAME
from ..links import link_file, link_of
from ..models import UploadResult
from ..outbox import DeleteOutcome, Entry, Outbox
from ..state import FileState, StateDB
from .deletes import DeleteGuard
from .folder import Folder, Stat, meta_stat, safe_target, stable_copy, stat_of, unlink
from .symlinks import Symlinks
from .watcher import Debounce

log = logging.getLogger(__package__)


class Uploader:
    """Turns dirty paths of DIR into outbox entries. Used from the service loop."""

    def __init__(
        self,
        folder: Folder,
        state: StateDB,
        outbox: Outbox,
        debounce: Debounce,
        guard: DeleteGuard,
        links: Symlinks,
    ) -> None:
        self.folder = folder
        self.state = state
        self.outbox = outbox
        self.debounce = debounce
        self.guard = guard
        self.links = links

    def drain(self, *, all_now: bool = False) -> None:
        """Process the paths that are due (all dirty ones with `all_now`)."""
        folder = self.folder
        while not folder.stopping.is_set():
            now = time.monotonic()
            for sub in self.debounce.take_subtrees():
                self.scan(sub, delay=None)  # files in a new folder may still be written
            due = self.debounce.take_due(now, all_now=all_now)
            if not due:
                return
            for rel in sorted(due):
                if folder.stopping.is_set():
                    return
                try:
                    with folder.lock:
                        self.process(rel)
                except DominoError as exc:
                    folder.last_error = str(exc)
                    log.error("sync: %s: %s", rel, exc)
                except OSError as exc:
                    folder.last_error = f"{rel}: {exc.strerror or exc}"
                    log.warning("sync: cannot read %s: %s; will retry", rel, exc.strerror or exc)
                    self.debounce.mark(rel, delay=max(5.0, self.debounce.upload_delay))
            if not all_now:
                return

    def process(self, rel: str) -> None:
        """Decide what one path needs: nothing, an upload, or a deletion candidate."""
        folder = self.folder
        links = self.links
        if rel == IGNORE_FILE:
            folder.reload_rules()
        if links.ignored(rel):
            return
        path = folder.root / rel
        try:
            # Under a folder replaced by a symlink, lstat would follow the link: such a path
            # has left the tree.
            st: os.stat_result | None = os.lstat(path) if folder.inside(rel) else None
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            self.debounce.add_subtree(rel)
        elif st is not None and stat.S_ISREG(st.st_mode):
            name = links.carrier_of(rel)
            if name is not None and links.symlink_stat(name) is not None:
                links.skip(name, f"the plain file {rel} takes the place of its link file")
            self.guard.forget(rel)
            self._send_if_changed(rel, st, functools.partial(stable_copy, path))
        elif not self._carry(rel):
            if st is not None:
                log.debug("sync: skipping %s: not a regular file", rel)
            if self.state.get(rel) is None:
                self.outbox.cancel(rel)  # created and removed before it was ever sent
            else:
                self.guard.candidate(rel)
        if st is not None and stat.S_ISLNK(st.st_mode):
            if links.enabled:
                self.process(link_file(rel))
            else:
                links.skip(rel, "dominofs sync --links would carry it")
            return
        links.unskip(rel)
        carried = link_file(rel)
        if links.enabled and (
            self.state.get(carried) is not None or self.outbox.find(carried) is not None
        ):
            self.process(link_file(rel))  # the symlink here was carried: it is gone now

    def _carry(self, path: str) -> bool:
        """Send the symlink NAME that `path` (NAME.dominolink) carries; False if there is none.

        Without --links a symlink is not sent, but the link file it was carried by before is
        not deleted either (True then too).
        """
        name = link_of(path)
        st = self.links.symlink_stat(name) if name is not None else None
        if name is None or st is None:
            return False
        if not self.links.enabled:
            return self.links.was_carried(path, st)
        self.links.unskip(name)
        self.guard.forget(path)
        stage = functools.partial(self.links.stage, name)
        self._send_if_changed(path, st, stage, symlink=True)
        return True

    def _send_if_changed(
        self,
        rel: str,
        st: os.stat_result,
        stage: Callable[[Path], tuple[str, Stat] | None],
        *,
        symlink: bool = False,
    ) -> None:
        """Queue the bytes `stage` writes as `rel`, unless they are what is queued or synced."""
        pending = self.outbox.find(rel)  # before the row: a hook updates the row first
        if (
            pending is not None
            and pending.op == "upload"
            and meta_stat(pending.meta) == stat_of(st)
        ):
            return
        row = self.state.get(rel)
        if pending is None and row is not None and row.same_stat(*stat_of(st)):
            return
        staged = self.outbox.staging_path()
        copied = stage(staged)
        if copied is None:
            unlink(staged)
            log.debug("sync: %s changed while being read; trying again later", rel)
            self.debounce.mark(rel)
            return
        sha, st2 = copied
        meta: dict[str, object] = {
            "sha256": sha,
            "size": st2[0],
            "mtime_ns": st2[1],
            "inode": st2[2],
        }
        if symlink:
            meta["symlink"] = True  # the conflict hook renames the link, not a file
        if pending is not None and pending.op == "upload" and pending.meta.get("sha256") == sha:
            unlink(staged)
            return
        if pending is None and row is not None and row.sha256 == sha:
            # Same bytes (a touch, a chmod): remember the new stat, send nothing.
            self.state.put(FileState(rel, row.key, sha, *st2, base_key=row.base_key))
            unlink(staged)
            return
        # Not fsynced: the local file is the truth, and a restart after a power loss finds it
        # changed (stat) and queues it again.
        self.outbox.enqueue_upload(
            rel, staged, base_key=row.key if row else None, meta=meta, durable=False
        )

    def scan(self, sub: str = "", *, delay: float | None = 0.0) -> None:
        """Stat-only reconcile of the tree (or a subtree) against the state database.

        Changed paths are marked dirty after `delay` (None: the upload delay).
        """
        folder = self.folder
        folder.reload_rules()
        start = folder.root / sub if sub else folder.root
        known = self.state.snapshot()
        skipped: set[str] = set()
        walk = self._walk(start, sub, skipped) if not sub or folder.is_folder(sub) else iter(())
        for rel, st in walk:
            row = known.pop(rel, None)
            if row is None or row[1:] != stat_of(st):
                self.debounce.mark(rel, delay=delay)
        self.links.rescanned(sub, skipped)
        prefix = sub + "/" if sub else ""
        for rel in known:  # in the state, not found by the walk: gone (or moved)
            if not sub or rel == sub or rel.startswith(prefix):
                self.debounce.mark(rel, delay=delay)

    def _walk(
        self, directory: Path, rel_dir: str, skipped: set[str]
    ) -> Iterator[tuple[str, os.stat_result]]:
        """(project path, lstat) of each file, and of each symlink --links carries; the
        symlinks not carried go to `skipped`."""
        try:
            it = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            log.warning("sync: cannot list %s: %s", directory, exc.strerror)
            return
        rules = self.folder.rules
        with it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if rel == STATE_DIR_NAME:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if not rules.is_ignored(rel, is_dir=True):
                        yield from self._walk(Path(entry.path), rel, skipped)
                elif stat.S_ISREG(st.st_mode):
                    if not rules.is_ignored(rel):
                        yield rel, st
                elif stat.S_ISLNK(st.st_mode) and not rules.is_ignored(rel):
                    if not self.links.enabled or self.folder.is_file(link_file(rel)):
                        skipped.add(rel)  # not carried (a plain file has its link's name)
                    elif not rules.is_ignored(link_file(rel)):
                        yield link_file(rel), st


class OutboxHooks:
    """What the outbox's threads report back: rows for what the server confirmed."""

    def __init__(self, folder: Folder, state: StateDB, request_poll: Callable[[], None]) -> None:
        self.folder = folder
        self.state = state
        self.request_poll = request_poll

    def uploaded(self, path: str, result: UploadResult, staged: Path, entry: Entry) -> None:
        m = entry.meta
        self.state.put(
            FileState(
                path,
                result.key,
                str(m.get("sha256", "")),
                int(m.get("size", -1)),
                int(m.get("mtime_ns", -1)),
                int(m.get("inode", -1)),
            )
        )

    def conflict(
        self, path: str, cpath: str, result: UploadResult, staged: Path, entry: Entry
    ) -> None:
        """Ours went to the server as `cpath`: mirror that locally, then fetch theirs."""
        m = entry.meta
        root = self.folder.root
        # A symlink's copy is the link renamed to the name the copy's link file carries.
        if m.get("symlink"):
            here, there = link_of(path) or path, link_of(cpath) or cpath
        else:
            here, there = path, cpath
        with self.folder.lock:
            target = safe_target(root, there)
            try:
                st = os.lstat(root / here) if self.folder.inside(here) else None
            except (FileNotFoundError, NotADirectoryError):
                st = None
            if (
                target is not None
                and st is not None
                and stat_of(st) == meta_stat(m)
                and not os.path.lexists(target)
            ):
                os.rename(root / here, target)
                self.state.put(FileState(cpath, result.key, str(m.get("sha256", "")), *stat_of(st)))
                self.state.remove(path)
            self.request_poll()

    def deleted(self, path: str, outcome: DeleteOutcome, entry: Entry) -> None:
        self.state.remove(path)
        if outcome == "changed_remotely":
            self.request_poll()  # download the server's newer version
