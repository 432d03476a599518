"""Real editors' and tools' save sequences through a real mount: each uploads the final file
exactly once and nothing temporary reaches the server."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.mount.conftest import Env
from tests.mount.test_write import MountHarness

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(90)]


def doc_mount(fenv: Env) -> MountHarness:
    """A mount holding /doc.txt ("line1"), settled, with the server's request counts reset."""
    h = MountHarness(fenv)
    h.write("/doc.txt", b"line1\n")
    h.settled()
    h.server.reset_stats()
    return h


@pytest.fixture
def mnt(fenv: Env) -> MountHarness:
    return doc_mount(fenv)


def run(*argv: str, cwd: Path | None = None) -> None:
    env = dict(os.environ, HOME=str(cwd or "/tmp"), GIT_CONFIG_NOSYSTEM="1")
    subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True, timeout=60)


def check_once(h: MountHarness, path: str, content: bytes) -> None:
    files = h.settled()
    assert files[path.lstrip("/")] == content
    assert h.server.requests_count("PUT upload") == 1
    temps = [p for p in files if p.endswith(("~", ".swp", "4913")) or "___jb_" in p]
    assert not temps
    assert h.read(path) == content


@pytest.mark.skipif(shutil.which("vim") is None, reason="vim is not installed")
@pytest.mark.parametrize("backupcopy", ["no", "yes"])
def test_real_vim(mnt: MountHarness, backupcopy: str) -> None:
    run("vim", "-u", "NONE", "-i", "NONE", "-es", "-c", f"set backupcopy={backupcopy} swapfile",
        "-c", "normal Gox", "-c", "wq", str(mnt.p("doc.txt")))  # fmt: skip
    check_once(mnt, "/doc.txt", b"line1\nx\n")


def test_vim_syscall_sequence(mnt: MountHarness) -> None:
    root = mnt.root
    fd = os.open(root / "4913", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    os.unlink(root / "4913")
    os.rename(root / "doc.txt", root / "doc.txt~")
    with open(root / "doc.txt", "wb") as fh:
        fh.write(b"vim\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.unlink(root / "doc.txt~")
    check_once(mnt, "/doc.txt", b"vim\n")


def test_real_sed_i(mnt: MountHarness) -> None:
    run("sed", "-i", "s/line1/sed/", str(mnt.p("doc.txt")))
    check_once(mnt, "/doc.txt", b"sed\n")


def test_jetbrains_safe_write(mnt: MountHarness) -> None:
    root = mnt.root
    (root / "doc.txt___jb_tmp___").write_bytes(b"jb\n")
    os.rename(root / "doc.txt", root / "doc.txt___jb_old___")
    os.rename(root / "doc.txt___jb_tmp___", root / "doc.txt")
    os.unlink(root / "doc.txt___jb_old___")
    check_once(mnt, "/doc.txt", b"jb\n")


def test_vscode_in_place_truncate(mnt: MountHarness) -> None:
    fd = os.open(mnt.p("doc.txt"), os.O_WRONLY)
    os.ftruncate(fd, 0)
    os.write(fd, b"vscode\n")
    os.close(fd)
    check_once(mnt, "/doc.txt", b"vscode\n")


def test_python_tempfile_replace(mnt: MountHarness) -> None:
    fd, tmp = tempfile.mkstemp(dir=mnt.root, prefix=".doc.txt.", suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"py\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, mnt.p("doc.txt"))
    check_once(mnt, "/doc.txt", b"py\n")


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_init_add_commit(mnt: MountHarness) -> None:
    root = mnt.root
    (root / "code.py").write_text("print(1)\n")
    run("git", "init", "-q", cwd=root)
    run("git", "-c", "user.name=t", "-c", "user.email=t@e", "add", "code.py", cwd=root)
    run("git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "m", cwd=root)
    run("git", "status", "--porcelain", cwd=root)
    files = mnt.settled()
    assert files["code.py"] == b"print(1)\n"
    assert not any(p.startswith(".git/") for p in files)
    assert mnt.server.requests_count("PUT upload") == 1
    assert (root / ".git" / "HEAD").exists()
