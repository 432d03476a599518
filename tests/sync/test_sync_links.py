"""Symlinks in the synced folder: never followed; with --links carried as NAME.dominolink files
and made again from them (CONTRACT §5); without it, counted in status."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from dominofs.api import ProjectClient
from tests.sync.conftest import SyncProc, remote_files, wait_for


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.mark.slow
def test_a_folder_replaced_by_a_symlink_is_never_followed(
    make_sync: Callable[..., SyncProc], remote: ProjectClient, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    write(outside / "secret.txt", b"not the project's")
    write(outside / "f.txt", b"not the project's either")
    sp = make_sync()
    write(sp.root / "d" / "f.txt", b"in the tree")
    sp.start()
    sp.wait_idle()
    os.rename(sp.root / "d", sp.root / "d.bak")  # the folder moves away and a link takes its
    os.symlink(outside, sp.root / "d")  # place: its rescan must not walk into the link
    wait_for(lambda: "d.bak/f.txt" in remote_files(remote), what="the moved folder")
    wait_for(lambda: "d/f.txt" not in remote_files(remote), what="the old path deleted")
    sp.wait_idle()
    files = remote_files(remote)
    assert not [p for p in files if p.startswith("d/")], files
    assert sp.terminate() == 0
