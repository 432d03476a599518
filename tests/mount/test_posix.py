"""POSIX semantics of a real mount, as Linux's own filesystems behave: modes and umask, owners,
set-id bits, times (UTIME_NOW / UTIME_OMIT), link counts, name lengths, rename's errors, hard
links, symlinks, fifos, sockets and device nodes; as root and as an unprivileged user (uid
65534) on a mount with --allow-other, the kernel checking permissions from what we report."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mount.conftest import Env, wait_for
from tests.mount.test_write import MountHarness

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(90)]

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, other users)")


@pytest.fixture
def shared(fenv: Env) -> Iterator[MountHarness]:
    """A mount with --allow-other at a mount point every user can reach."""
    top = Path(tempfile.mkdtemp(prefix="dominofs-shared-"))
    os.chmod(top, 0o755)
    try:
        h = MountHarness.__new__(MountHarness)
        h.env = fenv
        h.remote, h.server = fenv.remote, fenv.server
        h.mount = fenv.mount(
            "--upload-delay", "0.3", "--poll-interval", "0", "--allow-other", at=top / "mnt"
        )
        h.root = h.mount.path
        yield h
    finally:
        for m in fenv.mounts:
            fenv.unmount(m)
        shutil.rmtree(top, ignore_errors=True)


def as_nobody(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`sh -c script` as uid/gid 65534 with no other groups."""
    return subprocess.run(
        ["sh", "-c", script], cwd=cwd, user=NOBODY, group=NOBODY, extra_groups=[],
        capture_output=True, text=True, timeout=30, check=False, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def err(fn: object, *args: object) -> int:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    return 0


def test_modes_umask_link_counts_names_and_renames(fenv: Env) -> None:
    h = MountHarness(fenv)
    root = h.root
    old = os.umask(0o022)
    try:
        os.mkdir(root / "d", 0o700)
        fd = os.open(root / "d" / "f", os.O_WRONLY | os.O_CREAT, 0o666)
        os.close(fd)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(root / "d").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(root / "d" / "f").st_mode) == 0o644
    # Folders: 2 + subfolders; the parent counts its new child.
    before = os.stat(root).st_nlink
    os.mkdir(root / "d" / "sub")
    assert os.stat(root / "d").st_nlink == 3
    os.mkdir(root / "e")
    assert os.stat(root).st_nlink == before + 1
    os.rmdir(root / "e")
    assert os.stat(root).st_nlink == before
    # Names: 255 bytes is the limit, longer ones fail as on ext4.
    assert err(os.open, root / ("x" * 256), os.O_WRONLY | os.O_CREAT) == errno.ENAMETOOLONG
    assert err(os.mkdir, root / ("é" * 128)) == errno.ENAMETOOLONG
    assert err(os.stat, root / ("x" * 256)) == errno.ENAMETOOLONG
    (root / ("y" * 255)).write_bytes(b"ok")
    # rename: inode kept; every refusal ext4 gives.
    ino = os.stat(root / "d" / "f").st_ino
    os.rename(root / "d" / "f", root / "g")
    assert os.stat(root / "g").st_ino == ino
    (root / "full").mkdir()
    (root / "full" / "x").write_bytes(b"x")
    (root / "empty").mkdir()
    assert err(os.rename, root / "empty", root / "full") == errno.ENOTEMPTY
    assert err(os.rename, root / "g", root / "empty") == errno.EISDIR
    assert err(os.rename, root / "empty", root / "g") == errno.ENOTDIR
    assert err(os.rename, root / "d", root / "d" / "sub" / "in") == errno.EINVAL
    assert err(os.rmdir, root / "full") == errno.ENOTEMPTY
    # Times: ns kept exactly; UTIME_OMIT (touch -a / -m) leaves the other; chmod moves ctime.
    os.utime(root / "g", ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(root / "g")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    subprocess.run(["touch", "-a", str(root / "g")], check=True)
    st2 = os.stat(root / "g")
    assert st2.st_mtime_ns == 2_000_000_456
    assert st2.st_atime_ns > st.st_atime_ns
    os.chmod(root / "g", 0o600)
    st3 = os.stat(root / "g")
    assert st3.st_ctime_ns >= st2.st_ctime_ns
    assert st3.st_mtime_ns == 2_000_000_456
    files = h.settled()
    assert files["g"] == b""
    assert files["y" * 255] == b"ok"
    assert "d/f" not in files


@needs_root
def test_owners_set_id_bits_and_other_users(shared: MountHarness) -> None:
    root = shared.root
    os.chmod(root, 0o755)
    (root / "private").write_bytes(b"secret")
    os.chmod(root / "private", 0o600)
    r = as_nobody("cat private", root)
    assert r.returncode != 0
    assert "Permission denied" in r.stderr
    os.chmod(root / "private", 0o644)
    assert as_nobody("cat private", root).stdout == "secret"
    # chown to any owner as root; a new node belongs to whoever made it.
    os.mkdir(root / "pub", 0o777)
    os.chmod(root / "pub", 0o777)
    r = as_nobody("echo mine > pub/theirs && mkdir pub/dir && stat -c %u:%g pub/theirs", root)
    assert r.stdout.strip() == f"{NOBODY}:{NOBODY}", r.stderr
    assert as_nobody("chown 0 pub/theirs", root).returncode != 0  # only root gives files away
    os.chown(root / "pub" / "theirs", 1234, 5678)
    st = os.stat(root / "pub" / "theirs")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.chown(root / "pub" / "theirs", -1, 42)
    assert (os.stat(root / "pub" / "theirs").st_uid, os.stat(root / "pub" / "theirs").st_gid) == (
        1234,
        42,
    )
    # A set-gid folder hands its group down, and its set-gid bit to subfolders.
    os.mkdir(root / "team")
    os.chown(root / "team", 0, 4321)
    os.chmod(root / "team", 0o2777)
    (root / "team" / "doc").write_bytes(b"d")
    os.mkdir(root / "team" / "sub")
    assert os.stat(root / "team" / "doc").st_gid == 4321
    assert os.stat(root / "team" / "sub").st_mode & stat.S_ISGID
    # A write by another user clears set-uid (ext4 does the same).
    (root / "pub" / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "pub" / "suid", 0o4777)
    assert as_nobody("printf x >> pub/suid", root).returncode == 0
    assert stat.S_IMODE(os.stat(root / "pub" / "suid").st_mode) == 0o777
    # The sticky bit: others may not remove what is not theirs.
    os.mkdir(root / "tmp")
    os.chmod(root / "tmp", 0o1777)
    (root / "tmp" / "roots").write_bytes(b"r")
    r = as_nobody("rm -f tmp/roots", root)
    assert r.returncode != 0
    assert (root / "tmp" / "roots").exists()
    # All of it is kept by the mount: a remount shows the same owners and modes.
    shared.settled()
    m = shared.mount
    shared.env.unmount(m)
    shared.mount = shared.env.mount("--poll-interval", "0", "--allow-other", at=m.path)
    st = os.stat(root / "pub" / "theirs")
    assert (st.st_uid, st.st_gid) == (1234, 42)
    assert stat.S_IMODE(os.stat(root / "team").st_mode) == 0o2777
    assert as_nobody("cat pub/dir/../theirs", root).stdout == "mine\n"


def test_hard_links_share_one_inode_and_are_two_files_on_the_server(fenv: Env) -> None:
    h = MountHarness(fenv)
    root = h.root
    (root / "a").write_bytes(b"one")
    os.link(root / "a", root / "b")
    assert os.stat(root / "a").st_ino == os.stat(root / "b").st_ino
    assert os.stat(root / "a").st_nlink == 2
    with open(root / "b", "r+b") as fh:
        fh.write(b"two")
    assert (root / "a").read_bytes() == b"two"
    files = h.settled()
    assert files["a"] == files["b"] == b"two"
    os.unlink(root / "a")
    assert os.stat(root / "b").st_nlink == 1
    files = h.settled()
    assert "a" not in files
    assert files["b"] == b"two"


def test_symlinks_fifos_sockets_and_devices_are_local(fenv: Env) -> None:
    h = MountHarness(fenv)
    root = h.root
    (root / "target.txt").write_bytes(b"t")
    os.symlink("target.txt", root / "rel")
    os.symlink("/nowhere/at/all", root / "dangling")
    assert os.readlink(root / "rel") == "target.txt"
    assert (root / "rel").read_bytes() == b"t"  # followed by the kernel
    assert err(os.open, root / "rel", os.O_RDONLY | os.O_NOFOLLOW) == errno.ELOOP
    os.symlink("loop", root / "loop")
    assert err(os.stat, root / "loop") == errno.ELOOP
    os.mkfifo(root / "fifo", 0o640)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append((root / "fifo").read_bytes()))
    reader.start()
    with open(root / "fifo", "wb") as fh:
        fh.write(b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"]
    with socket.socket(socket.AF_UNIX) as srv, socket.socket(socket.AF_UNIX) as cli:
        srv.bind(str(root / "sock"))
        srv.listen(1)
        cli.connect(str(root / "sock"))
        conn, _ = srv.accept()
        with conn:
            cli.sendall(b"hi")
            assert conn.recv(2) == b"hi"
    assert stat.S_ISSOCK(os.stat(root / "sock").st_mode)
    if os.geteuid() == 0:
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        assert os.stat(root / "null").st_rdev == os.makedev(1, 3)
    files = h.settled()
    assert set(files) == {"README.md", ".dominoignore", "target.txt"}
    local = wait_for(lambda: h.status()["local_only"]["objects"] >= 5, what="counted")
    assert local


def test_links_option_carries_symlinks_as_link_files(fenv: Env) -> None:
    h = MountHarness(fenv, "--links")
    os.symlink("data/train.csv", h.root / "latest")
    files = h.settled()
    assert files["latest.dominolink"] == b"data/train.csv"
    assert "latest" not in files
    # Another mount of the project with --links sees a symlink again; one without sees the
    # plain link file.
    other = fenv.mount("--links", "--read-only", "--poll-interval", "0", name="other")
    wait_for(lambda: (other.path / "latest").is_symlink(), what="the link shows")
    assert os.readlink(other.path / "latest") == "data/train.csv"
    assert not (other.path / "latest.dominolink").exists()
    plain = fenv.mount("--read-only", "--poll-interval", "0", name="plain")
    assert (plain.path / "latest.dominolink").read_bytes() == b"data/train.csv"
    os.unlink(h.root / "latest")
    wait_for(lambda: "latest.dominolink" not in h.server_files(), what="deleted there")
    # One writable mount per project: its local layer has one owner.
    (fenv.root / "plain2").mkdir()
    r = fenv.cli("mount", "alice/demo", str(fenv.root / "plain2"))
    assert r.returncode != 0
    assert "already mounted" in r.stderr


def test_owner_and_modes_of_server_files_are_options(fenv: Env) -> None:
    fenv.put("sub/x.txt", b"x")
    m = fenv.mount("--read-only", "--uid", "1234", "--gid", "99", "--file-mode", "0640",
                   "--dir-mode", "0750", "--poll-interval", "0")  # fmt: skip
    f, d = os.stat(m.path / "sub" / "x.txt"), os.stat(m.path / "sub")
    assert (f.st_uid, f.st_gid, stat.S_IMODE(f.st_mode)) == (1234, 99, 0o440)  # read-only
    assert (d.st_uid, d.st_gid, stat.S_IMODE(d.st_mode)) == (1234, 99, 0o550)
    fenv.unmount(m)
    m = fenv.mount("--umask", "077", "--poll-interval", "0")
    assert stat.S_IMODE(os.stat(m.path / "sub" / "x.txt").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(m.path / "sub").st_mode) == 0o700
    r = fenv.cli("mount", "alice/demo", str(fenv.root), "--file-mode", "999")
    assert r.returncode == 2
    assert "octal" in r.stderr
    assert "Traceback" not in r.stderr
