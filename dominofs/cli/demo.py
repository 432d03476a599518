"""`dominofs demo`: the local server with a sample project, mounted, with a short tour.

Everything it starts (the server, the mount) runs as a child process and is stopped on the way
out, on Ctrl-C, on SIGTERM or after --for SECONDS. The demo's key is random, lives only in the
children's environment, and is never printed.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

import click

from ..api import DominoClient
from ..errors import DominoError, UsageError

PROJECT = "demo/quickstart"

SAMPLE_CSV = "".join(
    f"{i},{x:.3f},{2.5 * x + 1 + ((i * 7919) % 13 - 6) / 10:.3f}\n"
    for i, x in enumerate(i / 10 for i in range(200))
)
SAMPLE_FILES = {
    "README.md": (
        "# quickstart\n\nA tiny sample project: `data/points.csv` holds (x, y) points and\n"
        "`train.py` fits y = a*x + b and writes `results/metrics.json`.\n"
    ),
    "data/points.csv": "id,x,y\n" + SAMPLE_CSV,
    "train.py": '''"""Fit y = a*x + b by least squares and write results/metrics.json."""
import csv
import json
import os

with open("data/points.csv") as f:
    rows = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(f)]
n = len(rows)
mx = sum(x for x, _ in rows) / n
my = sum(y for _, y in rows) / n
a = sum((x - mx) * (y - my) for x, y in rows) / sum((x - mx) ** 2 for x, _ in rows)
b = my - a * mx
rmse = (sum((y - (a * x + b)) ** 2 for x, y in rows) / n) ** 0.5
os.makedirs("results", exist_ok=True)
with open("results/metrics.json", "w") as f:
    json.dump({"a": round(a, 4), "b": round(b, 4), "rmse": round(rmse, 4), "n": n}, f, indent=2)
print(f"fitted y = {a:.3f}*x + {b:.3f} on {n} points (rmse {rmse:.3f})")
''',
}


class _Stop(Exception):
    pass


@click.command("demo")
@click.argument("mountpoint", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--for",
    "duration",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Run this long without a terminal, then clean up (for scripts and tests).",
)
@click.option("--no-tour", is_flag=True, help="Skip the automatic tour (start a run, show it).")
def demo(mountpoint: Path | None, duration: float | None, no_tour: bool) -> None:
    """Start the local server with a sample project, mount it, and show what to try."""
    if mountpoint is not None and not mountpoint.is_dir():
        raise UsageError(f"mount point {mountpoint} does not exist: create it with mkdir -p")
    work = Path(tempfile.mkdtemp(prefix="dominofs-demo-"))
    os.chmod(work, 0o700)
    mnt = mountpoint or work / "mnt"
    mnt.mkdir(exist_ok=True)
    key = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOMINO")}
    env.update(
        DOMINOFS_SERVE_USERS=f"demo:{key}",
        DOMINO_USER_API_KEY=key,
        DOMINOFS_CACHE_DIR=str(work / "cache"),
        DOMINOFS_STATE_DIR=str(work / "state"),
    )
    server: subprocess.Popen[str] | None = None
    mounted = False
    previous = _trap_signals()
    try:
        server, url = _start_server(work / "server", env)
        env["DOMINO_API_HOST"] = url
        _seed(url, key)
        _mount(mnt, env)
        mounted = True
        _show(mnt, url)
        if not no_tour:
            _tour(mnt)
        _say_what_to_try(mnt)
        _wait(duration)
    except _Stop:
        click.echo("\nstopping…")
    finally:
        if mounted:
            _umount(mnt, env)
        if server is not None:
            _stop(server)
        _restore_signals(previous)
        shutil.rmtree(work, ignore_errors=True)
    click.echo("demo stopped: unmounted, uploads flushed, server stopped.")


def _trap_signals() -> dict[int, object]:
    def raise_stop(_sig: int, _frame: FrameType | None) -> None:
        raise _Stop

    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, raise_stop)
    return previous


def _restore_signals(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]


def _start_server(data: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "dominofs", "serve", "--data", str(data), "--port", "0",
           "--project", PROJECT]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    prefix = "dominofs serve: listening on "
    if not line.startswith(prefix):
        _stop(proc)
        raise DominoError("the local server did not start")
    url = line[len(prefix) :].strip()
    click.echo(f"local Domino server: {url} (data in {data})")
    return proc, url


def _seed(url: str, key: str) -> None:
    with DominoClient(url, key) as c:
        pc = c.project(PROJECT)
        for path, text in SAMPLE_FILES.items():
            data = text.encode()
            pc.upload(path, io.BytesIO(data), size=len(data))


def _mount(mnt: Path, env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "dominofs", "mount", PROJECT, str(mnt), "--poll-interval", "2",
           "--upload-delay", "0.5"]  # fmt: skip
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise DominoError(f"mount failed: {p.stderr.strip() or p.returncode}")


def _show(mnt: Path, url: str) -> None:
    click.echo(f"project {PROJECT} mounted at {mnt}\n")
    for root, dirs, files in os.walk(mnt):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(root, mnt)
        for name in sorted(files):
            path = name if rel == "." else f"{rel}/{name}"
            click.echo(f"  {os.stat(os.path.join(root, name)).st_size:>8}  {path}")
    click.echo("\n$ head -3 " + str(mnt / "data/points.csv"))
    with open(mnt / "data/points.csv") as f:
        for _ in range(3):
            click.echo("  " + f.readline().rstrip())


def _tour(mnt: Path) -> None:
    click.echo(f'\n$ echo \'{{"command": ["train.py"], "title": "fit"}}\' > {mnt}/.runs/start')
    try:
        with open(mnt / ".runs" / "start", "w") as f:
            f.write(json.dumps({"command": ["train.py"], "title": "fit"}))
        deadline = time.monotonic() + 60
        status = ""
        while time.monotonic() < deadline:
            run = json.loads((mnt / ".runs" / "latest.json").read_text())
            if run.get("status") != status:
                status = str(run.get("status"))
                click.echo(f"  .runs/latest.json: run {run.get('number')} is {status}")
            if run.get("isCompleted"):
                break
            time.sleep(0.5)
        log = (mnt / ".runs" / f"{run['id']}.log").read_text()
        click.echo("  its output: " + log.strip().splitlines()[-1] if log.strip() else "")
        metrics = mnt / "results" / "metrics.json"
        deadline = time.monotonic() + 15
        while not metrics.exists() and time.monotonic() < deadline:
            time.sleep(0.5)  # the mount sees the run's output commit at its next poll
        if metrics.exists():
            click.echo(f"$ cat {metrics}\n" + metrics.read_text())
    except (OSError, ValueError, KeyError) as exc:
        click.echo(f"  (tour step failed: {exc}; carry on by hand)")


def _say_what_to_try(mnt: Path) -> None:
    tips = [
        (f"ls -la {mnt}", "the project, listed from memory, bytes fetched only when read"),
        (f"vim {mnt}/train.py", "edit with any editor: the saved file is uploaded"),
        (f"cat {mnt}/.runs/latest.json", "the newest run, as the API reports it"),
        (f"echo train.py > {mnt}/.runs/start", "start a run; watch .runs/ and results/"),
        (f"cat {mnt}/.dominofs/status.json", "pending uploads, cache hits, reachability"),
    ]
    click.echo("\nTry, in another terminal:")
    for command, why in tips:
        click.echo(f"  $ {command}\n      {why}")
    click.echo("Press Ctrl-C to unmount (after pending uploads) and stop the server.")


def _wait(duration: float | None) -> None:
    if duration is not None:
        time.sleep(duration)
        return
    while True:
        time.sleep(3600)


def _umount(mnt: Path, env: dict[str, str]) -> None:
    p = subprocess.run([sys.executable, "-m", "dominofs", "umount", str(mnt)], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    if p.returncode != 0:
        click.echo(f"umount: {p.stderr.strip()}; forcing", err=True)
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, timeout=30)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


COMMANDS = [demo]
