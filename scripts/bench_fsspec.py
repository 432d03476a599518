#!/usr/bin/env python3
"""domino:// (fsspec) figures for issue 16, each against a baseline measured in the same run.

Run: `.venv/bin/python scripts/bench_fsspec.py [--quick] [--json]`.

- a big file (1 GiB; 256 MiB with --quick) read through `fs.open` (8 MiB reads) and `cat_file`,
  against `curl -o /dev/null` of the same blob (best of 3 each, page cache warm on the server);
- a glob of every file of a 10,000-file commit plus `info` of each, in a fresh process (cold),
  then again in the same process (warm): requests the server saw, and seconds;
- `dd.read_csv` of 100 x 1 MiB CSVs (20 with --quick) on a LocalCluster of 2 worker processes
  (started before the clock), against pandas reading the same files one by one;
- peak RSS of a process that writes the big file through `fs.open(..., "wb")`;
- 200 small `pipe_file` into the 10,000-file project, against the same PUTs by the client.

It starts its own server (scripts/bench.py's `Server`) on 127.0.0.1 in a temp dir, with the key
in 0600 files only, and removes everything on exit. Figures, not tests.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (
    GB,
    OWNER,
    ROOT,
    Figure,
    GiB,
    MiB,
    Server,
    big_chunks,
    build_file_project,
    machine,
    private_file,
    table,
)

FILES = 10_000
REPEAT = 3

# Run in a fresh interpreter: nothing listed yet, as a new notebook or worker would start.
COLD_GLOB = """
import json, sys, time
from dominofs.fsspecfs import DominoFileSystem
fs = DominoFileSystem(host=sys.argv[1], api_key_file=sys.argv[2])
out = []
for _ in range(2):
    t0 = time.perf_counter()
    names = fs.glob(sys.argv[3])
    sizes = sum(fs.info(n)["size"] for n in names)
    out.append((time.perf_counter() - t0, len(names), sizes))
