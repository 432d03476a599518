"""The write side's file semantics: one behaviour suite, two harnesses (vfs directly, and a real
FUSE mount), each checked against the real local server."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dominofs.api import DominoClient, ProjectClient
from dominofs.cache import BlobCache
from dominofs.outbox import Outbox
from dominofs.tree import Tree
from dominofs.vfs import VFS
from tests.conftest import ALICE_KEY, LocalServer
from tests.mount.conftest import Env, fuse_available, wait_for

pytestmark = [pytest.mark.timeout(90)]

DELAY = "0.3"


class Harness:
    """File operations on the mount's view, by absolute mount path ("/a/b")."""

    remote: ProjectClient
    server: LocalServer

    def write(self, path: str, data: bytes) -> None:
        raise NotImplementedError

    def read(self, path: str) -> bytes:
        raise NotImplementedError

    def append(self, path: str, data: bytes) -> None:
        raise NotImplementedError

    def write_at(self, path: str, data: bytes, offset: int) -> None:
        raise NotImplementedError

    def truncate(self, path: str, length: int) -> None:
        raise NotImplementedError

    def call(self, name: str, *args: Any) -> Any:
        raise NotImplementedError

    def stat(self, path: str) -> os.stat_result | dict[str, int]:
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:
        raise NotImplementedError

    def create_excl(self, path: str) -> None:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        raise NotImplementedError

    def server_files(self) -> dict[str, bytes]:
        head = self.remote.head_commit()
        return {
            f.path: b"".join(self.remote.iter_blob(f.key)) for f in self.remote.list_files(head)
        }

    def settled(self) -> dict[str, bytes]:
        wait_for(lambda: self.status()["pending_uploads"] == 0, what="queue drained")
        return self.server_files()


class VfsHarness(Harness):
    def __init__(self, remote: ProjectClient, server: LocalServer, tmp: Path) -> None:
        self.remote, self.server = remote, server
        head = remote.head_commit()
        self.cache = BlobCache(
            tmp / "cache", size_limit=1 << 30, fetch=lambda k, o: remote.iter_blob(k, offset=o)
        )
        self.outbox = Outbox(tmp / "outbox", remote, base_backoff=0.1, max_backoff=0.5)
        self.vfs = VFS(
            remote,
            self.cache,
            Tree(head, remote.list_files(head)),
            poll_interval=0,
            outbox=self.outbox,
            upload_delay=float(DELAY),
            layer_dir=tmp / "layer",
        )
        self.outbox.start()
        self.vfs.start()

    def close(self) -> None:
        self.vfs.close()
        self.outbox.close()
        self.cache.close()

    def _open(self, path: str, flags: int) -> int:
        try:
            return self.vfs.open(path, flags).fh
        except OSError as exc:
            if exc.errno != errno.ENOENT or not flags & os.O_CREAT:
                raise
            return self.vfs.create(path, 0o644, flags).fh

    def write(self, path: str, data: bytes) -> None:
        fh = self._open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            self.vfs.write(fh, data, 0)
            self.vfs.flush(fh)
        finally:
            self.vfs.release(fh)

    def write_at(self, path: str, data: bytes, offset: int) -> None:
        fh = self._open(path, os.O_RDWR)
        try:
            self.vfs.write(fh, data, offset)
        finally:
            self.vfs.release(fh)

    def append(self, path: str, data: bytes) -> None:
        fh = self._open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            self.vfs.write(fh, data, 0)
        finally:
            self.vfs.release(fh)

    def truncate(self, path: str, length: int) -> None:
        self.vfs.truncate(path, length)

    def read(self, path: str) -> bytes:
        fh = self.vfs.open(path, os.O_RDONLY).fh
        try:
            out = bytearray()
            while chunk := self.vfs.read(fh, 65536, len(out)):
                out += chunk
            return bytes(out)
        finally:
            self.vfs.release(fh)

    def call(self, name: str, *args: Any) -> Any:
        return getattr(self.vfs, name)(*args)

    def stat(self, path: str) -> dict[str, int]:
        return self.vfs.getattr(path)

    def listdir(self, path: str) -> list[str]:
        return [n for n in self.vfs.readdir(path) if n not in (".runs", ".dominofs")]

    def create_excl(self, path: str) -> None:
        fh = self.vfs.create(path, 0o644, os.O_WRONLY | os.O_CREAT | os.O_EXCL).fh
        self.vfs.release(fh)

    def status(self) -> dict[str, Any]:
        return self.vfs.status()


