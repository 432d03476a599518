"""Local -> remote through the real service: editor save patterns, bursts, ignore rules."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from dominofs.api import ProjectClient
from tests.conftest import LocalServer
from tests.sync.conftest import SyncProc, remote_bytes, remote_files, wait_for


def write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def vim_save(path: Path, data: bytes) -> None:
    """vim's default (backupcopy=auto): probe 4913, rename to file~, write new, drop file~."""
    probe = path.parent / "4913"
    write(probe, b"")
    os.unlink(probe)
    swap = path.parent / f".{path.name}.swp"
    write(swap, b"swap")
    backup = path.parent / (path.name + "~")
    os.rename(path, backup)
    write(path, data)
    os.unlink(backup)
    os.unlink(swap)


def sed_i_save(path: Path, data: bytes) -> None:
    tmp = path.parent / "sedAb3xZ9"
    write(tmp, data)
    os.rename(tmp, path)


def jetbrains_save(path: Path, data: bytes) -> None:
    tmp = path.parent / (path.name + "___jb_tmp___")
    old = path.parent / (path.name + "___jb_old___")
    write(tmp, data)
    os.rename(path, old)
    os.rename(tmp, path)
    os.unlink(old)


def gedit_save(path: Path, data: bytes) -> None:
    tmp = path.parent / ".goutputstream-Q1W2E3"
    write(tmp, data)
    os.rename(tmp, path)


def emacs_save(path: Path, data: bytes) -> None:
    lock = path.parent / f".#{path.name}"
    os.symlink("user@host.1234:1700000000", lock)  # a dangling symlink, as emacs makes it
    autosave = path.parent / f"#{path.name}#"
    write(autosave, b"partial")
    os.rename(path, path.parent / (path.name + "~"))
    write(path, data)
    os.unlink(autosave)
    os.unlink(lock)


def in_place_chunks(path: Path, data: bytes) -> None:
    """VS Code / nano: truncate, then write in several chunks."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        for i in range(0, len(data), 4096):
            os.write(fd, data[i : i + 4096])
    finally:
        os.close(fd)


SAVES: dict[str, Callable[[Path, bytes], None]] = {
    "vim": vim_save,
    "sed-i": sed_i_save,
    "jetbrains": jetbrains_save,
    "gedit": gedit_save,
    "emacs": emacs_save,
    "in-place": in_place_chunks,
}


@pytest.mark.slow
def test_each_editor_save_uploads_one_final_file(
    make_sync: Callable[..., SyncProc], server: LocalServer, remote: ProjectClient
) -> None:
    sp = make_sync()
    root = sp.root
    for name in SAVES:
        write(root / f"{name}.txt", b"original\n")
    sp.start()
    sp.wait_idle()
    for name, save in SAVES.items():
        server.reset_stats()
        final = f"final content from {name}\n".encode() * 50
        save(root / f"{name}.txt", final)
        wait_for(lambda n=name, f=final: remote_bytes(remote, f"{n}.txt") == f, what=name)
        sp.wait_idle()
        assert server.requests_count("PUT upload") == 1, name
        assert server.requests_count("DELETE upload") == 0, name
    # Exactly the final files: no temp, backup, swap, probe or lock file reached the server.
    assert set(remote_files(remote)) == {"README.md", ".dominoignore"} | {
        f"{name}.txt" for name in SAVES
    }
    emacs_backups = [p for p in os.listdir(root) if p.endswith("~")]
    assert set(emacs_backups) == {"emacs.txt~"}  # emacs keeps its backup locally only
    assert sp.terminate() == 0


@pytest.mark.slow
def test_burst_of_200_each_uploaded_once_and_ignores(
    make_sync: Callable[..., SyncProc], server: LocalServer, remote: ProjectClient
) -> None:
    sp = make_sync().start()
    sp.wait_idle()
    server.reset_stats()
    root = sp.root
    (root / "a" / "b").mkdir(parents=True)
    for i in range(200):
        d = root / "a" / "b" if i % 2 else root / "a"
        write(d / f"f{i:03d}.dat", b"x" * 10)
        write(d / f"f{i:03d}.dat", f"final {i}".encode())  # a second write in the same burst
    write(root / "notes.txt~", b"backup")
    write(root / ".dominoignore", b"*.log\nbuild/\n")
    wait_for(lambda: (root / ".dominofs" / "status.json").exists())
    sp.wait_idle(60)
    write(root / "run.log", b"ignored by .dominoignore")
    (root / "build").mkdir()
    write(root / "build" / "out.bin", b"ignored folder")
    write(root / "kept.txt", b"kept")
    wait_for(lambda: "kept.txt" in remote_files(remote), what="kept.txt")
    sp.wait_idle()
    files = remote_files(remote)
    for i in range(200):
        d = "a/b" if i % 2 else "a"
        assert f"{d}/f{i:03d}.dat" in files
    assert server.requests_count("PUT upload") == 202  # 200 + .dominoignore + kept.txt
    assert not {"notes.txt~", "run.log", "build/out.bin"} & files.keys()
    assert remote_bytes(remote, "a/b/f001.dat") == b"final 1"
    assert sp.terminate() == 0
