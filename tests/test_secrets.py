"""Secrets and permissions: the API key shows up nowhere, private files are private.

One scenario drives a real server, a background mount, a sync service and the everyday CLI
(successes, failures, --debug tracebacks, injected server faults) with a distinctive key, then
greps for the key in every argv we started, every log, status, registry, queue and state file,
the `.runs/` files and all captured output. Files that must hold the key (the config file the
login writes, the server's users file) are checked for mode 0600 instead.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ALICE_KEY, LocalServer
from tests.mount.conftest import answers, force_unmount, fuse_available

pytestmark = [pytest.mark.fuse, pytest.mark.slow, pytest.mark.timeout(120)]

SECRETS = [
    ALICE_KEY.encode(),
    base64.b64encode(f":{ALICE_KEY}".encode()),  # as a Basic credential
    ALICE_KEY.encode("utf-16-le"),
]


class Scenario:
    def __init__(self, server: LocalServer, tmp_path: Path) -> None:
        self.server = server
        self.root = tmp_path
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("DOMINO", "XDG_", "NOTIFY"))
        }
        self.env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            XDG_STATE_HOME=str(self.home / ".local" / "state"),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            DOMINO_API_HOST=server.url,
            DOMINO_USER_API_KEY=ALICE_KEY,
            DOMINOFS_READ_TIMEOUT="3",
        )
        self.outputs: list[tuple[str, str]] = []  # (what, text)
        self.argvs: list[list[str]] = []
        self.cmdlines: dict[str, bytes] = {}
        self.procs: list[subprocess.Popen[bytes]] = []

    def cli(
        self, *args: str, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "dominofs", *args]
        self.argvs.append(argv)
        p = subprocess.run(
            argv, env=env or self.env, input=stdin, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        self.outputs.append((" ".join(args), p.stdout + p.stderr))
        return p

    def faults(self, spec: str) -> None:
        requests.put(
            f"{self.server.url}/_faults", json={"spec": spec}, timeout=5
        ).raise_for_status()

    def cmdline(self, what: str, pid: int) -> None:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            self.cmdlines[what] = fh.read()


@pytest.fixture
def scenario(server: LocalServer, tmp_path: Path) -> Iterator[Scenario]:
    if not fuse_available():
        pytest.skip("needs /dev/fuse and fusermount3")
    s = Scenario(server, tmp_path)
    try:
        yield s
    finally:
        requests.delete(f"{server.url}/_faults", timeout=5)
        for p in s.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        force_unmount(tmp_path / "mnt")


def private_problems(*roots: Path) -> list[str]:
    """Directories not 0700 and files not 0600 (group/other bits set) under `roots`."""
    problems: list[str] = []
    for root in roots:
        if not root.exists():
            continue
        for path in [root, *root.rglob("*")]:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            if st.st_mode & 0o077:
                kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
                problems.append(f"{kind} {path} mode {stat.S_IMODE(st.st_mode):o}")
    return problems


def test_the_key_appears_nowhere_and_private_files_are_private(
    scenario: Scenario, server: LocalServer, tmp_path: Path
) -> None:
    s = scenario
    # -- login writes the config file (the one place the key belongs), mode 0600 ------------
    login_env = {k: v for k, v in s.env.items() if k != "DOMINO_USER_API_KEY"}
    p = s.cli("login", "--host", server.url, env=login_env, stdin=ALICE_KEY + "\n")
    assert p.returncode == 0, p.stderr
    config = s.home / ".config" / "dominofs" / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert ALICE_KEY in config.read_text()

    # -- everyday commands, good and bad, quiet and --debug ---------------------------------
    src = tmp_path / "src.txt"
    src.write_text("hello secrets\n")
    assert s.cli("--debug", "-vv", "put", "alice/demo", str(src), "notes/src.txt").returncode == 0
    assert s.cli("--debug", "-vv", "ls", "alice/demo", "-l", "-R").returncode == 0
    assert s.cli("ls", "alice/demo", "--json").returncode == 0
    got = s.cli("-vv", "get", "alice/demo", "notes/src.txt", str(tmp_path / "got.txt"))
    assert got.returncode == 0
    run = s.cli("--debug", "runs", "start", "alice/demo", "--direct", "--wait", "--title", "t",
                "echo", "run output")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert s.cli("runs", "list", "alice/demo").returncode == 0
    assert s.cli("--debug", "search", "README").returncode == 0
    failures = [
        ("--debug", "ls", "alice/no-such-project"),
        ("--debug", "get", "alice/demo", "missing.txt", str(tmp_path / "x")),
        ("--debug", "-vv", "runs", "show", "alice/demo", "no-such-run"),
        ("--debug", "call", "alice/demo", "1"),
        ("--debug", "ls", "not-a-project-ref"),
    ]
    for args in failures:
        assert s.cli(*args).returncode != 0, args
    bad_env = dict(s.env, DOMINO_API_HOST="http://127.0.0.1:9")
    assert s.cli("--debug", "-vv", "ls", "alice/demo", env=bad_env).returncode != 0
    s.faults("*:status=500")
    assert s.cli("--debug", "-vv", "ls", "alice/demo").returncode != 0
    s.faults("*:auth_after=0")
    assert s.cli("--debug", "-vv", "put", "alice/demo", str(src), "x.txt").returncode != 0
    s.faults("")

    # -- a background mount: argv, /proc/mounts options, .runs/ and status files -------------
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = s.cli("--debug", "-vv", "mount", "alice/demo", str(mnt), "--read-only")
    assert p.returncode == 0, p.stderr
    assert answers(mnt)
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    (entry,) = [m for m in mounts if m[1] == str(mnt)]
    options = entry[3].split(",")
    assert "allow_other" not in options, options
    assert "allow_root" not in options, options
    assert "default_permissions" in options, options
    status = json.loads(s.cli("status", "--json").stdout)
    (mount_entry,) = [e for e in status if e.get("kind") == "mount"]
    s.cmdline("mount daemon", int(mount_entry["pid"]))
    seen_through_mount: list[tuple[str, bytes]] = []
    for rel in ("notes/src.txt", ".dominofs/status.json", ".runs/index.json", ".runs/latest.json"):
        seen_through_mount.append((rel, (mnt / rel).read_bytes()))
    for child in (mnt / ".runs").iterdir():
        if child.name != "start":
            seen_through_mount.append((f".runs/{child.name}", child.read_bytes()))
    assert any(b"run output" in data for _, data in seen_through_mount)  # the log was read
    s.faults("blobs:status=500")
    with pytest.raises(OSError, match="Input/output error"):
        (mnt / "README.md").read_bytes()
    s.faults("")

    # -- a sync service ---------------------------------------------------------------------
    folder = tmp_path / "folder"
    folder.mkdir()
    sync_log = tmp_path / "sync.log"
    with open(sync_log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dominofs", "--debug", "-vv", "sync", "alice/demo",
             str(folder), "--upload-delay", "0.2", "--poll-interval", "0.5"],
            env=s.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    s.procs.append(proc)
    s.cmdline("sync", proc.pid)
    (folder / "synced.txt").write_text("synced\n")
    deadline = time.monotonic() + 30
    while "synced.txt" not in s.cli("ls", "alice/demo").stdout:
        assert time.monotonic() < deadline, sync_log.read_text()
        time.sleep(0.2)
    s.faults("upload:status=401")
    (folder / "refused.txt").write_text("refused\n")
    status_file = folder / ".dominofs" / "status.json"
    while "API key" not in (status_file.read_text() if status_file.exists() else ""):
        assert time.monotonic() < deadline + 30, sync_log.read_text()  # the refusal is logged
        time.sleep(0.1)
    s.faults("")
    assert s.cli("--debug", "status").returncode == 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert s.cli("-vv", "umount", str(mnt)).returncode == 0

    # -- grep ---------------------------------------------------------------------------------
    def leaks(data: bytes) -> bool:
        return any(secret in data for secret in SECRETS)

    assert leaks(config.read_bytes())  # the grep itself works
    for argv in s.argvs:
        assert not leaks(" ".join(argv).encode()), argv
    for what, cmdline in s.cmdlines.items():
        assert not leaks(cmdline), what
    for what, text in s.outputs:
        assert not leaks(text.encode()), f"output of: {what}"
    for rel, data in seen_through_mount:
        assert not leaks(data), rel
    allowed = {config, config.with_suffix(".tmp")}
    scanned = 0
    for path in tmp_path.rglob("*"):
        if path in allowed or path.is_relative_to(server.data_dir) or not path.is_file():
            continue
        if path.name == f"{server.data_dir.name}.users":
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            continue
        scanned += 1
        assert not leaks(path.read_bytes()), path
    assert scanned > 10  # logs, state databases, status and registry files were all looked at

    # -- permissions --------------------------------------------------------------------------
    problems = private_problems(s.home / ".local" / "state" / "dominofs", folder / ".dominofs")
    assert problems == [], "\n".join(problems)
    # The cache: its own directory is 0700, so nothing inside is reachable by others; diskcache
    # makes its index and shard folders with the umask, so only the blob files are checked.
    cache = s.home / ".cache" / "dominofs"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    # Small blobs live in the index itself (which holds the project's bytes, so it is 0600 too).
    index = [p for p in cache.rglob("cache.db*") if p.is_file()]
    assert index
    blobs = [p for p in cache.rglob("*") if p.is_file()]
    assert [p for p in blobs if p.stat().st_mode & 0o077] == []
