"""The bench's `peers` part: small files against rclone's mount, and the folder scan (issue 15).

rclone 1.60 from Debian (`./scripts/setup --peers` installs it with nginx-light) mounts the same
bytes on loopback: its http backend over nginx with `--vfs-cache-mode full` for reads, its
webdav backend over `rclone serve webdav` with `--vfs-cache-mode writes --vfs-write-back 0.2s`
for writes; dominofs mounts `dominofs serve`. curl is the limit. Nothing of rclone is in the
repository: where rclone or nginx is missing, the rclone rows say so and the rest still run.

Rows: a cold `cat` of a folder of small files; `cp -r` of small files in, and until all are on
the server; 8 reader threads over cold small files with the server 20 ms away against 8
keep-alive curl loops; a folder scan with the server 20 ms away against one request at a time
(the mount's read-ahead across files), with stat-only walks checked to download nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SMALL = 10 * 1024
LATENCY = 0.02


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def small_bytes(i: int, name: str) -> bytes:
    return (f"{name} {i:08d} ".encode() * (SMALL // 8))[:SMALL]


def build(store: Any, owner: str, sizes: Any, www: Path) -> None:
    """The peers' projects, written offline into the server's store, and the same bytes as
    plain files under `www` for nginx (and as the source of the copy-ins)."""
    from dominofs.server.store import FileEntry, blob_hasher, now_ms

    for name, n in (("scan", sizes.scan_files), ("readers", sizes.reader_files)):
        project = store.add_project(f"{owner}/{name}")
        changes: dict[str, FileEntry | None] = {}
        when = now_ms()
        folder = www / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            data = small_bytes(i, name)
            h = blob_hasher()
            h.update(data)
            key = h.hexdigest()
            path = store.blobs.path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            rel = f"f{i:06d}.bin" if name == "scan" else f"d{i // 1000:02d}/f{i:06d}.bin"
            changes[f"data/{rel}"] = FileEntry(key, len(data), when)
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        project.write_commit(changes, f"bench: {n} small files")


class Peers:
    """nginx and rclone processes for one run; `close` stops them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.mounts: list[Path] = []

    @staticmethod
    def missing() -> str | None:
        for tool in ("rclone", "nginx"):
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
                return f"{tool} is not installed (./scripts/setup --peers)"
        return None

    def nginx(self, root: Path) -> str:
        """nginx serving `root` (with folder indexes, which rclone's http backend lists)."""
        port = _free_port()
        prefix = self.tmp / "nginx"
        for d in ("logs", "tmp"):
            (prefix / d).mkdir(parents=True, exist_ok=True)
        temps = "".join(
            f"    {k}_temp_path {prefix / 'tmp' / k};\n"
            for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root root;\n" if os.geteuid() == 0 else ""
        conf = prefix / "nginx.conf"
        conf.write_text(
            f"{user}worker_processes 1;\ndaemon off;\npid {prefix / 'nginx.pid'};\n"
            f"error_log {prefix / 'logs' / 'error.log'};\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n    access_log off;\n    sendfile on;\n    keepalive_requests 100000;\n"
            f"{temps}    server {{ listen 127.0.0.1:{port}; root {root}; autoindex on; }}\n}}\n"
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self._start([nginx, "-p", str(prefix), "-c", str(conf)], prefix / "logs" / "stdout")
        _wait_port(port)
        return f"http://127.0.0.1:{port}/"

    def webdav(self, root: Path) -> str:
        port = _free_port()
        root.mkdir(parents=True, exist_ok=True)
        self._start(
            ["rclone", "serve", "webdav", str(root), "--addr", f"127.0.0.1:{port}"],
            self.tmp / "webdav.log",
        )
        _wait_port(port)
        return f"http://127.0.0.1:{port}/"

    def mount(self, backend: str, url: str, *flags: str) -> Path:
        """`rclone mount :BACKEND: MP --BACKEND-url URL FLAGS`, returned once it answers."""
        mp = self.tmp / f"rclone-{len(self.mounts)}"
        mp.mkdir()
        cache = self.tmp / f"rclone-cache-{len(self.mounts)}"
        self._start(
            ["rclone", "mount", f":{backend}:", str(mp), f"--{backend}-url", url,
             "--cache-dir", str(cache), "--dir-cache-time", "1h", *flags],
            self.tmp / f"rclone-mount-{len(self.mounts)}.log",
        )  # fmt: skip
        self.mounts.append(mp)
        deadline = time.monotonic() + 30
        while not os.path.ismount(mp):
            if time.monotonic() > deadline:
                raise RuntimeError("rclone mount did not answer in 30 s")
            time.sleep(0.05)
        return mp

    def _start(self, argv: list[str], log: Path) -> None:
        with open(log, "wb") as out:
            self.procs.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def close(self) -> None:
        for mp in self.mounts:
            for flags in ("-u", "-uz"):
                if os.path.ismount(mp):
                    subprocess.run(["fusermount3", flags, str(mp)], capture_output=True, timeout=30)
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.05)


def timed_shell(cmd: str, timeout: float = 600) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, timeout=timeout, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def read_all(paths: list[Path], threads: int) -> float:
    """Seconds for `threads` threads to read `paths` to the end (thread k: every k-th path)."""
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for p in paths[k::threads]:
                fd = os.open(p, os.O_RDONLY)
                try:
                    while os.read(fd, 1 << 20):
                        pass
                finally:
                    os.close(fd)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    t = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t


@contextlib.contextmanager
def latency(bench: Any, seconds: float) -> Iterator[None]:
    """Every request to the bench's server waits `seconds` (its latency fault) inside."""
    faults = f"{bench.server.url}/_faults"
    bench.session.put(faults, json={"spec": f"*:latency={seconds}"}, timeout=10).raise_for_status()
    try:
        yield
    finally:
        bench.session.delete(faults, timeout=10)


def curl_loops(bench: Any, project: str, keys: list[str], loops: int) -> float:
    """Seconds for `loops` curl processes, each fetching its share of `keys` in turn on one
    keep-alive connection, to fetch them all."""
    configs = []
    for k in range(loops):
        config = bench.tmp / f"curl-get-{project}-{k}.cfg"
        with open(config, "w", encoding="utf-8") as f:
            for key in keys[k::loops]:
                f.write(f'url = "{bench.blob_url(project, key)}"\noutput = "/dev/null"\n')
        configs.append(config)
    t = time.perf_counter()
    procs = [
        subprocess.Popen(["curl", "-sSf", "-H", f"@{bench.header_file}", "-K", str(c)])
        for c in configs
    ]
    for p in procs:
        if p.wait(900) != 0:
            raise RuntimeError(f"curl exited {p.returncode}")
    return time.perf_counter() - t


def keys_of(bench: Any, project: str, prefix: str) -> list[tuple[str, str]]:
    """(path, key) of the head's files under `prefix`, in path order."""
    r = bench.session.get(f"{bench.project_url(project)}/files/HEAD/{prefix}", timeout=60)
    r.raise_for_status()
    return sorted((e["path"], e["key"]) for e in r.json()["data"])


def status_of(mp: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((mp / ".dominofs" / "status.json").read_text())
    return data


# -- the rows ----------------------------------------------------------------------------------


def run(b: Any, figure: Any, skip: type[Exception], upload_delay: float) -> None:
    """Every row of the part (b: the Bench; figure: its Figure class; skip: its Skip)."""
    names = {
        "cat": f"cat of {b.sizes.scan_files:,} cold 10 KiB files, one process",
        "cp": f"cp -r of {b.sizes.scan_files:,} x 10 KiB files into the mount",
        "land": f"... until all {b.sizes.scan_files:,} are on the server",
        "readers": f"8 reader threads, {b.sizes.reader_files:,} cold 10 KiB files, 20 ms away",
        "scan": f"folder scan of {b.sizes.scan_files:,} cold 10 KiB files, 20 ms away",
    }
    targets = {
        "cat": "≤ 1.0 x rclone; ≤ 1.5 ms per file",
        "cp": "≤ 1.0 x rclone",
        "land": "≤ 0.25 x rclone",
        "readers": "≥ 0.8 x curl",
        "scan": "≥ 5 x faster; walks fetch nothing",
    }
    reason = b.mount_skip_reason()
    if reason is not None:
        for k in names:
            b.skip("peers", names[k], reason, targets[k])
        return
    missing = Peers.missing()
    peers = Peers(b.tmp / "peers")
    (b.tmp / "peers").mkdir(exist_ok=True)
    rows = (
        ("cat", lambda: _cat(b, peers, missing, figure, names, targets)),
        ("cp", lambda: _copy_in(b, peers, missing, figure, names, targets, upload_delay)),
        ("readers", lambda: _readers(b, figure, names, targets)),
        ("scan", lambda: _scan(b, figure, names, targets)),
    )
    try:
        for key, row in rows:
            try:
                row()
            except (skip, subprocess.SubprocessError, OSError, RuntimeError) as exc:
                for k in (key, "land") if key == "cp" else (key,):
                    b.skip("peers", names[k], f"{type(exc).__name__}: {exc}", targets[k])
            finally:
                for m in list(b.mounts):
                    b.unmount(m)
    finally:
        peers.close()


def _cat(b: Any, peers: Peers, missing: str | None, figure: Any, names: dict[str, str],
         targets: dict[str, str]) -> None:  # fmt: skip
    n = b.sizes.scan_files
    mp, _ = b.mount("scan", "--cache-dir", str(b.tmp / "cache-cat"))
    timed_shell(f"ls -l {mp}/data > /dev/null")
    ours = timed_shell(f"cat {mp}/data/* > /dev/null")
    keys = [k for _, k in keys_of(b, "scan", "data/")]
    limit = curl_loops(b, "scan", keys, 1)
    note = f"{ours / n * 1000:.2f} ms per file; one keep-alive curl fetching them: {limit:.2f}s"
    if missing is not None:
        fig = figure(
            "peers", names["cat"], ours, "s", limit, "one keep-alive curl, in turn",
            target=targets["cat"], note=f"{note}; rclone: {missing}",
        )  # fmt: skip
        b.add(fig.finish(None))
        return
    rmp = peers.mount("http", peers.nginx(b.tmp / "www"), "--vfs-cache-mode", "full",
                      "--read-only")  # fmt: skip
    timed_shell(f"ls -l {rmp}/scan > /dev/null")
    theirs = timed_shell(f"cat {rmp}/scan/* > /dev/null")
    fig = figure(
        "peers", names["cat"], ours, "s", theirs, "rclone (http over nginx, cache full)",
        target=targets["cat"], note=f"{note}; rclone {theirs / n * 1000:.2f} ms per file",
    )  # fmt: skip
    b.add(fig.finish(ours <= theirs and ours / n <= 0.0015))


def _copy_in(b: Any, peers: Peers, missing: str | None, figure: Any, names: dict[str, str],
             targets: dict[str, str], upload_delay: float) -> None:  # fmt: skip
    n = b.sizes.scan_files
    src = b.tmp / "www" / "scan"
    mp, _ = b.mount("write", "--upload-delay", str(upload_delay))
    copied, landed = b.copy_in(mp, src, "peers-cp", n)
    if missing is not None:
        for k, v in (("cp", copied), ("land", landed)):
            b.skip("peers", names[k], f"ours {v:.2f}s; rclone: {missing}", targets[k])
        return
    dav = b.tmp / "davroot"
    rmp = peers.mount("webdav", peers.webdav(dav), "--vfs-cache-mode", "writes",
                      "--vfs-write-back", "0.2s")  # fmt: skip
    t = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(rmp / "peers-cp")], check=True, timeout=600)
    rc_copied = time.perf_counter() - t
    target_dir = dav / "peers-cp"
    while time.perf_counter() - t < 600:
        with contextlib.suppress(OSError):
            done = sum(1 for e in os.scandir(target_dir) if e.stat().st_size == SMALL)
            if done >= n:
                break
        time.sleep(0.05)
    else:
        raise RuntimeError("rclone's uploads did not all land in 600 s")
    rc_landed = time.perf_counter() - t
    b.add(figure("peers", names["cp"], copied, "s", rc_copied, "rclone (webdav, cache writes)",
                 target=targets["cp"], note=f"upload delay {upload_delay}s; rclone write-back "
                 "0.2s").finish(copied <= rc_copied))  # fmt: skip
    b.add(figure("peers", names["land"], landed, "s", rc_landed, "rclone (webdav, cache writes)",
                 target=targets["land"]).finish(landed <= 0.25 * rc_landed))  # fmt: skip


