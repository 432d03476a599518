"""vfs.py's write side without FUSE: overlay, queue hand-over, restore, own commits."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dominofs.errors import DominoError
from tests.conftest import LocalServer
from tests.mount.conftest import wait_for
from tests.mount.test_write import VfsHarness

pytestmark = [pytest.mark.timeout(90)]


@pytest.fixture
def h(server: LocalServer, tmp_path: Path) -> Iterator[VfsHarness]:
    from dominofs.api import DominoClient
    from tests.conftest import ALICE_KEY

    client = DominoClient(server.url, ALICE_KEY, retries=1)
    harness = VfsHarness(client.project("alice/demo"), server, tmp_path / "h")
    try:
        yield harness
    finally:
        harness.close()
        client.close()


def test_own_upload_is_not_a_remote_change(h: VfsHarness) -> None:
    invalidated: list[str] = []
    h.vfs.invalidate = invalidated.extend
    h.write("/mine.txt", b"mine")
    h.settled()
    wait_for(lambda: h.vfs.tree.file("mine.txt") is not None, what="the new commit is seen")
    assert "/mine.txt" not in invalidated
    assert h.read("/mine.txt") == b"mine"
    # The cache holds the uploaded bytes now; the layer keeps the inode with only their key.
    node = h.vfs.ns.inodes[h.vfs.ns.names["/mine.txt"]]
    assert node.work is None
    assert node.key == h.vfs.tree.file("mine.txt").key


def test_queue_is_restored_by_a_new_vfs(h: VfsHarness, tmp_path: Path) -> None:
    h.vfs.upload_delay = 3600
    h.write("/later.txt", b"later")
    h.vfs.close()
    h.outbox.stop()
    assert [e.path for e in h.outbox.entries()] == ["later.txt"]
    h.outbox.close()
    h.cache.close()
    h2 = VfsHarness(h.remote, h.server, tmp_path / "h")
    try:
        assert h2.read("/later.txt") == b"later"
        assert h2.settled()["later.txt"] == b"later"
    finally:
        h2.close()


def test_links_and_special_files_stay_local(h: VfsHarness) -> None:
    import stat

    h.vfs.symlink("/l", "README.md")
    h.vfs.link("/hard.md", "/README.md")
    h.vfs.mknod("/fifo", stat.S_IFIFO | 0o640, 0)
    assert h.vfs.readlink("/l") == "README.md"
    assert stat.S_ISLNK(h.vfs.getattr("/l")["st_mode"])
    assert stat.S_ISFIFO(h.vfs.getattr("/fifo")["st_mode"])
    readme, hard = h.vfs.getattr("/README.md"), h.vfs.getattr("/hard.md")
    assert readme["st_ino"] == hard["st_ino"]
    assert readme["st_nlink"] == hard["st_nlink"] == 2
    files = h.settled()
    assert files["hard.md"] == files["README.md"]  # a hard link is a plain copy there
    assert "l" not in files
    assert "fifo" not in files
    with pytest.raises(DominoError) as info:
        h.vfs.link("/d", "/")
    assert info.value.errno == errno.EPERM


def test_virtual_folders_are_not_writable(h: VfsHarness) -> None:
    with pytest.raises(DominoError) as info:
        h.vfs.create("/.dominofs/x", 0o644, os.O_WRONLY | os.O_CREAT)
    assert info.value.errno in (errno.EACCES, errno.EROFS)


def test_rename_before_the_timer_never_uploads_the_old_name(h: VfsHarness) -> None:
    h.vfs.upload_delay = 1.0
    h.server.reset_stats()
    h.write("/draft.txt", b"d")
    h.vfs.rename("/draft.txt", "/final.txt")
    files = h.settled()
    assert files["final.txt"] == b"d"
    assert "draft.txt" not in files
    assert h.server.requests_count("PUT upload") == 1


def test_listings_follow_every_change_of_the_overlay(h: VfsHarness) -> None:
    # Folders are listed from an index of the overlay kept in step with every change (a scan of
    # the whole overlay per readdir made `ls -R` and `rm -rf` of a big new tree quadratic).
    # A random mix of the changes that touch it must list what the calls made.
    import random

    rng = random.Random(7)
    h.vfs.upload_delay = 3600
    want: dict[str, set[str]] = {"/": set(h.vfs.readdir("/"))}  # folder -> names in it
    done: dict[str, int] = {}
    for step in range(600):
        parent = rng.choice(sorted(want))
        op = rng.choice(["file", "mkdir", "unlink", "rmdir", "rename"])
        there = sorted(n for n in want[parent] if not n.startswith("."))  # not .runs/.dominofs
        if op in ("unlink", "rmdir", "rename") and there:
            name = rng.choice(there)
        else:
            name = f"n{rng.randrange(8)}"
        path = ("" if parent == "/" else parent) + "/" + name
        is_file = name in want[parent] and path not in want
        try:
            if op == "file" and name not in want[parent]:
                h.write(path, b"x")
                want[parent].add(name)
            elif op == "mkdir" and name not in want[parent]:
                h.vfs.mkdir(path, 0o755)
                want[parent].add(name)
                want[path] = set()
            elif op == "unlink" and is_file:
                h.vfs.unlink(path)
                want[parent].discard(name)
            elif op == "rmdir" and path in want and not want[path]:
                h.vfs.rmdir(path)
                want[parent].discard(name)
                del want[path]
            elif op == "rename" and is_file:
                dest_parent = rng.choice(sorted(want))
                dest = ("" if dest_parent == "/" else dest_parent) + f"/r{step}"
                h.vfs.rename(path, dest)
                want[parent].discard(name)
                want[dest_parent].add(f"r{step}")
            else:
                continue
        except DominoError as exc:
            pytest.fail(f"step {step}: {op} {path}: {exc}")
        done[op] = done.get(op, 0) + 1
        for folder, names in want.items():
            assert set(h.vfs.readdir(folder)) - {".", ".."} == names, (step, op, path, folder)
    assert min(done.get(op, 0) for op in ("file", "mkdir", "unlink", "rmdir", "rename")) >= 10


def test_a_slow_listing_is_asked_for_less_often_after_our_uploads(
    h: VfsHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After our own uploads the poller waits before asking for a new listing. For a project
    # whose listing is slow (100,000 files: about 1 s to fetch, diff and save) the wait grows,
    # so those listings take at most _SETTLE_SHARE of the time.
    import time

    from dominofs.vfs import refresh as vfs_module

    monkeypatch.setattr(vfs_module, "_SETTLE_GAP", 0.05)
    monkeypatch.setattr(vfs_module, "_SETTLE_MAX", 0.1)
    monkeypatch.setattr(vfs_module, "_SETTLE_SHARE", 0.1)
    h.write("/new.txt", b"new")
    h.settled()
    wait_for(lambda: h.vfs.tree.file("new.txt") is not None, what="the new commit is seen")
    # The listing that showed our upload was timed (just after the tree was swapped in).
    wait_for(lambda: h.vfs._poller.cost > 0, what="the listing timed")

    def quiet_for(cost: float) -> float:
        h.vfs._poller.cost = cost
        t0 = time.monotonic()
        h.vfs._poller._quiet(time.monotonic())  # a listing was just taken
        return time.monotonic() - t0

    h.vfs.poll_interval = 0  # only our own uploads ask for listings
    fast = quiet_for(0.0)
    slow = quiet_for(0.08)  # stretched to 0.08 / 0.1 = 0.8 s
    assert slow >= 0.75
    assert slow > fast + 0.3
    # With polling on, never past the poll interval, however slow the last listing was.
    h.vfs.poll_interval = 0.4
    capped = quiet_for(0.5)
    assert capped >= 0.35
    assert capped < slow


def _put(h: VfsHarness, path: str, data: bytes) -> None:
    import io

    h.remote.upload(path, io.BytesIO(data), size=len(data))


def test_a_remote_change_keeps_local_metadata_and_never_touches_local_only(h: VfsHarness) -> None:
    h.vfs.chmod("/README.md", 0o600)
    h.vfs.chown("/README.md", 1234, 5678)
    h.write("/.notes.swp", b"local bytes")  # an editor's file: local only
    h.settled()
    _put(h, "README.md", b"theirs")
    _put(h, ".notes.swp", b"a server copy")
    assert h.vfs.refresh() is not None
    st = h.vfs.getattr("/README.md")
    assert h.read("/README.md") == b"theirs"
    assert st["st_size"] == len(b"theirs")
    assert (st["st_mode"] & 0o7777, st["st_uid"], st["st_gid"]) == (0o600, 1234, 5678)
    assert h.read("/.notes.swp") == b"local bytes"
    _put(h, "README.md", b"theirs again")
    h.vfs.refresh()
    assert h.read("/README.md") == b"theirs again"
    assert h.vfs.getattr("/README.md")["st_mode"] & 0o7777 == 0o600


def test_a_remote_deletion_removes_the_name_but_not_a_local_folder(h: VfsHarness) -> None:
    h.vfs.mkdir("/kept", 0o750)
    h.write("/kept/f.txt", b"f")
    h.vfs.chmod("/kept/f.txt", 0o640)
    h.settled()
    h.remote.delete("kept/f.txt")
    h.vfs.refresh()
    with pytest.raises(DominoError) as info:
        h.vfs.getattr("/kept/f.txt")
    assert info.value.errno == errno.ENOENT
    assert h.vfs.getattr("/kept")["st_mode"] & 0o7777 == 0o750
    assert h.vfs.readdir("/kept") == []
