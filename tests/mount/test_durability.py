"""Nothing lost: kill -9, the server away, umount with a queue, conflicts, --no-delete, modes."""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import LocalServer
from tests.mount.conftest import Env, fuse_available, fuse_env, wait_for
from tests.mount.test_write import MountHarness

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(90)]


def server_files(env: Env) -> dict[str, bytes]:
    r = env.remote
    head = r.head_commit()
    return {f.path: b"".join(r.iter_blob(f.key)) for f in r.list_files(head)}


def status(h: MountHarness) -> dict[str, object]:
    data: dict[str, object] = json.loads((h.root / ".dominofs" / "status.json").read_text())
    return data


def kill9(env: Env, h: MountHarness) -> None:
    assert h.mount.proc is not None
    os.killpg(h.mount.proc.pid, signal.SIGKILL)
    h.mount.proc.wait(10)


def test_fsync_then_kill9_then_remount_lands(fenv: Env) -> None:
    h = MountHarness(fenv, "--upload-delay", "60")
    with open(h.p("saved.txt"), "wb") as fh:
        fh.write(b"durable")
        fh.flush()
        os.fsync(fh.fileno())
    with open(h.p("closed.txt"), "wb") as fh:
        fh.write(b"closed")
    wait_for(lambda: status(h)["pending_uploads"] == 2, what="both queued")
    # Killed as soon as close returns: before the queuer takes the close (it gathers closes
    # for 50 ms) and maybe before the kernel's asynchronous RELEASE. The close's flush kept it.
    with open(h.p("instant.txt"), "wb") as fh:
        fh.write(b"closed a moment ago")
    kill9(fenv, h)
    assert "saved.txt" not in server_files(fenv)
    h2 = MountHarness(fenv)
    assert h2.read("/saved.txt") == b"durable"  # shown from the queue before it lands
    assert h2.read("/instant.txt") == b"closed a moment ago"
    wait_for(lambda: server_files(fenv).get("saved.txt") == b"durable", what="saved.txt lands")
    wait_for(lambda: server_files(fenv).get("closed.txt") == b"closed", what="closed.txt lands")
    wait_for(
        lambda: server_files(fenv).get("instant.txt") == b"closed a moment ago",
        what="instant.txt lands",
    )


def test_server_down_during_writes_then_back(fenv: Env) -> None:
    h = MountHarness(fenv)
    fenv.server.stop()
    for i in range(5):
        (h.root / f"burst{i}.txt").write_bytes(b"b%d" % i)
    assert (h.root / "burst3.txt").read_bytes() == b"b3"
    wait_for(lambda: status(h)["pending_uploads"] == 5, what="queued")
    fenv.server.start(port=fenv.server.port)
    files = wait_for(
        lambda: (f := server_files(fenv)) and all(f.get(f"burst{i}.txt") for i in range(5)) and f,
        timeout=45,
        what="all land",
    )
    assert isinstance(files, dict)
    assert files["burst4.txt"] == b"b4"


def test_umount_refuses_while_pending_force_keeps_queue(fenv: Env) -> None:
    h = MountHarness(fenv)
    fenv.server.stop()
    (h.root / "late.txt").write_bytes(b"late")
    res = fenv.cli("umount", str(h.root), "--timeout", "1.5")
    assert res.returncode != 0
    assert "late.txt" in res.stderr
    assert os.path.ismount(h.root)
    res = fenv.cli("umount", str(h.root), "--timeout", "0.5", "--force")
    assert res.returncode == 0, res.stderr
    assert not os.path.ismount(h.root)
    fenv.server.start(port=fenv.server.port)
    MountHarness(fenv)
    wait_for(lambda: server_files(fenv).get("late.txt") == b"late", what="late.txt lands")


def test_conflict_keeps_both(fenv: Env) -> None:
    h = MountHarness(fenv)
    assert h.read("/README.md")  # the mount knows the server's version
    fenv.put("README.md", b"theirs\n")
    h.write("/README.md", b"ours\n")
    st = wait_for(lambda: (s := status(h))["conflicts"] and s, what="a conflict")
    assert isinstance(st, dict)
    cpath = st["conflicts"][0]["conflict_path"]
    assert ".conflict-" in cpath
    files = server_files(fenv)
    assert files["README.md"] == b"theirs\n"
    assert files[cpath] == b"ours\n"
    wait_for(lambda: h.read("/README.md") == b"theirs\n", what="the mount shows theirs")
    assert h.read("/" + cpath) == b"ours\n"


def test_chmod_survives_remount(fenv: Env) -> None:
    h = MountHarness(fenv)
    h.write("/run.sh", b"echo hi\n")
    os.chmod(h.p("run.sh"), 0o755)
    # A mode follows a rename and leaves with an unlink: a file made again at that name has
    # the default mode after a remount too.
    h.write("/tool.sh", b"echo tool\n")
    os.chmod(h.p("tool.sh"), 0o700)
    os.rename(h.p("tool.sh"), h.p("bin.sh"))
    h.write("/gone.sh", b"echo gone\n")
    os.chmod(h.p("gone.sh"), 0o711)
    os.unlink(h.p("gone.sh"))
    h.write("/gone.sh", b"echo back\n")
    h.settled()
    fenv.unmount(h.mount)
    h2 = MountHarness(fenv)
    assert stat.S_IMODE(os.stat(h2.p("run.sh")).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(h2.p("bin.sh")).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(h2.p("gone.sh")).st_mode) == 0o644


@pytest.fixture
def nodelete_env(make_server: Callable[..., LocalServer], tmp_path: Path) -> Iterator[Env]:
    if not fuse_available():  # before starting a server it would not use
        pytest.skip("needs /dev/fuse and fusermount3")
    with fuse_env(make_server("--no-delete", name="nodelete"), tmp_path) as e:
        yield e


def test_no_delete_server_keeps_deletion_local(nodelete_env: Env) -> None:
    env = nodelete_env
    h = MountHarness(env)
    os.unlink(h.p("README.md"))
    st = wait_for(lambda: (s := status(h))["deletions_kept_local"] and s, what="kept local")
    assert isinstance(st, dict)
    assert st["deletions_kept_local"] == ["README.md"]
    assert "README.md" in server_files(env)
    assert not h.p("README.md").exists()
    env.unmount(h.mount)
    h2 = MountHarness(env)
    assert "README.md" not in os.listdir(h2.root)
    assert status(h2)["deletions_kept_local"] == ["README.md"]


def test_write_only_handles_skip_the_page_cache_yet_readers_see_their_writes(fenv: Env) -> None:
    # Write-only opens are direct_io (their bytes are kept once, in the staging file); a reader
    # that already holds the file's pages must still see what such a writer wrote.
    m = fenv.mount("--upload-delay", "0.2")
    path = m.path / "w.bin"
    data = os.urandom(3 << 20)
    with open(path, "wb") as f:  # O_WRONLY|O_CREAT|O_TRUNC
        f.write(data)
    expect = data[: 1 << 20] + b"X" * 4096 + data[(1 << 20) + 4096 :]
    with open(path, "rb") as r:
        assert r.read() == data
        fd = os.open(path, os.O_WRONLY)
        try:
            assert os.pwrite(fd, b"X" * 4096, 1 << 20) == 4096
        finally:
            os.close(fd)
        wait_for(lambda: os.pread(r.fileno(), len(data), 0) == expect, 5, "reader sees the write")
    assert path.read_bytes() == expect
    wait_for(lambda: server_files(fenv).get("w.bin") == expect, 30, "upload")
