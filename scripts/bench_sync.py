"""The bench's `sync` part: `dominofs sync` between a local folder and the bench's server
(issue 5), each figure against `dominofs put`, the upload delay or a walk of the same folder.

Rows: `sync --once` of a folder of new small files against `dominofs put` of the same, and the
restart that must upload nothing; save-to-on-server p50 and p99 of a watching sync against the
upload delay; its idle CPU and RSS watching a many-file folder; `sync --once` over that folder
unchanged against a walk + stat of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
from bench_tools import (
    OWNER,
    ROOT,
    local_tree,
    percentile,
    rss_kib,
    save_latencies,
    skip_rest,
    timed,
    walk_stat,
)


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process in clock ticks, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def run(b: Any, figure: Any, skip: type[Exception], upload_delay: float) -> None:
    """Every row of the part (b: the Bench; figure: its Figure class; skip: its Skip)."""
    _once(b, figure, skip)
    _live(b, figure, skip, upload_delay)


def _once(b: Any, figure: Any, skip: type[Exception]) -> None:
    n = b.sizes.sync_files
    names = [f"sync --once of {n:,} new small files", "sync --once restart, nothing changed"]
    targets = ["ratio ≤ 2 (vs put)", "0 PUTs"]
    try:
        import dominofs.sync  # noqa: F401
    except ImportError as exc:
        for name, target in zip(names, targets, strict=True):
            b.skip("sync", name, f"dominofs.sync not importable ({exc})", target)
        return
    if b.cli("sync", "--help", timeout=60).returncode != 0:
        for name, target in zip(names, targets, strict=True):
            b.skip("sync", name, "`python -m dominofs sync --help` fails", target)
        return
    src_sync, src_put = b.tmp / "sync-dir", b.tmp / "put-dir"
    for root in (src_sync, src_put):
        for i in range(n):
            p = root / f"dir{i // 100:02d}" / f"note{i:04d}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f"small file {i}\n" * 4)
    done = 0
    try:
        proc, put_s, put_count = _timed_cli(b, "put", f"{OWNER}/put", str(src_put))
        if proc.returncode != 0:
            raise skip(f"dominofs put failed: {proc.stdout.strip().splitlines()[-1:]}")

        once = ("sync", f"{OWNER}/sync", str(src_sync), "--once", "--upload-delay", "0")
        proc, sync_s, sync_count = _timed_cli(b, *once)
        if proc.returncode != 0:
            raise skip(f"sync --once exited {proc.returncode}: {proc.stdout.strip()[-200:]}")
        fig = figure(
            "sync", names[0], sync_s, "s", put_s, "dominofs put of the folder",
            target=targets[0],
            note=f"{sync_count} PUTs by sync, {put_count} by put",
        )  # fmt: skip
        b.add(fig.finish(sync_s <= 2 * put_s and sync_count >= n))
        done = 1

        proc, again, puts = _timed_cli(b, *once)
        fig = figure(
            "sync", names[1], float(puts), "PUTs", float(sync_count), "PUTs of the first sync",
            target=targets[1], note=f"took {again:.2f}s; exit {proc.returncode}",
        )  # fmt: skip
        b.add(fig.finish(puts == 0 and proc.returncode == 0))
        done = 2
    except (skip, subprocess.SubprocessError, OSError, RuntimeError) as exc:
        skip_rest(b, "sync", list(zip(names, targets, strict=True))[done:], exc)


def _timed_cli(
    b: Any, *args: str, timeout: float = 600
) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """`dominofs ARGS`: its process, its seconds and the PUTs the server saw meanwhile."""
    before = b.server.stats().get("PUT upload", 0)
    t = time.perf_counter()
    proc = b.cli(*args, timeout=timeout)
    took = time.perf_counter() - t
    return proc, took, b.server.stats().get("PUT upload", 0) - before


def _start(
    b: Any, project: str, root: Path, log: Path, upload_delay: float
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "dominofs", "sync", f"{OWNER}/{project}", str(root),
             "--upload-delay", str(upload_delay)],
            stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=b.mount_env(), cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_watching(proc: subprocess.Popen[bytes], root: Path, timeout: float) -> float:
    """Wait for status.json to say "watching"; returns the seconds it took."""
    t = time.perf_counter()
    status = root / ".dominofs" / "status.json"
    while time.perf_counter() - t < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"sync exited {proc.returncode} before watching")
        with contextlib.suppress(OSError, ValueError):
            if json.loads(status.read_text(encoding="utf-8")).get("state") == "watching":
                return time.perf_counter() - t
        time.sleep(0.05)
    raise RuntimeError(f"sync not watching after {timeout:.0f}s")


def _live(b: Any, figure: Any, skip: type[Exception], upload_delay: float) -> None:
    s = b.sizes
    d = upload_delay
    n = s.watch_files
    names = [
        f"sync save-to-on-server p50 of {s.sync_saves}",
        f"sync save-to-on-server p99 of {s.sync_saves}",
        f"sync idle CPU watching {n:,} files ({s.idle_s:g}s)",
        f"sync RSS watching {n:,} files",
        f"sync --once restart of {n:,} unchanged files",
    ]
    targets = [f"≤ {d * 1000:.0f} + 200 ms", f"≤ {d * 1000:.0f} + 1500 ms", "≤ 1% of a core",
               "≤ 150 MB", "≤ 15 s, 0 PUTs"]  # fmt: skip
    try:
        import dominofs.sync  # noqa: F401
    except ImportError as exc:
        for name, target in zip(names, targets, strict=True):
            b.skip("sync", name, f"dominofs.sync not importable ({exc})", target)
        return
    done = 0
    small_rss = 0
    procs: list[subprocess.Popen[bytes]] = []
    try:
        live = b.tmp / "live-dir"
        live.mkdir()
        proc = _start(b, "live", live, b.tmp / "sync-live.log", d)
        procs.append(proc)
        _wait_watching(proc, live, 60)
        lat = save_latencies(b, "live", live, "s", s.sync_saves, 64 * 1024)
        small_rss = rss_kib(proc.pid)
        _stop(proc)
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        note = f"64 KiB files; min {min(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms"
        fig = figure("sync", names[0], p50 * 1000, "ms", d * 1000, "the upload delay",
                     target=targets[0], note=note)  # fmt: skip
        b.add(fig.finish(p50 <= d + 0.2))
        fig = figure("sync", names[1], p99 * 1000, "ms", d * 1000, "the upload delay",
                     target=targets[1], note=note)  # fmt: skip
        b.add(fig.finish(p99 <= d + 1.5))
        done = 2

        watch = b.tmp / "watch-dir"
        local_tree(watch, n, f"watch{n}")
        proc = _start(b, f"watch{n}", watch, b.tmp / "sync-watch.log", d)
        procs.append(proc)
        before = b.server.stats().get("PUT upload", 0)
        first = _wait_watching(proc, watch, s.time_limit / 4)
        first_puts = b.server.stats().get("PUT upload", 0) - before
        time.sleep(1.0)
        tick = os.sysconf("SC_CLK_TCK")
        c0, s0, t0 = cpu_ticks(proc.pid), cpu_ticks(b.server.pid), time.perf_counter()
        time.sleep(s.idle_s)
        c1, s1, t1 = cpu_ticks(proc.pid), cpu_ticks(b.server.pid), time.perf_counter()
        cpu = (c1 - c0) / tick / (t1 - t0) * 100
        server_cpu = (s1 - s0) / tick / (t1 - t0) * 100
        rss = rss_kib(proc.pid)
        fig = figure(
            "sync", names[2], cpu, "%", server_cpu, "server CPU, same window",
            target=targets[2],
            note=f"first reconcile {first:.1f}s with {first_puts} PUTs; utime+stime",
        )  # fmt: skip
        b.add(fig.finish(cpu <= 1.0))
        done = 3
        fig = figure(
            "sync", names[3], rss / 1024, "MB", small_rss / 1024,
            "sync RSS on the small save folder", target=targets[3], note=f"pid {proc.pid}",
        )  # fmt: skip
        b.add(fig.finish(rss / 1024 <= 150))
        done = 4
        _stop(proc)

        walk = timed(lambda: walk_stat(watch))
        once, again, puts = _timed_cli(b, "sync", f"{OWNER}/watch{n}", str(watch), "--once",
                                       timeout=300)  # fmt: skip
        fig = figure(
            "sync", names[4], again, "s", walk, "walk + stat of the folder",
            target=targets[4], note=f"{puts} PUTs; exit {once.returncode}",
        )  # fmt: skip
        b.add(fig.finish(again <= 15 and puts == 0 and once.returncode == 0))
        done = 5
    except (skip, subprocess.SubprocessError, OSError, RuntimeError, ValueError,
            requests.RequestException) as exc:  # fmt: skip
        skip_rest(b, "sync", list(zip(names, targets, strict=True))[done:], exc)
    finally:
        for p in procs:
            _stop(p)
