"""The one test harness for real FUSE mounts, and the one way tests wait for a condition.

`start_mount` starts a mount command in its own process (its own session, so its own process
group), waits until the mount answers and returns a `Mount`; `stop_mount` unmounts it
(`fusermount3 -u`, then `-uz`), waits for the process, and kills its process group if it does
not end. A mount that fails to answer is stopped before the error is raised.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and (
        subprocess.run(["which", "fusermount3"], capture_output=True, check=False).returncode == 0
    )


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll `cond` until it returns something truthy (never a fixed sleep); an OSError from
    `cond` counts as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except OSError as exc:
            last = exc
        if last and not isinstance(last, BaseException):
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or cond}: last={last!r}")


@dataclass
class Mount:
    path: Path
    proc: subprocess.Popen[bytes] | None
    log: Path

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def answers(path: Path) -> bool:
    try:
        # statvfs reaches the daemon: a dead mount fails it with ENOTCONN.
        return os.path.ismount(path) and os.statvfs(path) is not None
    except OSError:
        return False


def force_unmount(path: Path) -> None:
    for flag in ("-u", "-uz"):
        try:
            os.statvfs(path)
            if not os.path.ismount(path):
                return
        except OSError:
            pass  # ENOTCONN: a dead mount, unmount it
        subprocess.run(["fusermount3", flag, str(path)], capture_output=True, check=False)


def start_mount(
    argv: Sequence[str],
    path: Path,
    log: Path,
    env: dict[str, str],
    *,
    wait: bool = True,
    timeout: float = 30.0,
) -> Mount:
    """Run `argv` (a foreground mount of `path`) in its own process group, its stderr to `log`;
    with `wait`, return only once the mount answers (stopping it and failing otherwise)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise  # else a dead mount (kill -9) is there: the new mount cleans it up
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            list(argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fh,
            start_new_session=True,
        )  # fmt: skip
    m = Mount(path, proc, log)
    if wait:
        deadline = time.monotonic() + timeout
        while not answers(path):
            failure = None
            if proc.poll() is not None:
                failure = f"mount exited {proc.returncode}"
            elif time.monotonic() > deadline:
                failure = "mount did not answer"
            if failure is not None:
                stop_mount(m)
                raise AssertionError(f"{failure}: {m.log_text()}")
            time.sleep(0.05)
    return m


def stop_mount(m: Mount) -> None:
    """Unmount (-u, then -uz), wait for the process, kill its process group if it lingers."""
    force_unmount(m.path)
    proc = m.proc
    if proc is None:
        return
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        pass
    try:  # the mount ran in its own session: nothing of its group may outlive the test
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(10)
        force_unmount(m.path)
