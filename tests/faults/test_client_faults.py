"""dominofs.api and the blob cache against the real server with injected faults.

Each case names the fault, what the client must do (retry, give up with which error, never
duplicate a non-idempotent call) and checks it with the server's own counters. One server for
the module: the cases use distinct paths and reset the counters they read.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dominofs import errors
from dominofs.api import DominoClient, ProjectClient
from dominofs.cache import BlobCache
from dominofs.models import RunRequest
from tests.conftest import ALICE_KEY, LocalServer

from .conftest import Faults, history_of, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One server for this module (tests use distinct paths; faults are cleared around each)."""
    srv = LocalServer(tmp_path_factory.mktemp("client-faults") / "server-data")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: LocalServer) -> Iterator[DominoClient]:
    c = DominoClient(server.url, ALICE_KEY, backoff=0.01, max_backoff=0.05, read_timeout=5.0)
    yield c
    c.close()


@pytest.fixture
def remote(client: DominoClient) -> ProjectClient:
    return client.project("alice/demo")


def upload(remote: ProjectClient, path: str, data: bytes) -> str:
    return remote.upload(path, io.BytesIO(data), size=len(data)).key


def blob(remote: ProjectClient, key: str) -> bytes:
    return b"".join(remote.iter_blob(key))


@pytest.mark.parametrize(
    ("spec", "sent"),
    [
        ("commits:status=503:retry_after=0:count=2", 3),
        ("commits:status=429:retry_after=0:count=1", 2),
        ("commits:status=500:count=3", 4),
        ("commits:drop=1:count=2", 3),
    ],
    ids=["503-retry-after", "429", "500-three-times", "dropped-connection"],
)
def test_transient_faults_on_a_read_are_retried(
    server: LocalServer, faults: Faults, remote: ProjectClient, spec: str, sent: int
) -> None:
    expected = remote.commits()
    server.reset_stats()
    faults.set(spec)
    assert remote.commits() == expected
    assert server.requests_count("GET commits") == sent


def test_retry_after_is_waited_for(
    server: LocalServer, faults: Faults, remote: ProjectClient
) -> None:
    faults.set("commits:status=503:retry_after=0.4:count=1")
    started = time.monotonic()
    remote.commits()
    assert time.monotonic() - started >= 0.4


def test_a_lasting_500_gives_up_with_server_error(
    server: LocalServer, faults: Faults, remote: ProjectClient
) -> None:
    faults.set("files:status=500")
    server.reset_stats()
    with pytest.raises(errors.ServerError, match="injected fault") as info:
        remote.list_files("head")
    assert server.requests_count("GET files") == remote.client.retries + 1
    assert ALICE_KEY not in str(info.value)


def test_a_lasting_drop_is_unreachable(
    server: LocalServer, faults: Faults, remote: ProjectClient
) -> None:
    faults.set("commits:drop=1")
    with pytest.raises(errors.Unreachable, match="cannot reach"):
        remote.commits()


def test_a_stall_past_the_read_timeout_is_unreachable_in_bounded_time(
    server: LocalServer, faults: Faults
) -> None:
    faults.set("commits:stall=60")
    with DominoClient(server.url, ALICE_KEY, read_timeout=0.5, retries=1, backoff=0.01) as c:
        started = time.monotonic()
        with pytest.raises(errors.Unreachable):
            c.project("alice/demo").commits()
        assert time.monotonic() - started < 10


def test_latency_everywhere_still_works(faults: Faults, remote: ProjectClient) -> None:
    faults.set("*:latency=0.1")
    key = upload(remote, "slow.txt", b"slow but sure")
    assert blob(remote, key) == b"slow but sure"


def test_expired_key_is_an_auth_error_and_not_retried(
    server: LocalServer, faults: Faults, remote: ProjectClient
) -> None:
    faults.set("*:auth_after=1")
    remote.commits()
    server.reset_stats()
    with pytest.raises(errors.AuthError, match="API key") as info:
        remote.commits()
    assert server.requests_count("GET commits") == 1
    assert ALICE_KEY not in str(info.value)
    faults.clear()
    assert remote.commits()


def test_truncated_blob_is_an_error_not_short_data(faults: Faults, remote: ProjectClient) -> None:
    data = b"t" * 200_000
    key = upload(remote, "t.bin", data)
    faults.set("blobs:truncate=1")
    with pytest.raises(errors.DominoError):
        blob(remote, key)
    faults.clear()
    assert blob(remote, key) == data


