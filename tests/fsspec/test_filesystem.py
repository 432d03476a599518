"""domino:// against the real local server: paths, request budgets, pinning, writes, errors,
pickles and process pools."""

from __future__ import annotations

import concurrent.futures
import copy
import hashlib
import io
import multiprocessing
import os
import pickle
import time
import tracemalloc
from datetime import datetime
from pathlib import Path
from typing import Any

import fsspec
import pytest
import requests

from dominofs.api import DominoClient
from dominofs.fsspecfs import DominoFileSystem
from dominofs.fsspecfs.paths import BlobName, parse
from tests.conftest import ALICE_KEY, LocalServer
from tests.fsspec.conftest import MANY, Requests
from tests.load.build import small_content, tree_path

DIRS = ["alice/many/d000", "alice/many/d001"]


def raw(server: LocalServer, project: str = "alice/demo") -> Any:
    """Another writer: the plain client, as a colleague's upload would arrive."""
    return DominoClient(server.url, ALICE_KEY).project(project)


# -- paths ---------------------------------------------------------------------------------


def test_paths_parse_into_the_callers_form() -> None:
    loc = parse("domino://alice/churn/data/train.csv")
    assert (str(loc.project), loc.commit, loc.path) == ("alice/churn", None, "data/train.csv")
    pinned = parse("alice/churn@" + "a" * 40 + "/data/")
    assert pinned.commit == "a" * 40
    assert pinned.name("data/x.csv") == f"alice/churn@{'a' * 40}/data/x.csv"
    assert parse("alice/churn").path == ""
    assert parse("alice/churn/x", commit="c0ffee12").commit == "c0ffee12"
    assert parse("alice/churn/x", commit="c0ffee12").name() == "alice/churn/x"


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("alice/not a project/x", "is not a project"),
        ("alice/churn@head/x", "moves"),
        ("alice/churn@!!/x", "not a commit id"),
        ("alice/churn/a/../b", "not allowed"),
    ],
)
def test_bad_paths_are_value_errors(path: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse(path)


def test_a_path_commit_must_agree_with_the_filesystems() -> None:
    with pytest.raises(ValueError, match="commit=c0ffee12"):
        parse("alice/churn@deadbeef/x", commit="c0ffee12")
    with pytest.raises(FileNotFoundError, match="name a project"):
        parse("domino://alice")


# -- listings and their cost -----------------------------------------------------------------


def test_glob_of_a_commit_costs_one_listing_and_then_nothing(
    fsrv: LocalServer, dfs: DominoFileSystem, asked: Requests
) -> None:
    names = dfs.glob("alice/many/**/*.txt")
    assert len(names) == MANY
    assert asked.take() == {"GET commits": 1, "GET files": 1}
    infos = [dfs.info(n) for n in names]
    assert dfs.find("alice/many/d001") == sorted(names)[1000:]
    assert dfs.du("alice/many/d000") == sum(len(small_content(i)) for i in range(1000))
    assert dfs.isdir("alice/many/d000/s3")
    assert not dfs.isdir(names[0])
    assert dfs.ls("alice/many/d000/s3", detail=False)[0] == "alice/many/d000/s3/f000300.txt"
    assert asked.take() == {}
    assert {i["size"] for i in infos} == {len(small_content(i)) for i in range(MANY)}
    head = raw(fsrv, "alice/many").head_commit()
    pinned = DominoFileSystem(host=fsrv.url, api_key=ALICE_KEY, commit=head)
    asked.take()
    assert len(pinned.find("alice/many")) == MANY + 2
    assert asked.take() == {}  # that commit's listing is already kept: not even a commits request


def test_threads_share_one_listing(fsrv: LocalServer, key_file: Path, asked: Requests) -> None:
    def glob_in_a_thread(_: int) -> int:
        # fsspec makes one instance per thread; the listing behind them is one.
        fs = fsspec.filesystem("domino", host=fsrv.url, api_key_file=str(key_file), read_timeout=13)
        return len(fs.glob("alice/many/d001/**"))

    asked.take()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(glob_in_a_thread, range(16)))
    assert counts == [1011] * 16  # d001, its 10 folders and 1,000 files
    assert asked.take() == {"GET commits": 1, "GET files": 1}


