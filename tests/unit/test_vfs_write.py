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
    assert h.vfs._nodes == {}


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


def test_links_and_special_files_are_refused(h: VfsHarness) -> None:
    for call in (
        lambda: h.vfs.symlink("/l", "/README.md"),
        lambda: h.vfs.link("/l", "/README.md"),
        lambda: h.vfs.mknod("/n", 0o644, 0),
    ):
        with pytest.raises(DominoError) as info:
            call()
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