def test_upload_retried_through_503_commits_once(
    server: LocalServer, faults: Faults, remote: ProjectClient
) -> None:
    before = len(remote.commits())
    faults.set("upload:status=503:retry_after=0:count=2")
    key = upload(remote, "u.txt", b"uploaded once")
    assert key == hashlib.sha1(b"uploaded once").hexdigest()
    assert len(remote.commits()) == before + 1
    assert history_of(remote, "u.txt") == [key]


def test_upload_dropped_mid_body_is_resent_whole(
    server: LocalServer, faults: Faults, remote: ProjectClient
) -> None:
    data = bytes(range(256)) * 2000  # 512 KB: the drop happens with half of it read
    before = len(remote.commits())
    faults.set("upload:drop=1:count=1")
    key = upload(remote, "big.bin", data)
    assert blob(remote, key) == data
    assert len(remote.commits()) == before + 1  # the broken body committed nothing


def test_upload_whose_answer_is_lost_is_resent_identically(
    server: LocalServer, faults: Faults, remote: ProjectClient
) -> None:
    faults.set("upload:lose=1:count=1")
    key = upload(remote, "lost.txt", b"answer lost")
    server.reset_stats()
    # The first PUT committed; the retry sent the same bytes: the same key, nothing else.
    assert history_of(remote, "lost.txt") == [key]
    assert blob(remote, key) == b"answer lost"


def test_starting_a_run_is_never_retried(
    server: LocalServer, faults: Faults, remote: ProjectClient
) -> None:
    server.reset_stats()
    faults.set("runs:status=503:retry_after=0:method=POST")
    with pytest.raises(errors.ServerError):
        remote.start_run(RunRequest(command=("echo", "hi"), is_direct=True))
    assert server.requests_count("POST runs") == 1
    assert remote.list_runs() == []


def test_random_503s_at_half_rate_are_absorbed(
    faults: Faults, server: LocalServer, remote: ProjectClient
) -> None:
    key = upload(remote, "r.txt", b"rate")
    faults.set("*:status=503:retry_after=0:rate=0.3:seed=3")
    with DominoClient(server.url, ALICE_KEY, retries=8, backoff=0.01, max_backoff=0.02) as c:
        p = c.project("alice/demo")
        for _ in range(15):
            assert blob(p, key) == b"rate"
            assert p.list_files("head", "r.txt")[0].key == key
    assert faults.hits() > 0


# -- the blob cache: a bad blob never enters it -------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path, remote: ProjectClient) -> Iterator[BlobCache]:
    c = BlobCache(
        tmp_path / "cache",
        size_limit=1 << 30,
        fetch=lambda key, offset: remote.iter_blob(key, offset=offset),
        wait_timeout=20,
    )
    yield c
    c.close()


def read_all(cache: BlobCache, key: str, size: int) -> bytes:
    reader = cache.open(key, size)
    try:
        return reader.read(size, 0)
    finally:
        reader.close()


@pytest.mark.parametrize("spec", ["blobs:flip=1", "blobs:truncate=1", "blobs:status=500"])
def test_cache_refuses_a_bad_blob_and_refetches_it(
    server: LocalServer, faults: Faults, remote: ProjectClient, cache: BlobCache, spec: str
) -> None:
    data = bytes(range(256)) * 1000
    key = upload(remote, "c.bin", data)
    faults.set(spec)
    with pytest.raises(errors.DominoError):
        read_all(cache, key, len(data))
    assert not cache.contains(key)
    faults.clear()
    server.reset_stats()
    assert read_all(cache, key, len(data)) == data
    assert cache.contains(key)
    assert server.requests_count("GET blobs") == 1


def test_cache_readers_of_a_stalled_blob_all_get_the_bytes_once_released(
    server: LocalServer, faults: Faults, remote: ProjectClient, cache: BlobCache
) -> None:
    data = b"shared" * 10_000
    key = upload(remote, "s.bin", data)
    server.reset_stats()
    faults.set("blobs:stall=30")
    results: list[bytes | BaseException] = []

    def reader() -> None:
        try:
            results.append(read_all(cache, key, len(data)))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: faults.hits() >= 1, 10, "the download to stall")
    faults.clear()
    for t in threads:
        t.join(20)
    assert results == [data] * 4
    assert server.requests_count("GET blobs") == 1  # one download however many readers
