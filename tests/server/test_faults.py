"""The fault injector itself: the SPEC grammar, /_faults, and what each fault does on the wire.

A private server per module (faults are server-wide); every test clears the faults first.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from dominofs.server.faults import parse_spec

from .conftest import ALICE, Srv

HEADERS = {"X-Domino-Api-Key": ALICE}


@pytest.fixture(scope="module")
def fsrv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Srv]:
    server = Srv(tmp_path_factory.mktemp("faults-server") / "data", [])
    server.start()
    yield server
    assert server.stop() == 0


@pytest.fixture
def fs(fsrv: Srv) -> Iterator[Srv]:
    requests.delete(f"{fsrv.url}/_faults", timeout=5).raise_for_status()
    yield fsrv
    requests.delete(f"{fsrv.url}/_faults", timeout=5).raise_for_status()


def set_faults(srv: Srv, spec: str) -> dict[str, object]:
    r = requests.put(f"{srv.url}/_faults", json={"spec": spec}, timeout=5)
    assert r.status_code == 200, r.text
    data: dict[str, object] = r.json()
    return data


def put(srv: Srv, path: str, data: bytes, **kw: object) -> requests.Response:
    return requests.put(f"{srv.project_url()}/{path}", data=data, headers=HEADERS, timeout=10, **kw)  # type: ignore[arg-type]


def listing(srv: Srv) -> dict[str, str]:
    r = requests.get(f"{srv.project_url()}/files/head/", headers=HEADERS, timeout=5)
    r.raise_for_status()
    return {e["path"]: e["key"] for e in r.json()["data"]}


def commits(srv: Srv) -> list[str]:
    r = requests.get(f"{srv.project_url()}/commits", headers=HEADERS, timeout=5)
    r.raise_for_status()
    data: list[str] = r.json()
    return data


def blob_url(srv: Srv, key: str) -> str:
    return f"{srv.project_url()}/blobs/{key}"


# -- the grammar --------------------------------------------------------------------------------


def test_spec_grammar_parses_every_option() -> None:
    spec = (
        "blobs:status=503:rate=0.5:retry_after=1:seed=7; upload:drop=1 ;files:stall=5;"
        "blobs:truncate=1;blobs:flip=yes;*:latency=0.05;*:auth_after=10;"
        "upload:lose=1:count=2:method=put;runs:late=0.5;"
    )
    rules = parse_spec(spec)
    assert [r.route for r in rules] == [
        "blobs", "upload", "files", "blobs", "blobs", "*", "*", "upload", "runs",
    ]  # fmt: skip
    first = rules[0]
    assert (first.status, first.rate, first.retry_after, first.seed) == (503, 0.5, 1.0, 7)
    assert rules[1].drop
    assert rules[2].stall == 5.0
    assert rules[3].truncate
    assert rules[4].flip
    assert rules[5].latency == 0.05
    assert rules[6].auth_after == 10
    assert rules[7].lose
    assert rules[7].count == 2
    assert rules[7].method == "PUT"
    assert rules[8].late == 0.5
    assert parse_spec("") == []
    assert parse_spec(None) == []
    assert parse_spec(" ; ") == []


@pytest.mark.parametrize(
    "spec",
    [
        "nosuchroute:status=500",  # unknown route
        "blobs:status=200",  # not an error status
        "blobs:status=abc",
        "blobs:frobnicate=1",  # unknown option
        "blobs:status",  # not NAME=VALUE
        "blobs:status=500:status=503",  # given twice
        "blobs:rate=0:status=500",
        "blobs:rate=1.5:status=500",
        "blobs:rate=nan:status=500",
        "blobs:latency=-1",
        "blobs:stall=99999",
        "blobs:count=-1:status=500",
        "blobs:drop=maybe",
        "blobs:retry_after=1",  # retry_after without a status
        "blobs:count=3",  # does nothing
        "stats:status=500",  # /_stats is never faulted
    ],
)
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="fault rule"):
        parse_spec(spec)


# -- /_faults and --faults ----------------------------------------------------------------------


def test_faults_route_get_put_delete(fs: Srv) -> None:
    url = f"{fs.url}/_faults"
    assert requests.get(url, timeout=5).json() == {"spec": "", "rules": []}
    data = set_faults(fs, "version:status=500:count=1")
    assert data["rules"] == [{"rule": "version:status=500:count=1", "seen": 0, "hits": 0}]
    assert requests.get(f"{fs.url}/version", timeout=5).status_code == 500
    assert requests.get(f"{fs.url}/version", timeout=5).status_code == 200
    rules = requests.get(url, timeout=5).json()["rules"]
    assert rules == [{"rule": "version:status=500:count=1", "seen": 2, "hits": 1}]
    # A bad spec is refused with a JSON message and the rules in force are kept.
    bad = requests.put(url, json={"spec": "version:bogus=1"}, timeout=5)
    assert bad.status_code == 400
    assert "bogus" in bad.json()["message"]
    assert requests.put(url, data=b"not json", timeout=5).status_code == 400
    assert requests.put(url, json=["spec"], timeout=5).status_code == 400
    assert requests.get(url, timeout=5).json()["spec"] == "version:status=500:count=1"
    assert requests.post(url, timeout=5).status_code == 405
    assert requests.delete(url, timeout=5).json() == {"spec": "", "rules": []}


def test_faults_flag_at_startup_and_a_bad_flag(tmp_path: Path) -> None:
    server = Srv(tmp_path / "data", ["--faults", "version:status=503:retry_after=0:count=1"])
    server.start()
    try:
        first = requests.get(f"{server.url}/version", timeout=5)
        assert first.status_code == 503
        assert first.headers["Retry-After"] == "0"
        assert requests.get(f"{server.url}/version", timeout=5).status_code == 200
    finally:
        assert server.stop() == 0
    proc = subprocess.run(
        [sys.executable, "-m", "dominofs.server", "--data", str(tmp_path / "d2"),
         "--faults", "blobs:explode=1"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "explode" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "d2").exists()  # refused before anything was written


def test_stats_and_faults_routes_are_never_faulted(fs: Srv) -> None:
    set_faults(fs, "*:status=500")
    assert requests.get(f"{fs.url}/_stats", timeout=5).status_code == 200
    assert requests.get(f"{fs.url}/_faults", timeout=5).status_code == 200
    assert requests.get(f"{fs.url}/version", timeout=5).status_code == 500


# -- statuses, counts, rates, methods, auth -----------------------------------------------------


def test_status_with_retry_after_defaults(fs: Srv) -> None:
    set_faults(fs, "version:status=503:count=1;commits:status=429:count=1;files:status=500")
    r = requests.get(f"{fs.url}/version", timeout=5)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert "injected" in r.json()["message"]
    r = requests.get(f"{fs.project_url()}/commits", headers=HEADERS, timeout=5)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "1"
    r = requests.get(f"{fs.project_url()}/files/head/", headers=HEADERS, timeout=5)
    assert r.status_code == 500
    assert "Retry-After" not in r.headers


def test_rate_with_a_seed_is_repeatable_and_a_share(fs: Srv) -> None:
    def sequence() -> list[int]:
        set_faults(fs, "version:status=500:rate=0.5:seed=42")
        return [requests.get(f"{fs.url}/version", timeout=5).status_code for _ in range(40)]

    first = sequence()
    assert first == sequence()
    assert 5 < first.count(500) < 35


def test_method_filter(fs: Srv) -> None:
    set_faults(fs, "upload:status=500:method=DELETE")
    assert put(fs, "m.txt", b"m").status_code == 201
    gone = requests.delete(f"{fs.project_url()}/m.txt", headers=HEADERS, timeout=5)
    assert gone.status_code == 500
    assert "m.txt" in listing(fs)


def test_auth_after_expires_the_key(fs: Srv) -> None:
    set_faults(fs, "commits:auth_after=2")
    codes = [
        requests.get(f"{fs.project_url()}/commits", headers=HEADERS, timeout=5).status_code
        for _ in range(4)
    ]
    assert codes == [200, 200, 401, 401]
    # Another route is untouched: the rule is per route.
    assert requests.get(f"{fs.project_url()}/files/head/", headers=HEADERS, timeout=5).ok


# -- connection faults --------------------------------------------------------------------------


def test_drop_mid_upload_commits_nothing(fs: Srv) -> None:
    before = commits(fs)
    set_faults(fs, "upload:drop=1:count=1")
    with pytest.raises(requests.ConnectionError):
        put(fs, "dropped.bin", b"d" * 300_000)
    assert commits(fs) == before
    assert "dropped.bin" not in listing(fs)
    assert put(fs, "dropped.bin", b"d" * 300_000).status_code == 201


def test_lose_commits_but_the_answer_never_arrives(fs: Srv) -> None:
    set_faults(fs, "upload:lose=1:count=1")
    with pytest.raises(requests.ConnectionError):
        put(fs, "lost.txt", b"lost answer")
    assert listing(fs)["lost.txt"] == hashlib.sha1(b"lost answer").hexdigest()


def test_stall_and_late_are_released_by_clearing(fs: Srv) -> None:
    for spec in ("version:stall=60", "version:late=60"):
        set_faults(fs, spec)
        got: list[int] = []

        def ask(got: list[int] = got) -> None:
            got.append(requests.get(f"{fs.url}/version", timeout=30).status_code)

        t = threading.Thread(target=ask)
        t.start()
        deadline = time.monotonic() + 10
        while requests.get(f"{fs.url}/_faults", timeout=5).json()["rules"][0]["hits"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        assert not got  # held
        requests.delete(f"{fs.url}/_faults", timeout=5)
        t.join(10)
        assert got == [200]


def test_stall_outlasts_a_short_client_timeout(fs: Srv) -> None:
    set_faults(fs, "version:stall=30")
    with pytest.raises(requests.Timeout):
        requests.get(f"{fs.url}/version", timeout=(2, 0.3))


def test_latency_delays_but_answers(fs: Srv) -> None:
    set_faults(fs, "*:latency=0.3")
    started = time.monotonic()
    assert requests.get(f"{fs.url}/version", timeout=10).status_code == 200
    assert time.monotonic() - started >= 0.3


# -- blob corruption ----------------------------------------------------------------------------


def test_truncate_sends_half_then_closes(fs: Srv) -> None:
    data = bytes(range(256)) * 400
    key = put(fs, "t.bin", data).json()["key"]
    set_faults(fs, "blobs:truncate=1:count=1")
    r = requests.get(blob_url(fs, key), headers=HEADERS, stream=True, timeout=5)
    assert r.headers["Content-Length"] == str(len(data))
    got = bytearray()

    def drain() -> None:
        for chunk in r.iter_content(4096):
            got.extend(chunk)

    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        drain()
    # urllib3 may discard the last partial chunk when it raises; never more than half arrives.
    assert 0 < len(got) <= len(data) // 2
    assert data.startswith(bytes(got))
    assert requests.get(blob_url(fs, key), headers=HEADERS, timeout=5).content == data


def test_flip_changes_exactly_one_byte(fs: Srv) -> None:
    data = b"0123456789" * 5000
    key = put(fs, "f.bin", data).json()["key"]
    set_faults(fs, "blobs:flip=1:count=1")
    bad = requests.get(blob_url(fs, key), headers=HEADERS, timeout=5).content
    assert len(bad) == len(data)
    assert [i for i in range(len(data)) if bad[i] != data[i]] == [len(data) // 2]
    assert hashlib.sha1(bad).hexdigest() != key
    assert requests.get(blob_url(fs, key), headers=HEADERS, timeout=5).content == data


def test_errors_are_not_corrupted(fs: Srv) -> None:
    set_faults(fs, "blobs:flip=1;blobs:truncate=1")
    r = requests.get(blob_url(fs, "0" * 40), headers=HEADERS, timeout=5)
    assert r.status_code == 404
    assert "not found" in r.json()["message"]
