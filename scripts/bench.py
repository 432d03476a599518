#!/usr/bin/env python3
"""One benchmark command for dominofs: the server, the mount and the sync service (issue 7).

Run: `.venv/bin/python scripts/bench.py [--json] [--quick] [--only server|mount|sync]`.

Every figure is a ratio to a baseline measured in the same run against the same local server on
loopback (127.0.0.1). The bench starts its own server as a subprocess in a temp dir (users come
from a 0600 users file, never argv; curl reads the key header from a 0600 file too), builds the
projects it needs, and removes everything on exit, Ctrl-C, SIGTERM, an error or its time limit:
servers stopped, mounts unmounted (`dominofs umount`, then `fusermount3 -u`, then `-uz`), temp
dirs removed. A figure that cannot be measured (no /dev/fuse, the mount or sync command missing
or failing) is reported as "skipped: reason"; the command still exits 0. Exit 1 only when the
server itself cannot be started, 130 when interrupted.

Two figures are not targets: the copy-in again with every request to the server held 20 ms (the
server's own latency fault), what a deployment some distance away looks like; and the cold read
through the content route (`serve --no-v1-blobs`, a deployment without the v1 blob route) beside
the same read through the blob route, measured alike in the same run.

Not part of the test suite: these are figures, not timed assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import bench_mount
import bench_peers
import bench_server
import bench_sync
import requests

# The `as` spelling re-exports what bench_fsspec.py imports from here.
from bench_tools import GB as GB
from bench_tools import OWNER as OWNER
from bench_tools import ROOT as ROOT
from bench_tools import GiB as GiB
from bench_tools import MiB as MiB
from bench_tools import Server as Server
from bench_tools import big_chunks as big_chunks
from bench_tools import build_file_project as build_file_project
from bench_tools import machine as machine
from bench_tools import mounted
from bench_tools import private_file as private_file

PARTS = ("server", "mount", "sync", "peers")


@dataclass(frozen=True)
class Sizes:
    """What one run measures with; --quick shrinks everything."""

    big: int
    blobs: int
    blob_size: int
    listing_files: int
    find_files: int
    rss_files: int
    sync_files: int
    repeat: int
    time_limit: float
    mount_saves: int = 20
    copy_files: int = 1_000
    seq_write: int = 256 * MiB
    sync_saves: int = 200
    watch_files: int = 100_000
    idle_s: float = 10.0
    scan_files: int = 1_000
    reader_files: int = 10_000


FULL = Sizes(GiB, 64, 4 * MiB, 50_000, 10_000, 100_000, 1_000, 3, 1200.0)
QUICK = Sizes(
    256 * MiB, 64, MiB, 10_000, 10_000, 10_000, 1_000, 2, 230.0,
    mount_saves=10, copy_files=300, sync_saves=40, watch_files=20_000, idle_s=5.0,
    scan_files=300, reader_files=2_000,
)  # fmt: skip
UPLOAD_DELAY = 0.2


@dataclass
class Figure:
    """One row of the table. ratio = value / baseline (both in the same unit)."""

    part: str
    name: str
    value: float | None = None
    unit: str = ""
    baseline: float | None = None
    baseline_what: str = ""
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None
    note: str = ""
    skipped: str | None = None

    def finish(self, ok: bool | None = None) -> Figure:
        if self.value is not None and self.baseline:
            self.ratio = self.value / self.baseline
        self.ok = ok
        return self


class BenchTimeout(Exception):
    """The whole run exceeded its time limit."""


class Skip(Exception):
    """This figure (or part) cannot be measured here; the message says why."""


# -- the bench -----------------------------------------------------------------------------------


@dataclass
class Bench:
    sizes: Sizes
    parts: tuple[str, ...]
    tmp: Path
    verbose: bool = True
    key: str = field(default_factory=lambda: secrets.token_hex(20))
    figures: list[Figure] = field(default_factory=list)
    server: Server | None = None
    mounts: list[Path] = field(default_factory=list)
    session: requests.Session = field(default_factory=requests.Session)
    big: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (key, size)
    header_file: Path | None = None

    def say(self, msg: str) -> None:
        if self.verbose:
            print(f"bench: {msg}", file=sys.stderr, flush=True)

    def add(self, fig: Figure) -> None:
        self.figures.append(fig)
        if fig.skipped:
            self.say(f"{fig.part}: {fig.name}: skipped: {fig.skipped}")
        else:
            self.say(f"{fig.part}: {fig.name}: {fmt(fig.value, fig.unit)} (ratio {fmt(fig.ratio)})")

    def skip(self, part: str, name: str, reason: str, target: str = "") -> None:
        self.add(Figure(part, name, target=target, skipped=reason))

    # ---- setup

    def file_projects(self) -> dict[str, int]:
        s = self.sizes
        wanted: dict[str, int] = {}
        if "server" in self.parts:
            wanted[f"files{s.listing_files}"] = s.listing_files
        if "mount" in self.parts:
            wanted[f"files{s.find_files}"] = s.find_files
            wanted[f"files{s.rss_files}"] = s.rss_files
        if "sync" in self.parts:
            wanted[f"watch{s.watch_files}"] = s.watch_files
        return wanted

    def start_server(self) -> None:
        from dominofs.server.store import Store

        data = self.tmp / "server-data"
        users = private_file(self.tmp / "users", f"{OWNER}:{self.key}\n")
        self.header_file = private_file(
            self.tmp / "curl-headers", f"X-Domino-Api-Key: {self.key}\n"
        )
        self.session.headers["X-Domino-Api-Key"] = self.key
        t0 = time.perf_counter()
        store = Store.open(data)
        store.add_user(OWNER, self.key)
        for name, n in self.file_projects().items():
            build_file_project(store, name, n)
        if "peers" in self.parts:
            bench_peers.build(store, OWNER, self.sizes, self.tmp / "www")
        self.say(f"built file projects {self.file_projects()} in {time.perf_counter() - t0:.1f}s")
        names = ("big", "blobs", "sync", "put", "write", "seqput", "curlput", "live")
        projects = [f"{OWNER}/{p}" for p in names]
        self.server = Server(data, users, self.tmp / "server.log", projects, self.key)
        self.server.start()
        self.say(f"server {self.server.url} pid {self.server.pid}")

    def project_url(self, project: str) -> str:
        assert self.server is not None
        return f"{self.server.url}/v1/projects/{OWNER}/{project}"

    def blob_url(self, project: str, key: str) -> str:
        return f"{self.project_url(project)}/blobs/{key}"

    def upload(self, project: str, path: str, body: bytes | Iterator[bytes]) -> tuple[str, int]:
        r = self.session.put(f"{self.project_url(project)}/{path}", data=body, timeout=600)
        r.raise_for_status()
        info = r.json()
        return str(info["key"]), int(info["size"])

    def big_file(self, name: str, seed: int) -> tuple[str, int]:
        """A big file in bench/big (uploaded, unmeasured, unless already there)."""
        if name not in self.big:
            self.big[name] = self.upload("big", name, big_chunks(self.sizes.big, seed))
        return self.big[name]

    def head(self, project: str) -> str:
        r = self.session.get(f"{self.project_url(project)}/commits", timeout=30)
        r.raise_for_status()
        return str(r.json()[0])

    def curl(self, url: str, out_file: str = "/dev/null") -> tuple[float, float, int]:
        """(time to first byte, total time, bytes) of `curl -s -o OUT_FILE` on url."""
        out = subprocess.run(
            ["curl", "-s", "-o", out_file, "-H", f"@{self.header_file}",
             "-w", "%{http_code} %{size_download} %{time_starttransfer} %{time_total}", url],
            capture_output=True, text=True, timeout=300, check=True,
        ).stdout.split()  # fmt: skip
        if out[0] != "200":
            raise RuntimeError(f"curl {url}: HTTP {out[0]}")
        return float(out[2]), float(out[3]), int(out[1])

    # ---- mounts and the command line (the mount, sync and peers parts)

    def mount_env(self) -> dict[str, str]:
        assert self.server is not None
        env = dict(os.environ)
        env.update(
            DOMINO_API_HOST=self.server.url,
            DOMINO_USER_API_KEY=self.key,
            DOMINOFS_STATE_DIR=str(self.tmp / "state"),
            DOMINOFS_CACHE_DIR=str(self.tmp / "cache"),
            XDG_CONFIG_HOME=str(self.tmp / "config"),
        )
        return env

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`python -m dominofs ARGS` with the bench's host and key in the environment."""
        log = self.tmp / "cli.log"
        with open(log, "a+", encoding="utf-8") as f:
            start = f.seek(0, os.SEEK_END)
            proc = subprocess.run(
                [sys.executable, "-m", "dominofs", *args], stdin=subprocess.DEVNULL,
                stdout=f, stderr=f, env=self.mount_env(), timeout=timeout, cwd=ROOT,
                text=True,
            )  # fmt: skip
            f.seek(start)
            proc.stdout = f.read()
        return proc

    def mount_skip_reason(self) -> str | None:
        if not Path("/dev/fuse").exists():
            return "no /dev/fuse"
        if shutil.which("fusermount3") is None:
            return "no fusermount3"
        try:
            import dominofs.mount  # noqa: F401
        except ImportError as exc:
            return f"dominofs.mount not importable ({exc})"
        if self.cli("mount", "--help", timeout=60).returncode != 0:
            return "`python -m dominofs mount --help` fails"
        return None

    def mount(self, project: str, *extra: str) -> tuple[Path, int]:
        """Mount OWNER/project on a fresh mount point; returns it and the mount's pid."""
        mp = self.tmp / f"mnt{len(list(self.tmp.glob('mnt*')))}-{project}"
        mp.mkdir()
        self.mounts.append(mp)
        proc = self.cli(
            "mount", f"{OWNER}/{project}", str(mp), "--cache-dir", str(self.tmp / "cache"),
            "--poll-interval", "0", *extra,
        )  # fmt: skip
        if proc.returncode != 0:
            last = proc.stdout.strip().splitlines()
            raise Skip(f"mount failed: {last[-1] if last else proc.returncode}")
        return mp, self.mount_pid(mp)

    def mount_pid(self, mp: Path) -> int:
        state = self.tmp / "state" / "mounts"
        for info in state.glob("*/mount.json"):
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(info.read_text(encoding="utf-8"))
                if data.get("mountpoint") == str(mp) and isinstance(data.get("pid"), int):
                    return int(data["pid"])
        for pid_dir in Path("/proc").iterdir():  # fall back: the process naming the mount point
            if pid_dir.name.isdigit():
                with contextlib.suppress(OSError):
                    cmd = (pid_dir / "cmdline").read_bytes().split(b"\0")
                    if b"mount" in cmd and str(mp).encode() in cmd:
                        return int(pid_dir.name)
        raise Skip(f"cannot find the pid of the mount on {mp}")

    def unmount(self, mp: Path) -> None:
        """dominofs umount, then fusermount3 -u, then -uz; the mount's process is waited for."""
        pid = None
        with contextlib.suppress(Skip):
            pid = self.mount_pid(mp) if mounted(mp) else None
        if mounted(mp):
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                self.cli("umount", str(mp), timeout=60)
        for flags in ("-u", "-uz"):
            if mounted(mp):
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    subprocess.run(["fusermount3", flags, str(mp)], capture_output=True, timeout=30)
        if pid is not None:  # started by this bench (through `dominofs mount`): ours to end
            for sig in (signal.SIGTERM, signal.SIGKILL):
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                    time.sleep(0.05)
                if not Path(f"/proc/{pid}").exists():
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        if mp in self.mounts and not mounted(mp):
            self.mounts.remove(mp)

    # ---- the copy-in (the mount and peers parts)

    def count_on_server(self, project: str, prefix: str) -> int:
        r = self.session.get(f"{self.project_url(project)}/files/HEAD/{prefix}", timeout=60)
        if r.status_code != 200:
            return 0
        return sum(1 for e in r.json().get("data", []) if str(e.get("path", "")).startswith(prefix))

    def copy_in(self, mp: Path, src: Path, folder: str, n: int) -> tuple[float, float]:
        """`cp -r src` to the mount's `folder`: (seconds of cp, seconds until all n files are
        on the server)."""
        t = time.perf_counter()
        subprocess.run(["cp", "-r", str(src), str(mp / folder)], check=True, timeout=300)
        copied = time.perf_counter() - t
        got = 0
        while time.perf_counter() - t < 300:
            got = self.count_on_server("write", f"{folder}/")
            if got >= n:
                break
            time.sleep(0.05)
        if got < n:
            raise RuntimeError(f"only {got}/{n} copied files reached the server")
        return copied, time.perf_counter() - t

    # ---- the parts, each in its own module: Figure and Skip go as arguments (bench_tools.py
    # says why)

    def bench_server(self) -> None:
        bench_server.run(self, Figure)

    def bench_mount(self) -> None:
        bench_mount.run(self, Figure, Skip, UPLOAD_DELAY)

    def bench_sync(self) -> None:
        bench_sync.run(self, Figure, Skip, UPLOAD_DELAY)

    def bench_peers(self) -> None:
        bench_peers.run(self, Figure, Skip, UPLOAD_DELAY)

    # ---- lifecycle

    def run(self) -> None:
        self.start_server()
        for part in PARTS:
            if part in self.parts:
                t = time.perf_counter()
                getattr(self, f"bench_{part}")()
                self.say(f"{part} part took {time.perf_counter() - t:.1f}s")

    def cleanup(self) -> None:
        for mp in list(self.mounts):
            with contextlib.suppress(Exception):
                self.unmount(mp)
        if self.server is not None:
            self.server.stop()
        self.session.close()
        leftover = [str(m) for m in self.mounts if mounted(m)]
        if leftover:  # never rmtree through a live mount
            print(f"bench: warning: still mounted: {leftover}; left {self.tmp}", file=sys.stderr)
            return
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- output --------------------------------------------------------------------------------------


def fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        text = f"{x:,.0f}"
    elif abs(x) >= 10:
        text = f"{x:.1f}"
    elif abs(x) >= 0.01 or x == 0:
        text = f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"
    else:
        text = f"{x:.2e}"
    return f"{text} {unit}".strip()


def table(figures: list[Figure]) -> str:
    rows = [("part", "figure", "value", "baseline", "ratio", "target", "ok?")]
    notes: list[str] = []
    for f in figures:
        if f.skipped:
            reason = f.skipped if len(f.skipped) <= 70 else f.skipped[:67] + "..."
            rows.append((f.part, f.name, f"skipped: {reason}", "", "", f.target, "-"))
            continue
        base = f"{fmt(f.baseline, f.unit)} ({f.baseline_what})"
        ok = "-" if f.ok is None else ("yes" if f.ok else "NO")
        rows.append((f.part, f.name, fmt(f.value, f.unit), base, fmt(f.ratio), f.target, ok))
        if f.note:
            notes.append(f"  {f.name}: {f.note}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--quick", action="store_true", help="smaller sizes (< 2 minutes)")
    p.add_argument("--only", choices=PARTS, action="append", help="run only this part")
    p.add_argument("--tmp", type=Path, default=None, help="where the temp dir goes")
    p.add_argument("--time-limit", type=float, default=None, help="seconds for the whole run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    parts = tuple(args.only) if args.only else PARTS
    limit = args.time_limit or sizes.time_limit
    if shutil.which("curl") is None:
        print("bench: error: curl is not installed (apt-get install curl)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="dominofs-bench-", dir=args.tmp))
    os.chmod(tmp, 0o700)
    bench = Bench(sizes, parts, tmp)
    started = datetime.now(UTC)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGALRM:
            raise BenchTimeout(f"time limit of {limit:.0f}s reached")
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGALRM)}
    # Started in the background by a non-interactive shell, SIGINT arrives ignored; Ctrl-C
    # must still clean up.
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.alarm(int(limit))
    code = 0
    error = None
    try:
        bench.run()
    except KeyboardInterrupt:
        error, code = "interrupted", 130
    except BenchTimeout as exc:
        error = str(exc)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        code = 0 if bench.figures else 1
    finally:
        signal.alarm(0)
        for s in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut cleanup short
            signal.signal(s, signal.SIG_IGN)
        try:
            bench.cleanup()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    elapsed = (datetime.now(UTC) - started).total_seconds()
    machine_info = machine()
    report = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine_info,
        "mode": "quick" if args.quick else "full",
        "parts": list(parts),
        "elapsed_s": round(elapsed, 1),
        "error": error,
        "figures": [asdict(f) for f in bench.figures],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        m = machine_info
        print(
            f"dominofs bench ({report['mode']}, {', '.join(parts)}) {report['date']} on "
            f"{m['nproc']} x {m['cpu']}, {m['memory_gib']} GiB, Linux {m['kernel']}, "
            f"Python {m['python']}; {elapsed:.0f}s"
        )
        print(table(bench.figures))
        if error:
            print(f"bench: stopped early: {error}")
    return code


if __name__ == "__main__":
    sys.exit(main())
