"""Mount lifecycle through the real CLI: errors, background mode, umount, crashes, offline."""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import ALICE_KEY, BOTH_ROUTES
from tests.mount.conftest import Env, answers, wait_for

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(60)]


def assert_one_line_error(result: object, *words: str) -> None:
    rc, err = result.returncode, result.stderr  # type: ignore[attr-defined]
    assert rc != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("dominofs: error:")
    for w in words:
        assert w in lines[0], lines[0]
    assert ALICE_KEY not in err


def test_bad_key_unknown_project_missing_mount_point(fenv: Env) -> None:
    mp = fenv.root / "mp"
    mp.mkdir()
    r = fenv.cli("mount", "alice/demo", str(mp), key="wrong-key")
    assert_one_line_error(r, "key")
    assert not os.path.ismount(mp)
    r = fenv.cli("mount", "alice/nope", str(mp))
    assert_one_line_error(r)
    assert not os.path.ismount(mp)
    r = fenv.cli("mount", "alice/demo", str(fenv.root / "missing"))
    assert_one_line_error(r, "does not exist")
    (mp / "f").write_text("x")
    r = fenv.cli("mount", "alice/demo", str(mp))
    assert_one_line_error(r, "not empty")
    assert not os.path.ismount(mp)


def test_background_mount_and_umount(fenv: Env) -> None:
    fenv.put("bg.txt", b"background")
    mp = fenv.root / "bg"
    mp.mkdir()
    fenv.server.reset_stats()
    r = fenv.cli("mount", "alice/demo", str(mp))
    assert r.returncode == 0, r.stderr
    try:
        assert answers(mp)
        # The check before mounting asks for the head commit only: one listing in all.
        assert fenv.server.requests_count("GET files") == 1
        assert (mp / "bg.txt").read_bytes() == b"background"
        pids = [
            int(p) for p in os.listdir("/proc") if p.isdigit() and _cmdline(int(p)).count(str(mp))
        ]
        assert pids, "no mount process found"
        for pid in pids:
            assert ALICE_KEY not in _cmdline(pid)
        r = fenv.cli("umount", str(mp))
        assert r.returncode == 0, r.stderr
        assert not os.path.ismount(mp)
        wait_for(lambda: all(not Path(f"/proc/{p}").exists() for p in pids), what="exit")
    finally:
        fenv.cli("umount", str(mp))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_sigterm_unmounts_cleanly(fenv: Env) -> None:
    m = fenv.mount()
    assert m.proc is not None
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(20) == 0
    assert not os.path.ismount(m.path)


def test_kill_9_then_a_new_mount_on_the_same_point(fenv: Env) -> None:
    fenv.put("k.txt", b"still here")
    m = fenv.mount()
    assert m.proc is not None
    os.killpg(m.proc.pid, signal.SIGKILL)
    m.proc.wait(10)
    with pytest.raises(OSError, match="not connected") as info:
        os.listdir(m.path)
    assert info.value.errno == errno.ENOTCONN  # a dead mount, as a crash leaves it
    m2 = fenv.mount()
    assert m2.path == m.path
    assert (m2.path / "k.txt").read_bytes() == b"still here"


def test_server_down_cached_reads_work_uncached_fail_then_recover(fenv: Env) -> None:
    fenv.put("warm.txt", b"warm bytes")
    fenv.put("cold.txt", b"cold bytes")
    m = fenv.mount("--poll-interval", "1")
    assert (m.path / "warm.txt").read_bytes() == b"warm bytes"
    port = fenv.server.port
    fenv.server.stop()
    try:
        assert (m.path / "warm.txt").read_bytes() == b"warm bytes"
        assert "cold.txt" in os.listdir(m.path)
        started = time.monotonic()
        with pytest.raises(OSError, match="Input/output error") as info:
            (m.path / "cold.txt").read_bytes()
        assert info.value.errno == errno.EIO
        assert time.monotonic() - started < 40  # bounded by the client's timeout and retries
    finally:
        fenv.server.start(port=port)
    assert wait_for(lambda: (m.path / "cold.txt").read_bytes() == b"cold bytes", what="recover")


@BOTH_ROUTES
def test_offline_start_from_the_saved_listing(fenv: Env) -> None:
    fenv.put("offline.txt", b"kept")
    fenv.put("never-read.txt", b"cold")
    fenv.put("later.txt", b"read at the next mount")
    m = fenv.mount()
    assert (m.path / "offline.txt").read_bytes() == b"kept"
    fenv.unmount(m)
    port = fenv.server.port
    fenv.server.stop()
    try:
        m2 = fenv.mount(name="mnt2")
        assert sorted(n for n in os.listdir(m2.path) if not n.startswith(".")) == [
            "README.md",
            "later.txt",
            "never-read.txt",
            "offline.txt",
        ]
        assert (m2.path / "offline.txt").read_bytes() == b"kept"
        with pytest.raises(OSError, match="Input/output error") as info:
            (m2.path / "never-read.txt").read_bytes()
        assert info.value.errno == errno.EIO
    finally:
        fenv.server.start(port=port)
    # The server is back: a file of the saved listing, never listed by this mount, is read
    # (where the blob route is gone, by its path in that listing).
    assert wait_for(lambda: (m2.path / "never-read.txt").read_bytes() == b"cold", what="cold")
    # A mount started with the server up and the head unchanged also mounts the saved listing.
    fenv.unmount(m2)
    fenv.server.reset_stats()
    m3 = fenv.mount(name="mnt3")
    assert fenv.server.requests_count("GET files") == 0
    assert (m3.path / "later.txt").read_bytes() == b"read at the next mount"


def test_unreachable_with_nothing_saved_fails(fenv: Env) -> None:
    mp = fenv.root / "cold"
    mp.mkdir()
    fenv.server.stop()
    r = fenv.cli("mount", "alice/demo", str(mp))
    assert_one_line_error(r, "cannot reach")
    assert not os.path.ismount(mp)