print(json.dumps(out))
"""

BIG_WRITE = """
import json, sys
from dominofs.fsspecfs import DominoFileSystem
def peak_kib():  # VmHWM: this process's own peak (ru_maxrss would start from the parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
fs = DominoFileSystem(host=sys.argv[1], api_key_file=sys.argv[2])
block = bytes(range(256)) * (32 * 1024)  # 8 MiB
before = peak_kib()
with fs.open(sys.argv[3], "wb") as f:
    for _ in range(int(sys.argv[4]) // len(block)):
        f.write(block)
print(json.dumps([before, peak_kib(), fs.size(sys.argv[3])]))
"""


def best(fn: Callable[[], object], n: int = REPEAT) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def stats(url: str) -> dict[str, int]:
    r = requests.get(f"{url}/_stats", timeout=10)
    r.raise_for_status()
    return {k: v for k, v in r.json()["requests"].items() if not k.endswith(" stats")}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def upload_bytes(pc: Any, path: str, data: bytes) -> None:
    pc.upload(path, io.BytesIO(data), size=len(data))


def csv_bytes(i: int, size: int) -> bytes:
    rows, n = [b"id,a,b,c\n"], 0
    while n < size:
        line = f"{i * 1_000_000 + len(rows)},{len(rows) * 0.5},{i},row{len(rows)}\n".encode()
        rows.append(line)
        n += len(line)
    return b"".join(rows)


def run(tmp: Path, quick: bool, say: Callable[[str], None]) -> list[Figure]:
    from dominofs.api import DominoClient
    from dominofs.fsspecfs import DominoFileSystem
    from dominofs.server.store import Store

    big_size = 256 * MiB if quick else GiB
    csvs = 20 if quick else 100
    key = secrets.token_hex(20)
    key_file = private_file(tmp / "key", key + "\n")
    header = private_file(tmp / "curl-headers", f"X-Domino-Api-Key: {key}\n")
    store = Store.open(tmp / "data")
    store.add_user(OWNER, key)
    build_file_project(store, "files", FILES)
    users = private_file(tmp / "users", f"{OWNER}:{key}\n")
    server = Server(tmp / "data", users, tmp / "server.log", [f"{OWNER}/big"], key)
    server.start()
    figures: list[Figure] = []
    try:
        url = server.url
        fs = DominoFileSystem(host=url, api_key_file=str(key_file))
        options = {"host": url, "api_key_file": str(key_file)}
        gib = f"{big_size / GiB:g} GiB"

        # -- a big file: fs.open and cat_file against curl
        session = requests.Session()
        session.headers["X-Domino-Api-Key"] = key
        put = session.put(f"{url}/v1/projects/{OWNER}/big/big.bin", data=big_chunks(big_size, 1))
        put.raise_for_status()
        blob_url = f"{url}/v1/projects/{OWNER}/big/blobs/{put.json()['key']}"
        curl = ["curl", "-sf", "-o", "/dev/null", "-H", f"@{header}", blob_url]
        curl_s = best(lambda: subprocess.run(curl, check=True))
        path = f"{OWNER}/big/big.bin"

        def read_open() -> None:
            with fs.open(path, "rb") as f:
                while f.read(8 * MiB):
                    pass

        before = stats(url)
        open_s = best(read_open)
        open_gets = delta(before, stats(url)).get("GET blobs", 0) // REPEAT
        cat_s = best(lambda: fs.cat_file(path))
        for name, value in ((f"{gib} read by fs.open (8 MiB reads)", open_s), (
            f"{gib} read by cat_file", cat_s)):  # fmt: skip
            note = f"{big_size / value / GB:.2f} GB/s; curl {big_size / curl_s / GB:.2f} GB/s"
            if "open" in name:
                note += f"; {open_gets} Range requests per read"
            figures.append(
                Figure("fsspec", name, value, "s", curl_s, "curl -o /dev/null", note=note).finish()
            )
            say(f"{name}: {value:.3f}s vs curl {curl_s:.3f}s")

        # -- memory of a big write
        out = subprocess.run(
            [sys.executable, "-c", BIG_WRITE, url, str(key_file), f"{OWNER}/big/w.bin",
             str(big_size)],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        rss_before, rss_after, written = json.loads(out.stdout)
        figures.append(
            Figure(
                "fsspec", f"peak RSS writing {gib} by fs.open(wb)", rss_after / 1024, "MiB",
                rss_before / 1024, "peak RSS before the write",
                note=f"{written} bytes uploaded in one PUT",
            ).finish()
        )  # fmt: skip

        # -- glob + info of a 10,000-file commit, cold in a fresh process, then warm
        before = stats(url)
        out = subprocess.run(
            [sys.executable, "-c", COLD_GLOB, url, str(key_file), f"{OWNER}/files/**/*.txt"],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        asked = delta(before, stats(url))
        (cold_s, found, _), (warm_s, _, _) = json.loads(out.stdout)
        assert found == FILES, found
        figures.append(
            Figure(
                "fsspec", f"glob + info of {FILES:,} files, cold", cold_s, "s",
                note=f"requests: {asked} (both rounds); warm round {warm_s:.3f}s, 0 requests",
            ).finish()
        )  # fmt: skip
        figures.append(
            Figure("fsspec", f"glob + info of {FILES:,} files, warm", warm_s, "s").finish()
        )
        say(f"glob+info cold {cold_s:.3f}s warm {warm_s:.3f}s, requests {asked}")

        # -- small writes into the 10,000-file project, each checked against its listing
        writes, payload = 200, b"x" * 1000
        pc = DominoClient(url, key).project(f"{OWNER}/files")
        raw_s = best(lambda: [upload_bytes(pc, f"raw/{i}.txt", payload) for i in range(writes)], 1)
        fs.ls(f"{OWNER}/files")  # the listing is here: the writes are timed, not its fetch
        before = stats(url)
        pipe_s = best(lambda: [fs.pipe(f"{OWNER}/files/fs/{i}", payload) for i in range(writes)], 1)
        asked = delta(before, stats(url))
        figures.append(
            Figure(
                "fsspec", f"{writes} pipe_file into a {FILES:,}-file project", pipe_s, "s",
                raw_s, "the same PUTs by ProjectClient.upload", note=f"requests: {asked}",
            ).finish()
        )  # fmt: skip
        say(f"{writes} pipes {pipe_s:.3f}s vs uploads {raw_s:.3f}s, requests {asked}")

        # -- dask read_csv on 2 worker processes against pandas one by one
        figures.append(dask_figure(fs, options, csvs, say))
    finally:
        server.stop()
    return figures


def dask_figure(fs: Any, options: dict[str, str], csvs: int, say: Callable[[str], None]) -> Figure:
    import dask.dataframe as dd
    import pandas as pd
    from distributed import Client, LocalCluster

    names = [f"{OWNER}/big/csv/part-{i:03d}.csv" for i in range(csvs)]
    for i, name in enumerate(names):
        fs.pipe(name, csv_bytes(i, MiB))

    def by_pandas() -> pd.DataFrame:
        frames = [pd.read_csv(f"domino://{n}", storage_options=options) for n in names]
        return pd.concat(frames, ignore_index=True)

    pandas_s = best(by_pandas, 1)
    want = by_pandas()
    with (
        LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        Client(cluster),
    ):  # fmt: skip
        url = f"domino://{OWNER}/big/csv/*.csv"
        runs = []
        for _ in range(2):  # the first also pays the workers' imports of pandas and dominofs
            t0 = time.perf_counter()
            got = dd.read_csv(url, storage_options=options).compute()
            runs.append(time.perf_counter() - t0)
    got = got.sort_values("id").reset_index(drop=True)
    same = got.astype(str).equals(want.astype(str))  # dask's strings are pyarrow's
    say(f"dask {runs} vs pandas {pandas_s:.3f}s, equal: {same}")
    return Figure(
        "fsspec", f"dd.read_csv of {csvs} x 1 MiB, 2 workers", runs[1], "s", pandas_s,
        "pandas, one file after another",
        note=f"results equal: {same}; first run {runs[0]:.2f}s (workers import pandas); "
        "cluster start not timed",
    ).finish()  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    if shutil.which("curl") is None:
        print("bench_fsspec: error: curl is not installed", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="dominofs-bench-fsspec-"))
    os.chmod(tmp, 0o700)
    t0 = time.perf_counter()
    try:
        figures = run(tmp, args.quick, lambda m: print(f"bench_fsspec: {m}", file=sys.stderr))
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    elapsed = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"machine": machine(), "figures": [asdict(f) for f in figures]}, indent=2))
    else:
        m = machine()
        print(
            f"dominofs bench_fsspec ({'quick' if args.quick else 'full'}) on {m['nproc']} x "
            f"{m['cpu']}, {m['memory_gib']} GiB, Python {m['python']}; {elapsed:.0f}s"
        )
        print(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