class MountHarness(Harness):
    def __init__(self, env: Env, *extra: str) -> None:
        self.env = env
        self.remote, self.server = env.remote, env.server
        self.mount = env.mount("--upload-delay", DELAY, "--poll-interval", "0", *extra)
        self.root = self.mount.path

    def p(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def write(self, path: str, data: bytes) -> None:
        self.p(path).write_bytes(data)

    def write_at(self, path: str, data: bytes, offset: int) -> None:
        fd = os.open(self.p(path), os.O_RDWR)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def append(self, path: str, data: bytes) -> None:
        with open(self.p(path), "ab") as fh:
            fh.write(data)

    def truncate(self, path: str, length: int) -> None:
        os.truncate(self.p(path), length)

    def read(self, path: str) -> bytes:
        return self.p(path).read_bytes()

    def call(self, name: str, *args: Any) -> Any:
        fn = {
            "mkdir": lambda p, m: os.mkdir(self.p(p), m),
            "chmod": lambda p, m: os.chmod(self.p(p), m),
        }
        if name in fn:
            return fn[name](*args)
        if name == "rename":
            return os.rename(self.p(args[0]), self.p(args[1]))
        return getattr(os, name)(self.p(args[0]), *args[1:])

    def stat(self, path: str) -> os.stat_result:
        return os.stat(self.p(path))

    def listdir(self, path: str) -> list[str]:
        return sorted(n for n in os.listdir(self.p(path)) if n not in (".runs", ".dominofs"))

    def create_excl(self, path: str) -> None:
        os.close(os.open(self.p(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / ".dominofs" / "status.json").read_text())
        return data


@pytest.fixture
def remote(server: LocalServer) -> Iterator[ProjectClient]:
    client = DominoClient(server.url, ALICE_KEY, retries=1)
    yield client.project("alice/demo")
    client.close()


@pytest.fixture(params=["vfs", pytest.param("mount", marks=pytest.mark.fuse)])
def fs(request: pytest.FixtureRequest, server: LocalServer, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "vfs":
        client = DominoClient(server.url, ALICE_KEY, retries=1)
        h = VfsHarness(client.project("alice/demo"), server, tmp_path / "h")
        try:
            yield h
        finally:
            h.close()
            client.close()
    else:
        if not fuse_available():
            pytest.skip("needs /dev/fuse and fusermount3")
        env: Env = request.getfixturevalue("fenv")
        yield MountHarness(env)


def st_size(st: os.stat_result | dict[str, int]) -> int:
    return st.st_size if isinstance(st, os.stat_result) else st["st_size"]


def st_mode(st: os.stat_result | dict[str, int]) -> int:
    return st.st_mode if isinstance(st, os.stat_result) else st["st_mode"]


def errno_of(fn: Any, *args: Any) -> int | None:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return None


# -- the behaviour suite --------------------------------------------------------------------


def test_create_write_offsets_append_truncate_upload_once(fs: Harness) -> None:
    fs.server.reset_stats()
    fs.write("/new.txt", b"hello world")
    fs.write_at("/new.txt", b"W", 6)
    fs.append("/new.txt", b"!!")
    assert fs.read("/new.txt") == b"hello World!!"
    fs.truncate("/new.txt", 5)
    assert fs.read("/new.txt") == b"hello"
    assert st_size(fs.stat("/new.txt")) == 5
    files = fs.settled()
    assert files["new.txt"] == b"hello"
    assert fs.server.requests_count("PUT upload") == 1
    # Reading it back costs no download (the staged file became the cached blob).
    before = fs.server.requests_count("GET blobs")
    assert fs.read("/new.txt") == b"hello"
    assert fs.server.requests_count("GET blobs") == before


def test_edit_a_server_file_in_place(fs: Harness) -> None:
    original = fs.read("/README.md")
    fs.append("/README.md", b"more\n")
    assert fs.read("/README.md") == original + b"more\n"
    assert fs.settled()["README.md"] == original + b"more\n"


def test_rename_over_existing_and_temp_then_rename(fs: Harness) -> None:
    fs.write("/a.txt", b"A")
    fs.settled()
    fs.server.reset_stats()
    fs.write("/a.txt.tmp123", b"A2")
    fs.call("rename", "/a.txt.tmp123", "/a.txt")
    assert fs.read("/a.txt") == b"A2"
    assert "a.txt.tmp123" not in fs.listdir("/")
    files = fs.settled()
    assert files["a.txt"] == b"A2"
    assert "a.txt.tmp123" not in files
    assert fs.server.requests_count("PUT upload") == 1


def test_unlink_and_rename_of_server_files(fs: Harness) -> None:
    fs.call("mkdir", "/d", 0o755)
    fs.write("/d/x.txt", b"x")
    fs.write("/d/y.txt", b"y")
    fs.settled()
    fs.call("rename", "/d/x.txt", "/d/z.txt")
    fs.call("unlink", "/d/y.txt")
    assert fs.listdir("/d") == ["z.txt"]
    files = fs.settled()
    assert files["d/z.txt"] == b"x"
    assert "d/x.txt" not in files
    assert "d/y.txt" not in files
    assert fs.listdir("/d") == ["z.txt"]


def test_folders_mkdir_rmdir_rename(fs: Harness) -> None:
    fs.call("mkdir", "/top", 0o755)
    fs.call("mkdir", "/top/sub", 0o755)
    fs.write("/top/sub/f.txt", b"f")
    fs.write("/top/g.txt", b"g")
    assert errno_of(fs.call, "rmdir", "/top") == errno.ENOTEMPTY
    assert errno_of(fs.call, "mkdir", "/top", 0o755) == errno.EEXIST
    fs.settled()
    fs.call("rename", "/top", "/moved")
    assert fs.listdir("/moved") == ["g.txt", "sub"]
    assert fs.read("/moved/sub/f.txt") == b"f"
    assert errno_of(fs.stat, "/top") == errno.ENOENT
    files = fs.settled()
    assert files["moved/sub/f.txt"] == b"f"
    assert files["moved/g.txt"] == b"g"
    assert not any(p.startswith("top/") for p in files)
    fs.call("mkdir", "/empty", 0o755)
    fs.call("rmdir", "/empty")
    assert "empty" not in fs.listdir("/")


def test_excl_chmod_and_refusals(fs: Harness) -> None:
    fs.create_excl("/index.lock")
    assert errno_of(fs.create_excl, "/index.lock") == errno.EEXIST
    fs.call("chmod", "/index.lock", 0o600)
    assert stat.S_IMODE(st_mode(fs.stat("/index.lock"))) == 0o600
    assert errno_of(fs.call, "rmdir", "/README.md") == errno.ENOTDIR
    assert errno_of(fs.call, "unlink", "/nope") == errno.ENOENT


def test_editor_temp_files_stay_local(fs: Harness) -> None:
    fs.server.reset_stats()
    fs.write("/.notes.txt.swp", b"swap")
    fs.write("/4913", b"")
    fs.write("/notes.txt~", b"backup")
    assert fs.read("/notes.txt~") == b"backup"
    fs.write("/notes.txt", b"final")
    files = fs.settled()
    assert files["notes.txt"] == b"final"
    assert not {".notes.txt.swp", "4913", "notes.txt~"} & files.keys()
    assert fs.server.requests_count("PUT upload") == 1


def test_status_json_fields(fs: Harness) -> None:
    st = fs.status()
    for key in (
        "pending_uploads",
        "conflicts",
        "deletions_kept_local",
        "cache",
        "last_error",
        "server_reachable",
    ):
        assert key in st
