"""Remote -> local: the poll of the project's head and what each remote change does to DIR.

Owns: reading the head and its listing, downloading a remote change of a file not changed here
(verified against the listing, fsynced in DIR/.dominofs/tmp, then renamed into place: never a
partial file, never outside DIR, never through a symlink), with --links making a link file's
symlink (renamed over the old link), applying a remote deletion to a file or link still as
synced, adopting the local files of a first sync whose bytes already match (sha1 = key),
and recording the head once all of it is applied. Must not upload: a path changed on both sides
is marked dirty, and the upload side's conflict check decides.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import re
import stat
import threading
from pathlib import Path

from ..errors import DominoError, NotFound, Unreachable
from ..links import MAX_TARGET, decode_target
from ..models import Remote, RemoteFile
from ..outbox import Outbox
from ..state import FileState, StateDB
from .deletes import DeleteGuard
from .folder import Folder, hash_local, safe_target, stat_of, unlink
from .symlinks import Symlinks
from .watcher import Debounce

log = logging.getLogger(__package__)

_SHA1_KEY = re.compile(r"^[0-9a-f]{40}$")  # the local server's keys: sha1 of the content
_HASH_THREADS = 4  # hashlib releases the GIL: hash local files in parallel
_ADOPT_BATCH = 512


class Poller:
    """Keeps DIR in step with the project's head. Used from the service loop."""

    def __init__(
        self,
        folder: Folder,
        remote: Remote,
        state: StateDB,
        outbox: Outbox,
        debounce: Debounce,
        guard: DeleteGuard,
        links: Symlinks,
        *,
        wanted: threading.Event,
    ) -> None:
        self.folder = folder
        self.remote = remote
        self.project = str(remote.project)
        self.state = state
        self.outbox = outbox
        self.debounce = debounce
        self.guard = guard
        self.links = links
        self.wanted = wanted  # set when a poll must not wait for the interval
        self.error: str | None = None  # why the last poll failed
        self._download_failed = False  # a poll whose downloads failed is repeated next time

    def poll(self, *, force: bool = False) -> bool:
        """Apply remote changes if the head moved; True if anything was downloaded or removed."""
        self.wanted.clear()
        if self.outbox.pending_count() and not force:
            return False  # our own uploads first; their commits would look like remote edits
        completed = self.outbox.completed
        try:
            commits = self.remote.commits()
            if not commits:
                raise NotFound(f"{self.project} has no commit")
            head = commits[0]
            if head == self.state.head and not force:
                self._ok()
                return False
            listing = self.remote.list_files(head)
        except Unreachable as exc:
            self.error = str(exc)
            log.warning("sync: %s", exc)
            return False
        except DominoError as exc:
            self.error = str(exc)
            self.folder.last_error = str(exc)
            log.error("sync: %s", exc)
            return False
        self._ok()
        self._download_failed = False
        ignored = self.links.ignored
        kept = set(self.outbox.kept_local())
        known = self.state.snapshot()
        remote_paths: set[str] = set()
        adopt: list[tuple[RemoteFile, os.stat_result]] = []
        changed = False
        for rf in listing:
            if self.folder.stopping.is_set() or self.outbox.completed != completed:
                return changed  # our upload landed meanwhile: look again next time
            if ignored(rf.path):
                continue
            remote_paths.add(rf.path)
            if rf.path in kept:
                continue
            row = known.get(rf.path)
            if row is not None and row[0] == rf.key:
                continue  # in step (the common case: no query, no stat)
            if row is None and _SHA1_KEY.match(rf.key):
                st = self._adoptable(rf)
                if st is not None:
                    adopt.append((rf, st))
                    if len(adopt) >= _ADOPT_BATCH:
                        self._adopt(adopt)
                        adopt = []
                    continue
            with self.folder.lock:
                changed |= self._apply_file(rf)
        self._adopt(adopt)
        if self.outbox.completed != completed:
            return changed
        gone = [p for p in known if p not in remote_paths and not ignored(p)]
        del known
        for path in gone:
            with self.folder.lock:
                row_state = self.state.get(path)
                if row_state is not None:
                    changed |= self._apply_delete(row_state)
        if self.outbox.completed == completed and not self._download_failed:
            self.state.head = head
        return changed

    def _ok(self) -> None:
        if self.error or self.outbox.server_reachable is False:
            # The server is back (or takes the key again after a 401): do not wait out the
            # backoff, and retry what failed meanwhile, as a restart would.
            self.outbox.retry_failed()
            self.outbox.kick()
        self.error = None

    def _adoptable(self, rf: RemoteFile) -> os.stat_result | None:
        """The stat of a local file with no state row and the remote size (maybe the same bytes:
        a first sync of a folder already on the server), else None."""
        target = safe_target(self.folder.root, rf.path)
        if target is None:
            return None
        try:
            st = os.lstat(target)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != rf.size:
            return None
        return st

    def _adopt(self, batch: list[tuple[RemoteFile, os.stat_result]]) -> None:
        """Record as in step the local files whose bytes are the remote ones (sha1 = key).

        Hashing only, in parallel; anything else (other bytes, changed meanwhile, a queued
        change) goes the normal way: marked dirty, so the upload path with its conflict check
        decides.
        """
        if not batch:
            return
        root = self.folder.root
        with concurrent.futures.ThreadPoolExecutor(_HASH_THREADS) as pool:
            hashes = list(pool.map(lambda item: hash_local(root / item[0].path), batch))
        rows: list[FileState] = []
        with self.folder.lock:
            for (rf, st), got in zip(batch, hashes, strict=True):
                if (
                    got is not None
                    and got[0] == rf.key
                    and got[2] == stat_of(st)
                    and self.outbox.find(rf.path) is None
                ):
                    rows.append(FileState(rf.path, rf.key, got[1], *got[2]))
                else:
                    self.debounce.mark(rf.path, delay=0.0)
            self.state.put_many(rows)
        if rows:
            log.info("sync: %d local files already match the server", len(rows))

    def _apply_file(self, rf: RemoteFile) -> bool:
        root = self.folder.root
        row = self.state.get(rf.path)
        if row is not None and row.key == rf.key:
            return False
        name = self.links.carrier_of(rf.path)
        if name is not None and 0 < rf.size <= MAX_TARGET and not self.folder.is_file(rf.path):
            made = self._apply_link(rf, name, row)
            if made is not None:
                return made
        target = safe_target(root, rf.path)
        if target is None:
            log.error("sync: refusing to write %r from the server: outside %s", rf.path, root)
            return False
        may, st = self._may_replace(rf, target, row, link=False)
        if not may:
            return False
        self.guard.forget(rf.path)
        return self._download(rf, target, st)

    def _may_replace(
        self, rf: RemoteFile, target: Path, row: FileState | None, *, link: bool
    ) -> tuple[bool, os.stat_result | None]:
        """Whether `rf` may replace what is at `target` (a file, or with `link` a symlink), and
        its lstat (None: nothing there). Not while a change of ours is queued or over another
        kind of thing; not if it changed since synced (marked: the upload path decides)."""
        if self.outbox.find(rf.path) is not None:
            return False, None  # our pending change decides (with its conflict check)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return True, None
        except NotADirectoryError:
            log.error("sync: %s from the server clashes with a local file", rf.path)
            return False, None
        if not (stat.S_ISLNK if link else stat.S_ISREG)(st.st_mode):
            kind = "file or folder" if link else "folder"
            log.error("sync: %s from the server clashes with a local %s", rf.path, kind)
            return False, None
        if row is None or not row.same_stat(*stat_of(st)):
            self.debounce.mark(rf.path, delay=0.0)  # changed here too: the upload path decides
            return False, None
        return True, st

    def _unchanged(self, rf: RemoteFile, target: Path, expected: os.stat_result | None) -> bool:
        """`target` is as `_may_replace` found it (else marked: it changed here meanwhile)."""
        try:
            now_st: os.stat_result | None = os.lstat(target)
        except FileNotFoundError:
            now_st = None
        if (now_st is None) != (expected is None) or (
            now_st is not None and expected is not None and stat_of(now_st) != stat_of(expected)
        ):
            self.debounce.mark(rf.path, delay=0.0)
            return False
        return True

    def _download(self, rf: RemoteFile, target: Path, expected: os.stat_result | None) -> bool:
        tmp = self.folder.tmp_dir / f"dl-{os.getpid()}-{threading.get_ident()}"
        h = hashlib.sha256()
        by_key = hashlib.sha1(usedforsecurity=False) if _SHA1_KEY.match(rf.key) else None
        size = 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in self.remote.iter_blob(rf.key):
                    fh.write(chunk)
                    h.update(chunk)
                    if by_key is not None:
                        by_key.update(chunk)
                    size += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            if self._bad_bytes(rf, size, by_key.hexdigest() if by_key is not None else None):
                return False
            target.parent.mkdir(parents=True, exist_ok=True)
            if safe_target(self.folder.root, rf.path) is None:
                return False
            if not self._unchanged(rf, target, expected):
                return False  # changed locally while downloading
            os.replace(tmp, target)
        except DominoError as exc:
            self._failed(rf, exc)
            return False
        finally:
            unlink(tmp)
        st = os.lstat(target)
        self.state.put(FileState(rf.path, rf.key, h.hexdigest(), *stat_of(st)))
        log.info("sync: downloaded %s", rf.path)
        return True

    def _bad_bytes(self, rf: RemoteFile, size: int, sha1: str | None) -> bool:
        """True (and the poll repeated) if what came is not what the listing promised."""
        if size == rf.size and (sha1 is None or sha1 == rf.key):
            return False
        # Never let bad bytes into DIR; the next poll downloads it again.
        self._download_failed = True
        self.folder.last_error = f"{rf.path}: the downloaded bytes do not match the listing"
        log.error("sync: %s; will retry", self.folder.last_error)
        return True

    def _failed(self, rf: RemoteFile, exc: DominoError) -> None:
        self._download_failed = True
        self.folder.last_error = str(exc)
        log.error("sync: cannot download %s: %s; will retry", rf.path, exc)

    def _apply_link(self, rf: RemoteFile, name: str, row: FileState | None) -> bool | None:
        """Make (or replace) the symlink `name` the link file `rf` carries: True if made, False
        if not now, None if its bytes name no target (then it is a plain file)."""
        root = self.folder.root
        target = safe_target(root, name, link_ok=True)
        if target is None:
            log.error("sync: refusing to make %r from the server: outside %s", name, root)
            return False
        may, st = self._may_replace(rf, target, row, link=True)
        if not may:
            return False
        try:
            data = b"".join(self.remote.iter_blob(rf.key))
        except DominoError as exc:
            self._failed(rf, exc)
            return False
        sha1 = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        if self._bad_bytes(rf, len(data), sha1 if _SHA1_KEY.match(rf.key) else None):
            return False
        link_target = decode_target(data)
        if link_target is None:
            return None
        self.guard.forget(rf.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if safe_target(root, name, link_ok=True) is None or not self._unchanged(rf, target, st):
            return False
        try:
            made = self.links.make(name, link_target)
        except OSError as exc:
            self.folder.last_error = f"{name}: cannot make the symlink: {exc.strerror or exc}"
            log.error("sync: %s", self.folder.last_error)
            return False
        digest = hashlib.sha256(data).hexdigest()
        self.state.put(FileState(rf.path, rf.key, digest, *stat_of(made)))
        log.info("sync: made the symlink %s from the server", name)
        return True

    def _apply_delete(self, row: FileState) -> bool:
        if self.outbox.find(row.path) is not None:
            return False
        name = self.links.carrier_of(row.path)
        link = self.links.symlink_stat(name) if name is not None else None
        if name is not None and link is not None and not self.folder.is_file(row.path):
            if row.same_stat(*stat_of(link)):
                os.unlink(self.folder.root / name)
                self.state.remove(row.path)
                log.info("sync: the link %s was deleted on the server; deleted here", name)
                return True
            self.debounce.mark(row.path, delay=0.0)  # changed here: ours is uploaded again
            return False
        target = safe_target(self.folder.root, row.path)
        if target is None:
            self.state.remove(row.path)
            return False
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            self.state.remove(row.path)
            self.guard.drop(row.path)
            return False
        if stat.S_ISREG(st.st_mode) and row.same_stat(*stat_of(st)):
            target.unlink()
            self.state.remove(row.path)
            log.info("sync: %s was deleted on the server; deleted here", row.path)
            return True
        self.debounce.mark(row.path, delay=0.0)  # changed here: ours is uploaded again
        return False