def test_find_and_ls_follow_fsspec(dfs: DominoFileSystem) -> None:
    top = dfs.find("alice/many", maxdepth=1, withdirs=True)
    assert top == ["alice/many/.dominoignore", "alice/many/README.md", *DIRS]
    two = dfs.find("alice/many/d000", maxdepth=2, withdirs=True, detail=True)
    assert "alice/many/d000/s9" in two
    assert two["alice/many/d000/s9"]["type"] == "directory"
    assert "alice/many/d000/s9/f000900.txt" in two
    assert all(n.count("/") <= 4 for n in two)
    assert dfs.find("alice/many/d000/s0/f000000.txt") == ["alice/many/d000/s0/f000000.txt"]
    assert dfs.find("alice/many/nothing-here") == []
    assert [e["type"] for e in dfs.ls("alice/many")] == ["file", "file", "directory", "directory"]
    assert dfs.ls("alice/many/d000/s0/f000001.txt", detail=False) == [
        "alice/many/d000/s0/f000001.txt"
    ]
    with pytest.raises(FileNotFoundError):
        dfs.ls("alice/many/nothing-here")


def test_info_has_size_type_mtime_key_and_commit(fsrv: LocalServer, dfs: DominoFileSystem) -> None:
    info = dfs.info("domino://alice/many/d000/s0/f000007.txt")
    head = raw(fsrv, "alice/many").head_commit()
    assert info["name"] == "alice/many/d000/s0/f000007.txt"
    assert info["type"] == "file"
    assert info["size"] == len(small_content(7))
    assert isinstance(info["mtime"], datetime)
    assert info["mtime"].tzinfo is not None
    assert info["key"] == hashlib.sha1(small_content(7)).hexdigest()
    assert info["commit"] == head
    assert dfs.ukey("alice/many/d000/s0/f000007.txt") == info["key"]
    assert dfs.modified("alice/many/d000/s0/f000007.txt") == info["mtime"]
    folder = dfs.info("alice/many/d000")
    assert (folder["type"], folder["size"], folder["commit"]) == ("directory", 0, head)
    assert dfs.info("alice/many")["type"] == "directory"
    with pytest.raises(FileNotFoundError, match="no such file"):
        dfs.info("alice/many/d000/missing.txt")


def test_names_keep_the_callers_commit(fsrv: LocalServer, dfs: DominoFileSystem) -> None:
    head = raw(fsrv, "alice/many").head_commit()
    names = dfs.ls(f"domino://alice/many@{head}/d001/s2", detail=False)
    assert names[0] == f"alice/many@{head}/d001/s2/f001200.txt"
    assert dfs.cat(names[0]) == small_content(1200)
    assert dfs.info(names[0])["commit"] == head


def test_head_is_asked_again_after_head_ttl_refresh_or_invalidate(
    fsrv: LocalServer, key_file: Path, folder: str, asked: Requests
) -> None:
    fs = DominoFileSystem(host=fsrv.url, api_key_file=str(key_file), head_ttl=3600)
    fs.pipe(f"{folder}/a", b"1")
    assert fs.ls(folder, detail=False) == [f"{folder}/a"]
    raw(fsrv).upload(f"{folder.split('/', 2)[2]}/b", io.BytesIO(b"2"))
    assert fs.ls(folder, detail=False) == [f"{folder}/a"]  # trusted for head_ttl
    assert fs.ls(folder, detail=False, refresh=True) == [f"{folder}/a", f"{folder}/b"]
    raw(fsrv).upload(f"{folder.split('/', 2)[2]}/c", io.BytesIO(b"3"))
    fs.invalidate_cache(folder)
    asked.take()
    assert len(fs.find(folder)) == 3
    assert asked.take() == {"GET commits": 1, "GET files": 1}
    quick = DominoFileSystem(host=fsrv.url, api_key_file=str(key_file), head_ttl=0)
    quick.info(f"{folder}/a")
    quick.info(f"{folder}/a")
    assert asked.take() == {"GET commits": 2}  # head unchanged: its listing is kept


def test_a_miss_at_head_asks_the_server_again(
    fsrv: LocalServer, key_file: Path, folder: str, asked: Requests
) -> None:
    fs = DominoFileSystem(host=fsrv.url, api_key_file=str(key_file), head_ttl=3600)
    fs.pipe(f"{folder}/mine", b"1")
    raw(fsrv).upload(f"{folder.split('/', 2)[2]}/theirs", io.BytesIO(b"2"))
    asked.take()
    assert fs.info(f"{folder}/mine")["size"] == 1
    assert asked.take() == {}  # a hit is answered from the listing
    assert fs.cat(f"{folder}/theirs") == b"2"  # another process wrote it: found all the same
    assert asked.take() == {"GET commits": 1, "GET files": 1, "GET blobs": 1}
    assert not fs.exists(f"{folder}/nobody")
    assert asked.take() == {"GET commits": 1}


