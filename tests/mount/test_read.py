"""The read side through a real FUSE mount: tree, bytes, sharing, refresh, pinning, .runs/."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading

import pytest

from tests.conftest import BOTH_ROUTES
from tests.mount.conftest import Env, wait_for

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(60)]

MiB = 1 << 20


def sha1_of(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_tree_and_bytes_equal_the_server(fenv: Env) -> None:
    files: dict[str, bytes] = {}
    for i in range(200):
        path = f"top{i % 4}/mid{i % 5}/leaf{i % 3}/f{i:03d}.txt"
        files[path] = f"{i}:".encode() * (i * 7 + 1)
    for path, data in files.items():
        fenv.put(path, data)
    big = os.urandom(MiB) * 64  # 64 MiB
    fenv.put("data/big.bin", big)
    head = fenv.remote.head_commit()
    listing = {f.path: f for f in fenv.remote.list_files(head)}
    m = fenv.mount()
    seen: dict[str, int] = {}
    dirs: set[str] = set()
    for root, dnames, fnames in os.walk(m.path):
        rel = os.path.relpath(root, m.path)
        if rel.startswith((".runs", ".dominofs")):
            continue
        for d in dnames:
            dirs.add(os.path.normpath(os.path.join(rel, d)))
        for f in fnames:
            p = os.path.normpath(os.path.join(rel, f))
            seen[p] = os.stat(os.path.join(root, f)).st_size
    assert seen == {p: f.size for p, f in listing.items()}
    expected_dirs = {p.rsplit("/", i)[0] for p in listing for i in range(1, p.count("/") + 1)}
    assert dirs - {".runs", ".dominofs"} == expected_dirs
    st = os.stat(m.path / "data/big.bin")
    assert st.st_mtime == pytest.approx(listing["data/big.bin"].mtime_ms / 1000, abs=0.01)
    for path, data in files.items():
        assert (m.path / path).read_bytes() == data
    assert sha1_of(str(m.path / "data/big.bin")) == hashlib.sha1(big).hexdigest()
    fenv.server.reset_stats()
    assert sha1_of(str(m.path / "data/big.bin")) == hashlib.sha1(big).hexdigest()
    assert fenv.server.requests_count("GET blobs") == 0  # from the cache (or page cache)


def test_first_bytes_before_the_whole_file(fenv: Env) -> None:
    big = os.urandom(MiB) * 48
    fenv.put("big.bin", big)
    m = fenv.mount()
    with open(m.path / "big.bin", "rb") as fh:
        assert fh.read(100) == big[:100]
        far = 40 * MiB + 123
        fh.seek(far)
        assert fh.read(4096) == big[far : far + 4096]
    assert sha1_of(str(m.path / "big.bin")) == hashlib.sha1(big).hexdigest()


@BOTH_ROUTES
def test_eight_cold_readers_make_one_blob_request(fenv: Env) -> None:
    data = os.urandom(MiB) * 16
    fenv.put("shared.bin", data)
    m = fenv.mount()
    os.stat(m.path / "shared.bin")
    # Where the blob route is gone, the mount has found that out by this first read at the latest.
    assert (m.path / "README.md").read_bytes().startswith(b"# demo")
    fenv.server.reset_stats()
    barrier = threading.Barrier(8)
    digests: list[str] = []

    def reader() -> None:
        barrier.wait()
        digests.append(sha1_of(str(m.path / "shared.bin")))

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert digests == [hashlib.sha1(data).hexdigest()] * 8
    counts = fenv.server.stats()["requests"]
    assert isinstance(counts, dict)
    # One download, and no request spent on a route the server does not have.
    assert counts.get(fenv.server.read_route) == 1
    assert counts.get("GET blobs", 0) + counts.get("GET content", 0) == 1
    fenv.server.reset_stats()
    assert sha1_of(str(m.path / "shared.bin")) == hashlib.sha1(data).hexdigest()  # warm
    assert fenv.server.requests_count(fenv.server.read_route) == 0


def test_metadata_makes_no_requests(fenv: Env) -> None:
    for i in range(30):
        fenv.put(f"d{i % 3}/f{i}.txt", b"x" * i)
    m = fenv.mount()
    fenv.server.reset_stats()
    for root, _dirs, names in os.walk(m.path / "d0"):
        for n in names:
            os.stat(os.path.join(root, n))
    counts = fenv.server.stats()["requests"]
    assert isinstance(counts, dict)
    assert not {k: v for k, v in counts.items() if "stats" not in k}


def test_remote_upload_appears_while_open_handle_keeps_old_bytes(fenv: Env) -> None:
    old = b"old version " * 50_000
    new = b"NEW" * 10
    fenv.put("report.txt", old)
    m = fenv.mount("--poll-interval", "0.5")
    target = m.path / "report.txt"
    with open(target, "rb") as fh:
        assert fh.read(1000) == old[:1000]
        fenv.put("report.txt", new)
        fenv.put("fresh/added.txt", b"added")
        wait_for(lambda: (m.path / "fresh/added.txt").exists(), what="added file")
        # A new open reads the new version while the old handle is still reading the old one.
        wait_for(lambda: target.read_bytes() == new, what="new bytes")
        assert fh.read() == old[1000:]
    assert (m.path / "fresh/added.txt").read_bytes() == b"added"
    # Once the old handle is closed, stat reports the new version too.
    wait_for(lambda: os.stat(target).st_size == len(new), what="new size")
    assert target.read_bytes() == new


def test_commit_pins_a_read_only_view(fenv: Env) -> None:
    fenv.put("p.txt", b"first")
    pinned = fenv.remote.head_commit()
    fenv.put("p.txt", b"second")
    m = fenv.mount("--commit", pinned, "--poll-interval", "0.5")
    assert (m.path / "p.txt").read_bytes() == b"first"
    with pytest.raises(OSError, match="Read-only file system") as info:
        os.open(m.path / "p.txt", os.O_WRONLY)
    assert info.value.errno == errno.EROFS
    with pytest.raises(OSError, match="Read-only file system") as info:
        (m.path / "new.txt").write_bytes(b"x")
    assert info.value.errno == errno.EROFS
    status = json.loads((m.path / ".dominofs/status.json").read_bytes())
    assert status["commit"] == pinned
    assert status["pinned"] is True


def start_run(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)  # raises when the run could not be started


def test_runs_folder(fenv: Env) -> None:
    fenv.put("hello.py", b"print('hello from a run')\n")
    m = fenv.mount()
    runs = m.path / ".runs"
    assert sorted(os.listdir(runs)) == ["index.json", "latest.json", "start"]
    start_run(str(runs / "start"), b'{"command": ["hello.py"], "title": "from the mount"}')
    run_id = wait_for(lambda: fenv.remote.list_runs(), what="a run")[0].id  # type: ignore[index]

    def succeeded() -> dict[str, object] | None:
        data = (runs / f"{run_id}.json").read_bytes()
        assert len(data) == os.stat(runs / f"{run_id}.json").st_size or True
        run = json.loads(data)
        return run if run["status"] == "Succeeded" else None

    run = wait_for(succeeded, what="run succeeded")
    assert isinstance(run, dict)
    assert run["title"] == "from the mount"
    assert "hello from a run" in (runs / f"{run_id}.log").read_text()
    assert json.loads((runs / "latest.json").read_bytes())["id"] == run_id
    assert [r["id"] for r in json.loads((runs / "index.json").read_bytes())] == [run_id]
    with open(runs / "index.json", "rb") as fh:
        data = fh.read()
        assert os.fstat(fh.fileno()).st_size == len(data)

    start_run(str(runs / "start"), b"python -c 'print(2)'\n")
    wait_for(lambda: len(fenv.remote.list_runs()) == 2, what="second run")

    with pytest.raises(OSError, match="Invalid argument") as info:
        start_run(str(runs / "start"), b'{"command": 42}')
    assert info.value.errno == errno.EINVAL
    assert len(fenv.remote.list_runs()) == 2
    with pytest.raises(OSError, match="Read-only file system") as info:
        os.open(runs / "index.json", os.O_WRONLY)
    assert info.value.errno == errno.EROFS
    with pytest.raises(OSError, match="Read-only file system") as info:
        os.unlink(runs / "index.json")
    assert info.value.errno == errno.EROFS
