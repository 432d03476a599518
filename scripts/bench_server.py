"""The bench's `server` part: the local server's own figures (issue 2), curl and requests on
loopback against it.

Rows: the server's RSS peak during a big streamed PUT against its idle RSS; a big blob GET by
curl against `cat` of the blob file (both page-cache warm); 64 concurrent GETs of 64 blobs
against the same bytes fetched one after another; the first listing of a many-file commit
after the server's start against a `GET /version` round trip.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from typing import Any

import requests
from bench_tools import GB, GiB, MiB, big_chunks, rss_kib, run_quiet, timed


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds on a thread it owns."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def run(b: Any, figure: Any) -> None:
    """Every row of the part (b: the Bench; figure: its Figure class)."""
    assert b.server is not None
    s = b.sizes
    gib = f"{s.big / GiB:g} GiB"

    # (d) first, so the big upload also provides the blob for (a).
    time.sleep(0.5)
    idle = rss_kib(b.server.pid)
    with RssSampler(b.server.pid) as sampler:
        t = time.perf_counter()
        key, size = b.upload("big", "big1.bin", big_chunks(s.big, 1))
        up = time.perf_counter() - t
    b.big["big1.bin"] = (key, size)
    peak = max(sampler.peak, idle)
    fig = figure(
        "server", f"RSS peak during {gib} streamed PUT", peak / 1024, "MB",
        idle / 1024, "idle server RSS",
        target="peak - idle ≤ 64 MB",
        note=f"+{(peak - idle) / 1024:.1f} MB; {sampler.samples} samples; upload "
        f"{size / up / GB:.2f} GB/s (sha1 + fsync)",
    )  # fmt: skip
    b.add(fig.finish((peak - idle) / 1024 <= 64))

    # (a) a big blob by curl vs reading the blob file from disk (both page-cache warm).
    blob_path = b.server.data / "blobs" / key[:2] / key[2:]
    cat = min(run_quiet(["cat", str(blob_path)], timeout=300) for _ in range(s.repeat))
    url = b.blob_url("big", key)
    totals = []
    for _ in range(s.repeat):
        _ttfb, total, got = b.curl(url)
        if got != size:
            raise RuntimeError(f"curl got {got} bytes of {size}")
        totals.append(total)
    curl_s = min(totals)
    fig = figure(
        "server", f"{gib} blob GET by curl", size / curl_s / GB, "GB/s",
        size / cat / GB, "cat of the blob file",
        target="≥ 1 GB/s",
        note=f"best of {s.repeat}: curl {curl_s:.3f}s, cat {cat:.3f}s",
    )  # fmt: skip
    b.add(fig.finish(size / curl_s / GB >= 1.0))

    # (b) 64 concurrent downloads of 64 different blobs vs the same fetched sequentially.
    _concurrent(b, figure)

    # (c) the listing of a many-file commit.
    _listing(b, figure)


def _concurrent(b: Any, figure: Any) -> None:
    s = b.sizes
    n = s.blobs
    names = [f"b{i:03d}.bin" for i in range(n)]

    def up(i: int) -> tuple[str, int]:
        uploaded: tuple[str, int] = b.upload(
            "blobs", names[i], b"".join(big_chunks(s.blob_size, 1000 + i))
        )
        return uploaded

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(up, range(n)))
    urls = [b.blob_url("blobs", k) for k, _ in keys]
    expected = sum(size for _, size in keys)
    headers = {"X-Domino-Api-Key": b.key}

    def fetch(session: requests.Session, url: str) -> int:
        got = 0
        with session.get(url, headers=headers, stream=True, timeout=120) as r:
            r.raise_for_status()
            for chunk in r.iter_content(MiB):
                got += len(chunk)
        return got

    def sequential() -> int:
        with requests.Session() as one:
            return sum(fetch(one, u) for u in urls)

    barrier = threading.Barrier(n + 1)

    def one_of_many(url: str) -> int:
        with requests.Session() as own:
            barrier.wait(30)
            return fetch(own, url)

    seq_times, conc_times = [], []
    complete = 0
    for _ in range(s.repeat):
        t = time.perf_counter()
        assert sequential() == expected
        seq_times.append(time.perf_counter() - t)
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(one_of_many, u) for u in urls]
            barrier.wait(30)
            t = time.perf_counter()
            done = [f.result(timeout=300) for f in futures]
            conc_times.append(time.perf_counter() - t)
        barrier.reset()
        complete = sum(1 for d, (_, size) in zip(done, keys, strict=True) if d == size)
    conc, seq = min(conc_times), min(seq_times)
    fig = figure(
        "server", f"{n} concurrent GETs of {n} x {s.blob_size // MiB} MiB blobs", conc, "s",
        seq, "same bytes, one client, sequential",
        target=f"all {n} complete",
        note=f"{complete}/{n} complete; {expected / conc / GB:.2f} GB/s vs "
        f"{expected / seq / GB:.2f} GB/s; requests + threads; best of {s.repeat}",
    )  # fmt: skip
    b.add(fig.finish(complete == n))


def _listing(b: Any, figure: Any) -> None:
    n = b.sizes.listing_files
    project = f"files{n}"
    head = b.head(project)
    url = f"{b.project_url(project)}/files/{head}/"

    def get() -> bytes:
        r: requests.Response = b.session.get(url, timeout=60)
        r.raise_for_status()
        return r.content

    t = time.perf_counter()
    body = get()
    cold = time.perf_counter() - t
    warm = min(timed(get) for _ in range(b.sizes.repeat))
    entries = len(json.loads(body)["data"])
    version = min(
        timed(lambda: b.session.get(f"{b.server.url}/version", timeout=10)) for _ in range(5)
    )
    fig = figure(
        "server", f"GET files of a {n:,}-file commit (first after start)", cold, "s",
        version, "GET /version round trip",
        target="< 1 s",
        note=f"{entries:,} entries, {len(body) / MiB:.1f} MiB JSON; warm {warm:.3f}s",
    )  # fmt: skip
    b.add(fig.finish(cold < 1.0 and entries == n + 2))