def test_listings_kept_are_bounded(fsrv: LocalServer, key_file: Path, folder: str) -> None:
    fs = DominoFileSystem(
        host=fsrv.url, api_key_file=str(key_file), max_listing_files=10, read_timeout=9
    )
    commits = raw(fsrv).commits()
    for c in commits[:3]:
        fs.ls(f"alice/demo@{c}")
    fs.find("alice/many")
    shared = fs._shared
    assert shared.counts() == {"listings": 1, "files": MANY + 2}  # the newest stays, alone


# -- reads -----------------------------------------------------------------------------------


def test_a_read_keeps_the_blob_it_opened(fsrv: LocalServer, dfs: DominoFileSystem, folder: str):
    old, new = os.urandom(3 << 20), os.urandom(3 << 20)
    dfs.pipe(f"{folder}/data.bin", old)
    with dfs.open(f"{folder}/data.bin", block_size=1 << 16) as f:
        first = f.read(1 << 20)
        raw(fsrv).upload(f"{folder.split('/', 2)[2]}/data.bin", io.BytesIO(new))  # mid-read
        dfs.invalidate_cache()
        f.seek(100)
        again = f.read(10)
        f.seek(1 << 20)
        rest = f.read()
    assert first + rest == old
    assert again == old[100:110]
    assert dfs.cat(f"{folder}/data.bin") == new


def test_reads_fetch_what_they_need(fsrv: LocalServer, dfs: DominoFileSystem, folder: str):
    data = os.urandom(40 << 20)
    dfs.pipe(f"{folder}/big.bin", data)
    fsrv.reset_stats()
    with dfs.open(f"{folder}/big.bin") as f:
        f.seek(20 << 20)
        assert f.read(1000) == data[20 << 20 : (20 << 20) + 1000]
    sent = fsrv.stats()["bytes_sent"]
    assert isinstance(sent, int)
    assert sent < 2 << 20
    fsrv.reset_stats()
    with dfs.open(f"{folder}/big.bin") as f:
        chunks = iter(lambda: f.read(1 << 16), b"")
        assert b"".join(chunks) == data
    blob_gets = fsrv.requests_count("GET blobs")
    assert blob_gets <= 10  # the window doubles up to 32 MiB: not one request per block
    assert dfs.cat_file(f"{folder}/big.bin", start=-10) == data[-10:]
    assert dfs.cat_file(f"{folder}/big.bin", start=5, end=15) == data[5:15]
    assert dfs.cat_file(f"{folder}/big.bin", start=15, end=5) == b""


def test_a_broken_read_raises_a_clear_oserror(
    fsrv: LocalServer, dfs: DominoFileSystem, folder: str
) -> None:
    dfs.pipe(f"{folder}/broken.bin", os.urandom(1 << 20))
    with dfs.open(f"{folder}/broken.bin") as f:
        requests.put(f"{fsrv.url}/_faults", json={"spec": "blobs:truncate=1"}, timeout=5)
        try:
            with pytest.raises(OSError, match="blob") as info:
                f.read()
        finally:
            requests.delete(f"{fsrv.url}/_faults", timeout=5)
    assert type(info.value).__module__ == "dominofs.errors"  # ours, not requests' or urllib3's
    assert ALICE_KEY not in str(info.value)
    assert len(dfs.cat(f"{folder}/broken.bin")) == 1 << 20  # the next read is whole again


def test_get_file_streams_to_disk(dfs: DominoFileSystem, folder: str, tmp_path: Path) -> None:
    data = os.urandom(2 << 20)
    dfs.pipe(f"{folder}/g.bin", data)
    dfs.get(f"{folder}/g.bin", str(tmp_path / "out" / "g.bin"))
    assert (tmp_path / "out" / "g.bin").read_bytes() == data


