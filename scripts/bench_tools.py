"""What the bench's parts share beside the Bench: the server process, the projects built
offline, the timing and /proc helpers, and the polls for a write to reach the server.

The parts cannot import bench.py: it runs as `__main__`, and importing it would load a second
copy with a second `Skip`, one the Bench's `except` clauses do not catch. So the parts get Figure
and Skip as arguments (as bench_peers.py does) and import the rest from here; bench.py
re-exports what bench_fsspec.py takes from it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MiB = 1 << 20
GiB = 1 << 30
GB = 1e9
OWNER = "bench"
LISTENING = "dominofs serve: listening on "


# -- helpers -------------------------------------------------------------------------------------


def private_file(path: Path, text: str) -> Path:
    """Write text to path with mode 0600 from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 when it has gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_quiet(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None) -> float:
    """Run cmd with output discarded; returns wall seconds. Raises on a non-zero exit."""
    start = time.perf_counter()
    subprocess.run(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=timeout,
        env=env,
    )  # fmt: skip
    return time.perf_counter() - start


def sha1_of_stream(chunks: Iterator[bytes]) -> str:
    h = hashlib.sha1()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def big_chunks(size: int, seed: int) -> Iterator[bytes]:
    """`size` bytes of pseudo-random content, distinct per seed, 1 MiB at a time."""
    base = hashlib.sha256(f"seed{seed}".encode()).digest() * (MiB // 32)
    sent = 0
    n = 0
    while sent < size:
        chunk = n.to_bytes(8, "little") + base[8:]
        chunk = chunk[: min(MiB, size - sent)]
        sent += len(chunk)
        n += 1
        yield chunk


def mounted(path: Path) -> bool:
    """True when path is a mount point in /proc/self/mountinfo (works for dead FUSE mounts)."""
    target = str(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
                    return True
    except OSError:
        pass
    return False


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem / GiB, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# -- the server ----------------------------------------------------------------------------------


@dataclass
class Server:
    """A `python -m dominofs.server` subprocess on 127.0.0.1 with one bench user."""

    data: Path
    users_file: Path
    log: Path
    projects: list[str]
    key: str
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)  # more `serve` flags, e.g. --no-v1-blobs

    def start(self, timeout: float = 60.0) -> None:
        out = self.log.with_suffix(".out")
        cmd = [
            sys.executable, "-m", "dominofs.server", "--data", str(self.data),
            "--bind", "127.0.0.1", "--port", "0", "--users-file", str(self.users_file),
            *self.extra,
        ]  # fmt: skip
        for p in self.projects:
            cmd += ["--project", p]
        with open(out, "wb") as so, open(self.log, "ab") as se:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=so, stderr=se, start_new_session=True,
                cwd=ROOT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = out.read_text(encoding="utf-8", errors="replace")
            if text.startswith(LISTENING) and text.endswith("\n"):
                self.url = text[len(LISTENING) :].strip()
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        err = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        self.stop()
        raise RuntimeError(f"the server did not start: {err[-1] if err else 'no output'}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # runs it started live in its group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def stats(self) -> dict[str, int]:
        r = requests.get(f"{self.url}/_stats", timeout=10)
        r.raise_for_status()
        counts: dict[str, int] = r.json()["requests"]
        return counts


def build_file_project(store: Any, name: str, n: int) -> None:
    """Create OWNER/name offline with n tiny distinct files in one commit (3 folder levels).

    Writes the blob files straight into the store's layout (BlobStore.path) from a few threads
    and without fsync: these are throwaway bench data, and 100,000 fsynced creates one by one
    would dominate the run.
    """
    from dominofs.server.store import FileEntry, blob_hasher, now_ms

    project = store.add_project(f"{OWNER}/{name}")
    when = now_ms()
    changes: dict[str, FileEntry | None] = {}
    blobs: list[tuple[str, bytes]] = []
    for i in range(n):
        data = f"file {i} of {name}\n".encode()
        h = blob_hasher()
        h.update(data)
        key = h.hexdigest()
        blobs.append((str(store.blobs.path(key)), data))
        changes[f"d{i // 1000:03d}/s{(i // 100) % 10}/f{i:06d}.txt"] = FileEntry(
            key, len(data), when
        )
    for parent in {os.path.dirname(p) for p, _ in blobs}:
        os.makedirs(parent, exist_ok=True)

    def write(batch: list[tuple[str, bytes]]) -> None:
        for path, data in batch:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(write, [blobs[k::4] for k in range(4)]))
    project.write_commit(changes, f"bench: {n} files")


def local_tree(root: Path, n: int, name: str) -> None:
    """The same tree as build_file_project, as plain local files (the walk baseline)."""
    made: set[Path] = set()
    for i in range(n):
        path = root / f"d{i // 1000:03d}/s{(i // 100) % 10}/f{i:06d}.txt"
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(f"file {i} of {name}\n".encode())


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of values (not empty)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def walk_stat(root: Path) -> int:
    """os.walk + os.stat of every file (what `find -exec stat` does); returns the file count."""
    count = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            os.stat(os.path.join(dirpath, f))
            count += 1
    return count


# -- the rows' common steps (the mount and sync parts) -------------------------------------------


def on_server(bench: Any, project: str, path: str) -> bool:
    """True when the head commit of OWNER/project lists path."""
    r = bench.session.get(f"{bench.project_url(project)}/files/HEAD/{path}", timeout=30)
    if r.status_code != 200:
        return False
    return any(e.get("path") == path for e in r.json().get("data", []))


def wait_on_server(bench: Any, project: str, path: str, timeout: float = 30.0) -> float:
    """Poll until path is in the head listing; returns the time it appeared (perf_counter)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if on_server(bench, project, path):
            return time.perf_counter()
        time.sleep(0.005)
    raise RuntimeError(f"{path} not on the server after {timeout:.0f}s")


def save_latencies(
    bench: Any, project: str, root: Path, prefix: str, n: int, size: int
) -> list[float]:
    """Seconds from close to on-server for n saves of new files root/prefix{i}.bin."""
    out = []
    for i in range(n):
        name = f"{prefix}{i:04d}.bin"
        data = b"".join(big_chunks(size, 5000 + i))
        with open(root / name, "wb") as f:
            f.write(data)
        t = time.perf_counter()
        out.append(wait_on_server(bench, project, name) - t)
    return out


def skip_rest(bench: Any, part: str, rows: Iterable[tuple[str, str]], exc: BaseException) -> None:
    """Each (name, target) of `rows` skipped for `exc`: one error ends the rest of a part."""
    for name, target in rows:
        bench.skip(part, name, f"{type(exc).__name__}: {exc}", target)