def _readers(b: Any, figure: Any, names: dict[str, str], targets: dict[str, str]) -> None:
    files = keys_of(b, "readers", "data/")
    n = len(files)
    mp, _ = b.mount("readers", "--cache-dir", str(b.tmp / "cache-readers"))
    paths = [mp / p for p, _ in files]
    with latency(b, LATENCY):
        ours = read_all(paths, 8)
        theirs = curl_loops(b, "readers", [k for _, k in files], 8)
    st = status_of(mp)
    fig = figure(
        "peers", names["readers"], n / ours, "files/s", n / theirs,
        "8 keep-alive curl loops, same blobs", target=targets["readers"],
        note=f"{ours:.2f}s vs {theirs:.2f}s; thread k reads every 8th file; "
        f"{st['cache']['downloads']} downloads, {st['prefetch']['started']} fetched ahead",
    )  # fmt: skip
    b.add(fig.finish(ours <= theirs / 0.8))


def _scan(b: Any, figure: Any, names: dict[str, str], targets: dict[str, str]) -> None:
    files = keys_of(b, "scan", "data/")
    mp, _ = b.mount("scan", "--cache-dir", str(b.tmp / "cache-scan"))
    before = b.server.stats().get("GET blobs", 0)
    timed_shell(
        f"ls -lR {mp} > /dev/null && find {mp} -type f > /dev/null && du -s {mp} > /dev/null"
    )
    walked = b.server.stats().get("GET blobs", 0) - before
    with latency(b, LATENCY):
        ours = timed_shell(f"cat {mp}/data/* > /dev/null")
        one = curl_loops(b, "scan", [k for _, k in files], 1)
    p = status_of(mp)["prefetch"]
    fig = figure(
        "peers", names["scan"], ours, "s", one, "one request at a time (one keep-alive curl)",
        target=targets["scan"],
        note=f"{one / ours:.1f} x faster; fetched ahead {p['started']}, read {p['used']}, "
        f"unread {p['unused']}; budget {p['requests']} requests, "
        f"{p['budget_bytes'] >> 20} MiB; ls -lR + find + du fetched {walked} blobs",
    )  # fmt: skip
    b.add(fig.finish(ours * 5 <= one and walked == 0))
