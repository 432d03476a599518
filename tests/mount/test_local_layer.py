"""The local layer with real tools: what the server cannot hold is kept across umount, remount
and kill -9 (git, rsync, tar, cp -a, python -m venv), and a crash loses no saved file even with
the server away."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.mount.conftest import Env, wait_for
from tests.mount.test_write import MountHarness

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(120)]


def run(*argv: str, cwd: Path | None = None) -> str:
    env = dict(os.environ, HOME=str(cwd or "/tmp"), GIT_CONFIG_NOSYSTEM="1", LC_ALL="C")
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, f"{argv}: {p.stderr}"
    return p.stdout


def remount(h: MountHarness, *extra: str) -> None:
    h.settled()
    h.env.unmount(h.mount)
    h.mount = h.env.mount("--upload-delay", "0.3", "--poll-interval", "0", *extra)
    h.root = h.mount.path


def test_git_repo_and_local_only_files_survive_a_remount(fenv: Env) -> None:
    h = MountHarness(fenv)
    repo = h.root / "proj"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    run("git", "init", "-q", cwd=repo)
    (repo / "train.py").write_text("print(1)\n")
    run(*git, "add", "train.py", cwd=repo)
    run(*git, "commit", "-qm", "first", cwd=repo)
    run("git", "checkout", "-qb", "feature", cwd=repo)
    (repo / "train.py").write_text("print(2)\n")
    run(*git, "commit", "-qam", "second", cwd=repo)
    (h.root / "notes.pyc").write_bytes(b"ignored by .dominoignore")
    (h.root / ".train.py.swp").write_bytes(b"vim swap")
    before = h.status()["local_only"]
    assert before["objects"] > 10
    assert before["bytes"] > 0
    files = h.settled()
    assert "proj/train.py" in files
    assert not [p for p in files if ".git/" in p or p.endswith((".pyc", ".swp"))]
    remount(h)
    repo = h.root / "proj"
    log = run("git", "log", "--format=%s", "feature", cwd=repo)
    assert log.split() == ["second", "first"]
    run("git", "fsck", "--strict", cwd=repo)
    assert run("git", "status", "--porcelain", cwd=repo) == ""
    assert (h.root / "notes.pyc").read_bytes() == b"ignored by .dominoignore"
    assert (h.root / ".train.py.swp").read_bytes() == b"vim swap"
    assert h.status()["local_only"]["objects"] == before["objects"]
    shown = wait_for(
        lambda: "local only" in (out := h.env.cli("status").stdout) and out, what="status"
    )
    assert f"{before['objects']} objects" in shown


def _tree(src: Path) -> None:
    """A tree with what rsync -a carries: modes, times, symlinks, hard links, empty folders."""
    (src / "code").mkdir(parents=True)
    (src / "code" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(src / "code" / "run.sh", 0o755)
    (src / "secret").write_bytes(b"s" * 100)
    os.chmod(src / "secret", 0o600)
    (src / "data").mkdir()
    (src / "data" / "a.csv").write_text("x,y\n1,2\n")
    os.link(src / "data" / "a.csv", src / "data" / "same.csv")
    os.symlink("data/a.csv", src / "latest")
    os.symlink("../nowhere", src / "data" / "dangling")
    (src / "empty").mkdir()
    os.chmod(src / "empty", 0o700)
    for i, p in enumerate(sorted(src.rglob("*"))):
        os.utime(
            p,
            ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_123_456_789 + i),
            follow_symlinks=False,
        )
    os.utime(src, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))


def test_rsync_tar_and_cp_a_keep_everything_across_a_remount(fenv: Env, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    h = MountHarness(fenv)
    dst = h.root / "dst"
    run("rsync", "-aH", f"{src}/", f"{dst}/")
    assert run("rsync", "-aiH", "--dry-run", f"{src}/", f"{dst}/") == ""
    assert os.stat(dst / "data" / "a.csv").st_ino == os.stat(dst / "data" / "same.csv").st_ino
    run("tar", "-C", str(src), "-cf", str(tmp_path / "t.tar"), ".")
    (h.root / "untar").mkdir()
    run("tar", "-C", str(h.root / "untar"), "-xpf", str(tmp_path / "t.tar"))
    run("cp", "-a", str(src), str(h.root / "cpa"))
    remount(h)
    dst = h.root / "dst"
    assert run("rsync", "-aiH", "--dry-run", f"{src}/", f"{dst}/") == ""
    for copy in (h.root / "untar", h.root / "cpa"):
        assert run("rsync", "-aiH", "--dry-run", "--no-times", f"{src}/", f"{copy}/") == ""
        assert os.readlink(copy / "latest") == "data/a.csv"
        assert os.stat(copy / "data" / "a.csv").st_nlink == 2
    files = h.server_files()
    assert files["dst/data/a.csv"] == files["dst/data/same.csv"] == b"x,y\n1,2\n"
    assert "dst/latest" not in files  # symlinks stay local without --links


def _fsync_write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_kill9_after_fsynced_saves_then_offline_then_back(fenv: Env) -> None:
    fenv.put("edit.txt", b"old")
    fenv.put("over.txt", b"old")
    h = MountHarness(fenv, "--upload-delay", "60")
    root = h.root
    want: dict[str, bytes] = {}
    for d in range(10):
        (root / f"new{d}" / "deep").mkdir(parents=True)
        for i in range(3):
            rel = f"new{d}/deep/f{i}.txt"
            _fsync_write(root / rel, f"{d}-{i}".encode())
            want[rel] = f"{d}-{i}".encode()
    _fsync_write(root / "over.txt.tmp", b"saved by rename")
    os.rename(root / "over.txt.tmp", root / "over.txt")
    want["over.txt"] = b"saved by rename"
    with open(root / "edit.txt", "r+b") as fh:
        fh.write(b"NEW")
        fh.flush()
        os.fsync(fh.fileno())
    want["edit.txt"] = b"NEW"
    (root / ".git").mkdir()
    _fsync_write(root / ".git" / "HEAD", b"ref: refs/heads/main\n")
    os.symlink("edit.txt", root / "link")
    fenv.server.reset_stats()
    assert h.mount.proc is not None
    os.killpg(h.mount.proc.pid, signal.SIGKILL)
    h.mount.proc.wait(10)
    port = fenv.server.port
    fenv.server.stop()
    try:
        h.mount = fenv.mount("--poll-interval", "0", "--upload-delay", "0.3", name="again")
        root = h.mount.path
        for rel, data in want.items():
            assert (root / rel).read_bytes() == data, rel
        assert (root / ".git" / "HEAD").read_bytes() == b"ref: refs/heads/main\n"
        assert os.readlink(root / "link") == "edit.txt"
        assert not (root / "over.txt.tmp").exists()
    finally:
        fenv.server.start(port=port)
    h.root = root
    files = h.settled()
    for rel, data in want.items():
        assert files[rel] == data, rel
    assert fenv.server.requests_count("PUT upload") == len(want)  # each once, nothing else
    assert not [p for p in files if p.startswith(".git") or p.endswith(".tmp") or p == "link"]


def _wheel(where: Path) -> Path:
    """A minimal pure-Python wheel, written by hand (no build backend, no network)."""
    name = "tinypkg-1.0-py3-none-any.whl"
    files = {
        "tinypkg/__init__.py": b"VALUE = 42\n",
        "tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        "tinypkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = hashlib.sha256(data).digest()
        import base64

        b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path},sha256={b64},{len(data)}")
    record.append("tinypkg-1.0.dist-info/RECORD,,")
    with zipfile.ZipFile(where / name, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
        z.writestr("tinypkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return where / name


@pytest.mark.slow
def test_python_venv_in_the_mount_installs_a_wheel(fenv: Env, tmp_path: Path) -> None:
    h = MountHarness(fenv)
    venv = h.root / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    assert (venv / "lib64").is_symlink()
    run(str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
        str(_wheel(tmp_path)))  # fmt: skip
    out = run(str(venv / "bin" / "python"), "-c", "import tinypkg; print(tinypkg.VALUE)")
    assert out.strip() == "42"
    remount(h)
    out = run(str(h.root / "venv" / "bin" / "python"), "-c", "import tinypkg; print(tinypkg.VALUE)")
    assert out.strip() == "42"
    assert shutil.which("python", path=str(h.root / "venv" / "bin")) is not None
    wait_for(lambda: h.status()["pending_uploads"] == 0, what="drained")