def test_blob_cache_downloads_once(fsrv: LocalServer, key_file: Path, folder: str, tmp_path: Path):
    fs = DominoFileSystem(
        host=fsrv.url, api_key_file=str(key_file), blob_cache=True, cache_dir=str(tmp_path / "c")
    )
    data = os.urandom(1 << 20)
    fs.pipe(f"{folder}/cached.bin", data)
    fsrv.reset_stats()
    assert fs.cat(f"{folder}/cached.bin") == data
    with fs.open(f"{folder}/cached.bin") as f:
        f.seek(1000)
        assert f.read(10) == data[1000:1010]
    assert fsrv.requests_count("GET blobs") == 1
    # A verified download is moved into the cache's index by a background thread.
    deadline = time.monotonic() + 20
    while not any((tmp_path / "c").rglob("*.val")):
        assert time.monotonic() < deadline, "the download never reached the cache"
        time.sleep(0.02)


# -- writes ----------------------------------------------------------------------------------


def test_a_write_is_one_upload_at_close_and_is_listed_at_once(
    dfs: DominoFileSystem, folder: str, asked: Requests
) -> None:
    dfs.ls("alice/demo")
    asked.take()
    with dfs.open(f"{folder}/out.txt", "wb") as f:
        for _ in range(100):
            f.write(b"x" * 1000)
        assert asked.take() == {}
    assert asked.take() == {"PUT upload": 1}
    info = dfs.info(f"{folder}/out.txt")
    assert (info["size"], info["key"]) == (100_000, hashlib.sha1(b"x" * 100_000).hexdigest())
    assert info["commit"] is None  # our own write: its commit is not known until listed
    assert dfs.ls(folder, detail=False) == [f"{folder}/out.txt"]
    assert asked.take() == {}


