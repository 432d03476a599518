"""vfs.py over the real client and the real local server, without FUSE (the fast harness)."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dominofs.api import DominoClient, ProjectClient
from dominofs.cache import BlobCache
from dominofs.errors import DominoError, NotFound, ReadOnly
from dominofs.tree import Tree
from dominofs.vfs import VFS
from tests.conftest import ALICE_KEY, LocalServer


@pytest.fixture
def remote(server: LocalServer) -> Iterator[ProjectClient]:
    client = DominoClient(server.url, ALICE_KEY, retries=1)
    yield client.project("alice/demo")
    client.close()


def put(remote: ProjectClient, path: str, data: bytes) -> None:
    remote.upload(path, io.BytesIO(data), size=len(data))


def make_vfs(remote: ProjectClient, tmp_path: Path, **kwargs: object) -> VFS:
    head = remote.head_commit()
    cache = BlobCache(
        tmp_path / "cache",
        size_limit=1 << 30,
        fetch=lambda k, o: remote.iter_blob(k, offset=o),
        wait_timeout=20,
    )
    return VFS(
        remote,
        cache,
        Tree(head, remote.list_files(head)),
        listing_path=tmp_path / "listing.json",
        poll_interval=0,
        **kwargs,  # type: ignore[arg-type]
    )


def read_file(vfs: VFS, path: str) -> bytes:
    fh = vfs.open(path, os.O_RDONLY).fh
    try:
        out, off = bytearray(), 0
        while True:
            chunk = vfs.read(fh, 65536, off)
            if not chunk:
                return bytes(out)
            out += chunk
            off += len(chunk)
    finally:
        vfs.release(fh)


def test_tree_and_bytes_equal_the_server(
    remote: ProjectClient, server: LocalServer, tmp_path: Path
) -> None:
    files = {f"d{i % 3}/s{i % 2}/f{i}.txt": f"file {i}\n".encode() * (i + 1) for i in range(12)}
    for path, data in files.items():
        put(remote, path, data)
    vfs = make_vfs(remote, tmp_path)
    server.reset_stats()
    assert {"d0", "d1", "d2", ".runs", ".dominofs", "README.md"} <= set(vfs.readdir("/"))
    assert vfs.readdir("/d0") == ["s0", "s1"]
    for path, data in files.items():
        st = vfs.getattr("/" + path)
        assert stat.S_ISREG(st["st_mode"])
        assert st["st_size"] == len(data)
        assert st["st_uid"] == os.getuid()
    assert stat.S_ISDIR(vfs.getattr("/d1/s1")["st_mode"])
    counts = server.stats()["requests"]
    assert isinstance(counts, dict)
    asked = {k: v for k, v in counts.items() if "stats" not in k}
    assert not asked, f"metadata made requests: {asked}"
    for path, data in files.items():
        assert read_file(vfs, "/" + path) == data
    assert server.requests_count("GET blobs") == len(files)
    for path, data in files.items():  # cached now
        assert read_file(vfs, "/" + path) == data
    assert server.requests_count("GET blobs") == len(files)
    vfs.close()


def test_missing_paths_and_wrong_kinds(remote: ProjectClient, tmp_path: Path) -> None:
    put(remote, "a/b.txt", b"x")
    vfs = make_vfs(remote, tmp_path)
    with pytest.raises(NotFound):
        vfs.getattr("/nope")
    with pytest.raises(NotFound):
        vfs.readdir("/nope")
    with pytest.raises(DominoError) as info:
        vfs.readdir("/a/b.txt")
    assert info.value.errno == errno.ENOTDIR
    with pytest.raises(DominoError) as info:
        vfs.open("/a", os.O_RDONLY)
    assert info.value.errno == errno.EISDIR
    with pytest.raises(DominoError) as info:
        vfs.read(999, 10, 0)
    assert info.value.errno == errno.EBADF
    vfs.close()


def test_every_mutation_is_read_only(remote: ProjectClient, tmp_path: Path) -> None:
    put(remote, "a.txt", b"x")
    vfs = make_vfs(remote, tmp_path)
    for call in (
        lambda: vfs.open("/a.txt", os.O_WRONLY),
        lambda: vfs.open("/a.txt", os.O_RDONLY | os.O_TRUNC),
        lambda: vfs.create("/new.txt", 0o644, os.O_WRONLY),
        lambda: vfs.mkdir("/d", 0o755),
        lambda: vfs.unlink("/a.txt"),
        lambda: vfs.rename("/a.txt", "/b.txt"),
        lambda: vfs.truncate("/a.txt", 0),
        lambda: vfs.open("/.runs/index.json", os.O_WRONLY),
        lambda: vfs.open("/.dominofs/status.json", os.O_RDWR),
    ):
        with pytest.raises(ReadOnly) as info:
            call()
        assert info.value.errno == errno.EROFS
    vfs.close()


def test_refresh_swaps_tree_and_open_handle_keeps_its_version(
    remote: ProjectClient, tmp_path: Path
) -> None:
    put(remote, "data.csv", b"old,bytes\n")
    put(remote, "same.txt", b"same")
    vfs = make_vfs(remote, tmp_path)
    same_stat = vfs.getattr("/same.txt")
    fh = vfs.open("/data.csv", os.O_RDONLY).fh
    put(remote, "data.csv", b"new,bytes,longer\n")
    put(remote, "added/x.txt", b"x")
    diff = vfs.refresh()
    assert diff is not None
    assert diff.changed == {"data.csv"}
    assert diff.added == {"added/x.txt"}
    assert vfs.read(fh, 100, 0) == b"old,bytes\n"
    assert vfs.getattr("/data.csv", fh)["st_size"] == len(b"old,bytes\n")
    # The kernel keeps one size per inode: stat holds the open version until it is released.
    assert vfs.getattr("/data.csv")["st_size"] == len(b"old,bytes\n")
    assert read_file(vfs, "/data.csv") == b"new,bytes,longer\n"
    assert vfs.getattr("/same.txt") is same_stat  # unchanged paths keep their cached stat
    assert "added" in vfs.readdir("/")
    vfs.release(fh)
    assert vfs.getattr("/data.csv")["st_size"] == len(b"new,bytes,longer\n")
    saved = Tree.load(tmp_path / "listing.json")
    assert saved is not None
    assert saved.commit_id == vfs.tree.commit_id
    assert vfs.refresh() is None  # nothing new
    vfs.close()


def test_keep_cache_only_while_the_key_is_unchanged(remote: ProjectClient, tmp_path: Path) -> None:
    put(remote, "k.txt", b"v1")
    vfs = make_vfs(remote, tmp_path)
    first = vfs.open("/k.txt", os.O_RDONLY)
    assert vfs.read(first.fh, 10, 0) == b"v1"  # the whole blob: verified and cached
    second = vfs.open("/k.txt", os.O_RDONLY)
    assert not first.keep_cache
    assert second.keep_cache
    put(remote, "k.txt", b"v2")
    vfs.refresh()
    third = vfs.open("/k.txt", os.O_RDONLY)  # two versions open at once: no page cache
    assert not third.keep_cache
    assert third.direct_io
    for o in (first, second, third):
        vfs.release(o.fh)
    fourth = vfs.open("/k.txt", os.O_RDONLY)
    assert not fourth.keep_cache  # pages of v1 may linger: drop them
    assert vfs.read(fourth.fh, 10, 0) == b"v2"
    fifth = vfs.open("/k.txt", os.O_RDONLY)
    assert fifth.keep_cache
    vfs.release(fourth.fh)
    vfs.release(fifth.fh)
    vfs.close()


def test_no_keep_cache_for_bytes_not_verified_yet(remote: ProjectClient, tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    put(remote, "big.bin", data)
    flip = [True]
    gate = threading.Event()

    def fetch(key: str, offset: int) -> Iterator[bytes]:
        for i, chunk in enumerate(remote.iter_blob(key, offset=offset, chunk_size=65536)):
            if flip[0] and i == 1:
                assert gate.wait(20)  # the first chunk is served before the hash check
                chunk = bytes([chunk[0] ^ 1]) + chunk[1:]
            yield chunk

    head = remote.head_commit()
    cache = BlobCache(tmp_path / "cache", size_limit=1 << 30, fetch=fetch, wait_timeout=20)
    vfs = VFS(remote, cache, Tree(head, remote.list_files(head)), poll_interval=0)
    dropped: list[list[str]] = []
    vfs.invalidate = lambda paths: dropped.append(list(paths))
    for _ in range(2):
        gate.clear()
        o = vfs.open("/big.bin", os.O_RDONLY)
        assert not o.keep_cache  # the pages may hold bytes of a download that failed
        assert vfs.read(o.fh, 65536, 0) == data[:65536]
        gate.set()
        with pytest.raises(DominoError) as info:
            read_file_fh(vfs, o.fh)
        assert info.value.errno == errno.EIO
        vfs.release(o.fh)
        assert ["/big.bin"] in dropped  # the kernel is told to drop the inode's pages
        dropped.clear()
    flip[0] = False
    o = vfs.open("/big.bin", os.O_RDONLY)
    assert not o.keep_cache  # downloading again
    assert read_file_fh(vfs, o.fh) == data
    vfs.release(o.fh)
    o = vfs.open("/big.bin", os.O_RDONLY)
    assert o.keep_cache  # complete and verified: pages of this key are good
    vfs.release(o.fh)
    assert not dropped
    vfs.close()
    cache.close()


def read_file_fh(vfs: VFS, fh: int) -> bytes:
    out, off = bytearray(), 0
    while chunk := vfs.read(fh, 65536, off):
        out += chunk
        off += len(chunk)
    return bytes(out)


def test_pinned_commit_is_read_only_and_never_refreshes(
    remote: ProjectClient, tmp_path: Path
) -> None:
    put(remote, "p.txt", b"pinned")
    vfs = make_vfs(remote, tmp_path, pinned=True)
    put(remote, "p.txt", b"moved on")
    assert vfs.refresh() is None
    assert read_file(vfs, "/p.txt") == b"pinned"
    assert vfs.getattr("/p.txt")["st_mode"] & 0o222 == 0
    vfs.close()


def test_status_json(remote: ProjectClient, tmp_path: Path) -> None:
    put(remote, "s.txt", b"status")
    vfs = make_vfs(remote, tmp_path)
    read_file(vfs, "/s.txt")
    read_file(vfs, "/s.txt")
    assert vfs.readdir("/.dominofs") == ["status.json"]
    opened = vfs.open("/.dominofs/status.json", os.O_RDONLY)
    assert opened.direct_io
    data = vfs.read(opened.fh, 1 << 20, 0)
    assert vfs.getattr("/.dominofs/status.json", opened.fh)["st_size"] == len(data)
    buf = bytearray(len(data) + 10)  # the FUSE path: into libfuse's buffer, same bytes
    assert vfs.read_into(opened.fh, memoryview(buf), 0) == len(data)
    assert bytes(buf[: len(data)]) == data
    assert vfs.read_into(opened.fh, memoryview(buf)[:5], len(data) - 2) == 2
    vfs.release(opened.fh)
    with pytest.raises(DominoError) as info:
        vfs.read_into(opened.fh, memoryview(buf), 0)
    assert info.value.errno == errno.EBADF
    status = json.loads(data)
    assert status["cache"]["hits"] == 1
    assert status["cache"]["misses"] == 1
    assert status["server_reachable"] is True
    assert status["pending_uploads"] == 0
    assert status["project"] == "alice/demo"
    assert ALICE_KEY not in data.decode()
    vfs.close()


def test_runs_start_through_the_vfs(remote: ProjectClient, tmp_path: Path) -> None:
    vfs = make_vfs(remote, tmp_path)
    fh = vfs.open("/.runs/start", os.O_WRONLY | os.O_TRUNC).fh
    vfs.write(fh, b'{"command": ["python", "-c", "print(1)"]}', 0)
    vfs.flush(fh)
    vfs.release(fh)
    assert len(remote.list_runs()) == 1
    fh = vfs.open("/.runs/start", os.O_WRONLY).fh
    vfs.write(fh, b'{"command": 5}', 0)
    with pytest.raises(DominoError) as info:
        vfs.flush(fh)
    assert info.value.errno == errno.EINVAL
    vfs.release(fh)
    assert len(remote.list_runs()) == 1
    names = vfs.readdir("/.runs")
    run_id = remote.list_runs()[0].id
    assert f"{run_id}.json" in names
    opened = vfs.open(f"/.runs/{run_id}.json", os.O_RDONLY)
    data = vfs.read(opened.fh, 1 << 20, 0)
    assert vfs.getattr(f"/.runs/{run_id}.json", opened.fh)["st_size"] == len(data)
    assert json.loads(data)["id"] == run_id
    vfs.release(opened.fh)
    vfs.close()


def test_unreachable_server_keeps_cached_bytes_and_fails_uncached(
    remote: ProjectClient, server: LocalServer, tmp_path: Path
) -> None:
    put(remote, "cached.txt", b"cached bytes")
    put(remote, "cold.txt", b"cold bytes")
    vfs = make_vfs(remote, tmp_path)
    assert read_file(vfs, "/cached.txt") == b"cached bytes"
    port = server.port
    server.stop()
    assert read_file(vfs, "/cached.txt") == b"cached bytes"
    with pytest.raises(DominoError) as info:
        read_file(vfs, "/cold.txt")
    assert info.value.errno == errno.EIO
    assert vfs.refresh() is None
    assert vfs.status()["server_reachable"] is False
    server.start(port=port)
    vfs.refresh()
    assert vfs.status()["server_reachable"] is True
    assert read_file(vfs, "/cold.txt") == b"cold bytes"
    vfs.close()