def test_memory_stays_flat_for_a_large_write(dfs: DominoFileSystem, folder: str) -> None:
    block = os.urandom(1 << 20)
    tracemalloc.start()
    try:
        with dfs.open(f"{folder}/large.bin", "wb") as f:
            for _ in range(64):
                f.write(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20  # 64 MiB written: spooled to disk past 8 MiB
    assert dfs.size(f"{folder}/large.bin") == 64 << 20


def test_a_failed_upload_raises_from_close(fsrv: LocalServer, dfs: DominoFileSystem, folder: str):
    requests.put(f"{fsrv.url}/_faults", json={"spec": "upload:status=500"}, timeout=5)
    try:
        f = dfs.open(f"{folder}/fails.txt", "wb")
        f.write(b"data")
        with pytest.raises(OSError, match="500") as info:
            f.close()
        assert ALICE_KEY not in str(info.value)
    finally:
        requests.delete(f"{fsrv.url}/_faults", timeout=5)
    assert not dfs.exists(f"{folder}/fails.txt")


def test_an_exception_in_with_uploads_nothing(dfs: DominoFileSystem, folder: str, asked: Requests):
    def write_half() -> None:
        with dfs.open(f"{folder}/half.txt", "wb") as f:
            f.write(b"half")
            raise RuntimeError("stop")

    asked.take()
    with pytest.raises(RuntimeError):
        write_half()
    assert "PUT upload" not in asked.take()
    assert not dfs.exists(f"{folder}/half.txt")


def test_a_transaction_uploads_when_it_ends(
    dfs: DominoFileSystem, folder: str, tmp_path: Path, asked: Requests
) -> None:
    local = tmp_path / "local.txt"
    local.write_bytes(b"from disk")
    dfs.pipe(f"{folder}/src", b"source")
    asked.take()
    with dfs.transaction:
        dfs.pipe(f"{folder}/t1", b"one")
        dfs.put_file(str(local), f"{folder}/t2")
        dfs.cp_file(f"{folder}/src", f"{folder}/t3")
        with dfs.open(f"{folder}/t4", "wb") as f:
            f.write(b"four")
        assert "PUT upload" not in asked.take()
    assert asked.take()["PUT upload"] == 4
    assert dfs.cat([f"{folder}/t{i}" for i in range(1, 5)]) == {
        f"{folder}/t1": b"one",
        f"{folder}/t2": b"from disk",
        f"{folder}/t3": b"source",
        f"{folder}/t4": b"four",
    }


def test_exclusive_create(fsrv: LocalServer, dfs: DominoFileSystem, folder: str) -> None:
    dfs.pipe(f"{folder}/x", b"1")
    with pytest.raises(FileExistsError):
        dfs.open(f"{folder}/x", "xb")
    with pytest.raises(FileExistsError):
        dfs.pipe_file(f"{folder}/x", b"2", mode="create")
    f = dfs.open(f"{folder}/y", "xb")
    f.write(b"mine")
    raw(fsrv).upload(f"{folder.split('/', 2)[2]}/y", io.BytesIO(b"theirs"))
    with pytest.raises(FileExistsError):
        f.close()  # someone else created it meanwhile: not overwritten
    assert dfs.cat(f"{folder}/y") == b"theirs"
    with dfs.open(f"{folder}/z", "xb") as f:
        f.write(b"new")
    assert dfs.cat(f"{folder}/z") == b"new"


def test_folders_in_the_way(dfs: DominoFileSystem, folder: str) -> None:
    dfs.pipe(f"{folder}/d/f", b"1")
    with pytest.raises(IsADirectoryError):
        dfs.open(f"{folder}/d", "wb")
    with pytest.raises(NotADirectoryError):
        dfs.open(f"{folder}/d/f/g", "wb")
    with pytest.raises(IsADirectoryError):
        dfs.open(f"{folder}/d", "rb")
    with pytest.raises(NotImplementedError, match="rb, wb or xb"):
        dfs.open(f"{folder}/d/f", "ab")


def test_a_pinned_commit_is_read_only(fsrv: LocalServer, key_file: Path, folder: str) -> None:
    head = raw(fsrv).head_commit()
    fs = DominoFileSystem(host=fsrv.url, api_key_file=str(key_file))
    for attempt in (
        lambda: fs.open(f"alice/demo@{head}/new.txt", "wb"),
        lambda: fs.pipe(f"alice/demo@{head}/new.txt", b"x"),
        lambda: fs.rm(f"alice/demo@{head}/README.md"),
        lambda: DominoFileSystem(host=fsrv.url, api_key_file=str(key_file), commit=head).pipe(
            "alice/demo/new.txt", b"x"
        ),
    ):
        with pytest.raises(PermissionError, match="read only"):
            attempt()


def test_rm_mv_and_cp(fsrv: LocalServer, dfs: DominoFileSystem, folder: str) -> None:
    data = os.urandom(3 << 20)
    dfs.pipe(f"{folder}/a/one.bin", data)
    dfs.pipe(f"{folder}/a/two.txt", b"two")
    fsrv.reset_stats()
    dfs.cp_file(f"{folder}/a/one.bin", f"{folder}/b/one.bin")
    assert fsrv.requests_count("GET blobs") == 1
    assert fsrv.requests_count("PUT upload") == 1
    dfs.mv(f"{folder}/a/two.txt", f"{folder}/b/two.txt")
    assert dfs.cat(f"{folder}/b/one.bin") == data
    assert dfs.cat(f"{folder}/b/two.txt") == b"two"
    assert dfs.find(folder) == [f"{folder}/a/one.bin", f"{folder}/b/one.bin", f"{folder}/b/two.txt"]
    with pytest.raises(IsADirectoryError):
        dfs.rm(f"{folder}/b")
    dfs.rm(f"{folder}/b", recursive=True)
    assert dfs.find(folder) == [f"{folder}/a/one.bin"]
    assert not dfs.exists(f"{folder}/b")
    fresh = DominoFileSystem(host=fsrv.url, api_key=ALICE_KEY, skip_instance_cache=True)
    fresh.invalidate_cache()
    assert fresh.find(folder, refresh=True) == [f"{folder}/a/one.bin"]  # the server agrees
    with pytest.raises(FileNotFoundError):
        dfs.rm_file(f"{folder}/never")


def test_rm_where_the_server_cannot_delete(make_server: Any, tmp_path: Path) -> None:
    strict = make_server("--no-delete", name="strict")
    fs = DominoFileSystem(host=strict.url, api_key=ALICE_KEY)
    fs.pipe("alice/demo/kept.txt", b"x")
    with pytest.raises(PermissionError, match="cannot delete files"):
        fs.rm("alice/demo/kept.txt")
    assert fs.cat("alice/demo/kept.txt") == b"x"


# -- credentials and errors ------------------------------------------------------------------


def test_errors_are_builtin_and_name_no_key(fsrv: LocalServer, tmp_path: Path) -> None:
    wrong = DominoFileSystem(host=fsrv.url, api_key="wrong-key-123", skip_instance_cache=True)
    with pytest.raises(PermissionError, match="refused") as denied:
        wrong.ls("alice/demo")
    assert "wrong-key-123" not in str(denied.value)
    fs = DominoFileSystem(host=fsrv.url, api_key=ALICE_KEY)
    with pytest.raises(FileNotFoundError):
        fs.ls("alice/no-such-project")
    with pytest.raises(FileNotFoundError):
        fs.ls("alice/demo@" + "0" * 40)
    assert not fs.exists("alice")
    assert not fs.isdir("alice")
    with pytest.raises(TypeError, match="api_keyfile"):
        DominoFileSystem(host=fsrv.url, api_keyfile="x")
    env = {"XDG_CONFIG_HOME": str(tmp_path), "DOMINO_API_HOST": "", "DOMINO_USER_API_KEY": ""}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        with pytest.raises(ValueError, match="no Domino server"):
            DominoFileSystem(skip_instance_cache=True)
        with pytest.raises(ValueError, match="no API key"):
            DominoFileSystem(host=fsrv.url, skip_instance_cache=True)
    loose = tmp_path / "loose-key"
    loose.write_text(ALICE_KEY)
    loose.chmod(0o644)
    with pytest.raises(ValueError, match="readable by others"):
        DominoFileSystem(host=fsrv.url, api_key_file=str(loose), skip_instance_cache=True)


@pytest.mark.usefixtures("domino_env")
def test_credentials_from_the_environment(fsrv: LocalServer) -> None:
    fs = fsspec.filesystem("domino", skip_instance_cache=True)
    assert isinstance(fs, DominoFileSystem)
    assert fs.host == fsrv.url
    with fsspec.open("domino://alice/many/d000/s0/f000003.txt") as f:
        assert f.read() == small_content(3)


# -- pickles and processes -------------------------------------------------------------------


def test_a_pickle_is_small_and_holds_no_key(fsrv: LocalServer, key_file: Path) -> None:
    fs = DominoFileSystem(host=fsrv.url, api_key_file=str(key_file), head_ttl=2)
    fs.find("alice/many")  # a pickle does not carry listings
    blob = pickle.dumps(fs)
    assert len(blob) < 600
    assert ALICE_KEY.encode() not in blob
    back = pickle.loads(blob)
    assert (back.host, back.head_ttl) == (fs.host, 2)
    assert back.cat("alice/many/d000/s0/f000002.txt") == small_content(2)
    inline = DominoFileSystem(host=fsrv.url, api_key=ALICE_KEY)
    assert ALICE_KEY.encode() in pickle.dumps(inline)  # what the docs warn about


def test_a_listed_name_opens_its_blob_where_it_travels(
    fsrv: LocalServer, key_file: Path, dfs: DominoFileSystem, folder: str, asked: Requests
) -> None:
    dfs.pipe(f"{folder}/p.txt", b"listed")
    (name,) = dfs.find(folder)
    assert isinstance(name, BlobName)
    assert name == f"{folder}/p.txt"
    dfs.pipe(f"{folder}/p.txt", b"changed")
    assert dfs.cat(name) == b"changed"  # here, a name is looked up afresh
    assert copy.deepcopy(name).pin is None  # a copy here is not a name that travelled
    travelled = pickle.loads(pickle.dumps(name))
    # Other timeouts: a client and listings of its own, as in a worker that has listed nothing.
    fs = DominoFileSystem(host=fsrv.url, api_key_file=str(key_file), read_timeout=11)
    asked.take()
    assert fs.cat(travelled) == b"listed"
    assert fs.info(travelled)["size"] == len(b"listed")
    with fs.open(travelled) as f:
        assert f.read() == b"listed"
    assert asked.take() == {"GET blobs": 2}  # no commits request, no listing


def _read_in_child(fs: DominoFileSystem, names: list[str]) -> tuple[bool, list[bytes]]:
    got = [fs.cat(n) for n in names]
    return fs._shared.pid == os.getpid(), got


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pools(dfs: DominoFileSystem, method: str) -> None:
    names = [f"alice/many/{tree_path(i)}" for i in range(0, 40, 5)]
    assert dfs.cat(names[0]) == small_content(0)  # the parent has a session and listings
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        results = pool.starmap(_read_in_child, [(dfs, names[:4]), (dfs, names[4:])])
    assert [r[0] for r in results] == [True, True]  # each child made its own session
    assert [b for _, got in results for b in got] == [small_content(i) for i in range(0, 40, 5)]
