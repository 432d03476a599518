"""The mount's lifecycle: options, checks before mounting, readiness, signals, unmounting.

Owns: where a mount keeps its state (listing, log, pid file, registry entry), validating the
mount point (including cleaning up a stale "Transport endpoint is not connected" one left by a
killed mount), the first listing (from the server, or the persisted one when it is away),
wiring cache + runs + vfs + fs together for one mount, systemd readiness (one sd_notify
datagram each for READY=1 and STOPPING=1), raising the mount's read-ahead, and unmounting.
Must not build a client (cli hands down a `Remote`), import requests or talk HTTP itself.
SIGINT and SIGTERM are libfuse's: they end the FUSE loop, which unmounts; we clean up after.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import status as status_mod
from .cache import BlobCache
from .config import ensure_private_dir
from .errors import DominoError, NotFound, Unreachable, UsageError
from .ignore import IGNORE_FILE, IgnoreRules
from .models import ProjectRef, Remote
from .outbox import Outbox
from .runsdir import RunsDir
from .tree import Tree
from .vfs import VFS

log = logging.getLogger(__name__)

BLOB_CHUNK = 512 * 1024
READ_AHEAD_KB = 1024


@dataclass(frozen=True)
class MountOptions:
    """Everything one mount needs besides the Remote."""

    mountpoint: Path
    state_dir: Path
    cache_dir: Path
    cache_size: int
    read_only: bool = False
    commit: str | None = None
    poll_interval: float = 15.0
    upload_delay: float = 1.0
    wait_timeout: float = 60.0
    debug: bool = False
    allow_other: bool = False
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    file_mode: int | None = None
    dir_mode: int | None = None
    links: bool = False
    prefetch: int = 16
    prefetch_size: int = 64 << 20

    @property
    def listing_path(self) -> Path:
        if self.commit:
            return self.state_dir / f"listing-{_safe(self.commit)[:40]}.json"
        return self.state_dir / "listing.json"


# -- state -------------------------------------------------------------------------------


def mount_state_dir(state_root: Path, host: str, project: ProjectRef) -> Path:
    """The per-project state dir: <state>/mounts/<host-port>_<owner>_<name>-<hash> (not created)."""
    bare = re.sub(r"^https?://", "", host)
    digest = hashlib.sha1(f"{host}|{project}".encode(), usedforsecurity=False).hexdigest()[:8]
    return Path(state_root) / "mounts" / f"{_safe(bare)}_{project.owner}_{project.name}-{digest}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def registry_entries(state_root: Path) -> list[dict[str, object]]:
    """Every mount this user started that may still run: {mountpoint, pid, project, host}."""
    entries: list[dict[str, object]] = []
    for path in sorted((Path(state_root) / "mounts").glob("*/mount.json")):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                data["state_dir"] = str(path.parent)
                entries.append(data)
    return entries


# -- the mount point ---------------------------------------------------------------------


def is_stale(path: Path) -> bool:
    """True when `path` is a dead FUSE mount ("Transport endpoint is not connected")."""
    try:
        # statfs always reaches the daemon; stat of the root may be answered from the kernel's
        # attribute cache even when the daemon is gone.
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def fusermount(path: Path, *, lazy: bool = False) -> tuple[bool, str]:
    """Run `fusermount3 -u[z] path`; returns (ok, its one-line message)."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    try:
        proc = subprocess.run(
            [tool, "-uz" if lazy else "-u", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    message = " ".join((proc.stderr or proc.stdout).split())
    return proc.returncode == 0, message


def cleanup_stale(path: Path) -> None:
    """Unmount a dead mount left by a killed process (plain first, then lazy).

    Raises:
        DominoError: it stays dead.
    """
    log.warning("%s: cleaning up a mount left by a process that died", path)
    fusermount(path)
    if is_stale(path):
        fusermount(path, lazy=True)
    if is_stale(path):
        raise DominoError(f"{path} is a dead mount and fusermount3 -uz could not remove it")


def lock_state(state_dir: Path, project: ProjectRef) -> int:
    """Take the project's state (its local layer and queue have one owner: one writable mount
    per project at a time). Returns the fd that holds the lock until it is closed.

    Raises:
        UsageError: another mount holds it (named, with what to do).
    """
    fd = os.open(ensure_private_dir(state_dir) / "mount.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        where = "another mount point"
        with contextlib.suppress(OSError, ValueError, TypeError):
            where = str(json.loads((state_dir / "mount.json").read_text())["mountpoint"])
        raise UsageError(
            f"{project} is already mounted at {where}: one writable mount per project "
            "(unmount it, or mount this one --read-only)"
        ) from None
    return fd


FUSE_CONF = Path("/etc/fuse.conf")


def check_allow_other(conf: Path = FUSE_CONF, *, euid: int | None = None) -> None:
    """`--allow-other` needs `user_allow_other` in /etc/fuse.conf unless we are root.

    Raises:
        UsageError: it is missing, with what to add.
    """
    if (os.geteuid() if euid is None else euid) == 0:
        return
    try:
        lines = conf.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    if not any(line.split("#", 1)[0].strip() == "user_allow_other" for line in lines):
        raise UsageError(
            f"--allow-other needs the line user_allow_other in {conf} (add it as root)"
        )


def check_mountpoint(path: Path) -> None:
    """Make sure `path` can be mounted on: an existing, empty folder that is not mounted.

    A stale mount left by a killed dominofs is cleaned up first.

    Raises:
        UsageError: missing, not a folder, not empty, or already mounted.
    """
    if is_stale(path):
        cleanup_stale(path)
    if not path.exists():
        raise UsageError(f"mount point {path} does not exist: create it with mkdir {path}")
    if not path.is_dir():
        raise UsageError(f"mount point {path} is not a folder")
    if os.path.ismount(path):
        raise UsageError(f"{path} is already mounted: run dominofs umount {path} first")
    try:
        if any(os.scandir(path)):
            raise UsageError(f"mount point {path} is not empty: mount on an empty folder")
    except PermissionError:
        raise UsageError(f"mount point {path} cannot be read") from None


def unmount(path: Path, *, state_root: Path | None = None, timeout: float = 30.0) -> None:
    """Unmount `path` and wait for its mount process (if known) to finish.

    Raises:
        UsageError: nothing is mounted there. DominoError: fusermount3 refused (busy).
    """
    path = Path(os.path.abspath(path))
    if is_stale(path):
        cleanup_stale(path)
        return
    if not os.path.ismount(path):
        raise UsageError(f"{path} is not mounted")
    ok, message = fusermount(path)
    if not ok:
        raise DominoError(f"cannot unmount {path}: {message or 'fusermount3 failed'}")
    if state_root is None:
        return
    for entry in registry_entries(state_root):
        if entry.get("mountpoint") == str(path) and isinstance(entry.get("pid"), int):
            _wait_pid_gone(int(entry["pid"]), timeout)  # type: ignore[call-overload]


def wait_drained(path: Path, timeout: float) -> list[str]:
    """Wait (up to `timeout` s) for the mount at `path` to have nothing queued; returns what
    is still pending or failed (empty when drained or when the mount has no status)."""
    status = Path(path) / ".dominofs" / "status.json"
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = json.loads(status.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        left = [f"{e.get('op')} {e.get('path')}" for e in data.get("pending") or []]
        left += [
            f"{e.get('op')} {e.get('path')} ({e.get('error')})" for e in data.get("failed") or []
        ]
        if not left and not data.get("pending_uploads"):
            return []
        if time.monotonic() >= deadline:
            return left or [f"{data.get('pending_uploads')} uploads"]
        time.sleep(0.1)


def _wait_pid_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        if _exited(pid):
            return
        time.sleep(0.05)


def _exited(pid: int) -> bool:
    """True for a process that ended and waits for its parent to reap it (a zombie, which
    kill(pid, 0) still finds): a mount started by a script that has not waited for it yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


# -- the first listing -------------------------------------------------------------------


def initial_tree(remote: Remote, options: MountOptions) -> tuple[Tree, bool]:
    """The tree to mount and whether the server answered.

    A commit's listing never changes, so the saved listing is used when it is of the commit to
    mount (the one `preflight` saved, or the last mount's): then the server is asked for the
    head commit only (which checks the key and the project), not for the files list again.

    Raises:
        AuthError, Forbidden, NotFound: the key or project is wrong (never masked by a saved
        listing). Unreachable: the server is away and no listing is saved.
    """
    try:
        head = _head(remote)  # checks the key and the project, even for a saved listing
        commit = options.commit or head
        saved = Tree.load(options.listing_path)
        if saved is not None and saved.commit_id == commit:
            remote.learn(saved.commit_id, saved.files.values())  # it was never listed here
            return saved, True
        return Tree(commit, remote.list_files(commit)), True
    except Unreachable as exc:
        saved = Tree.load(options.listing_path)
        if saved is None:
            raise Unreachable(f"{exc}; and no listing of {remote.project} is saved here") from None
        log.warning("%s; mounting the saved listing of commit %s", exc, saved.commit_id[:12])
        remote.learn(saved.commit_id, saved.files.values())
        return saved, False


def _head(remote: Remote) -> str:
    commits = remote.commits()
    if not commits:
        raise NotFound(f"{remote.host} ({remote.project}): the project has no commit")
    return commits[0]


def preflight(remote: Remote, options: MountOptions) -> None:
    """What a background mount checks before it starts its child (key, project, mount point).

    Asks for the head commit only (the child lists it); a pinned commit is listed here, which
    checks it exists, and saved for the child to use.

    Raises:
        the errors of initial_tree, UsageError for the mount point.
    """
    check_mountpoint(options.mountpoint)
    if options.allow_other:
        check_allow_other()
    if not (options.read_only or options.commit):
        os.close(lock_state(options.state_dir, remote.project))
    try:
        if options.commit:
            tree, reachable = initial_tree(remote, options)
            if reachable:
                ensure_private_dir(options.state_dir)
                with contextlib.suppress(OSError):
                    tree.save(options.listing_path)
        else:
            _head(remote)
    except Unreachable as exc:
        if Tree.load(options.listing_path) is None:
            raise Unreachable(f"{exc}; and no listing of {remote.project} is saved here") from None


def _ignore_rules(cache: BlobCache, tree: Tree) -> IgnoreRules:
    """The project's `.dominoignore` (read through the cache) plus the built-in rules."""
    f = tree.file(IGNORE_FILE)
    if f is None or f.size > 1 << 20:
        return IgnoreRules()
    try:
        reader = cache.open(f.key, f.size)
        try:
            data = reader.read(f.size, 0)
        finally:
            reader.close()
    except DominoError as exc:
        log.warning("cannot read %s (%s); using only the built-in rules", IGNORE_FILE, exc)
        return IgnoreRules()
    return IgnoreRules(data.decode("utf-8", "replace").splitlines())


# -- systemd and the kernel --------------------------------------------------------------


def sd_notify(message: str) -> None:
    """Send one datagram to $NOTIFY_SOCKET (systemd Type=notify); quiet when unset."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        log.warning("sd_notify %s failed: %s", message, exc.strerror)


def raise_read_ahead(mountpoint: Path, kb: int = READ_AHEAD_KB) -> None:
    """Let the kernel send reads of up to `kb` KiB to the mount; quiet when not permitted."""
    try:
        dev = os.stat(mountpoint).st_dev
        path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        if int(path.read_text().strip()) < kb:
            path.write_text(str(kb))
    except (OSError, ValueError) as exc:
        log.debug("cannot raise read_ahead_kb: %s", exc)


# -- running -----------------------------------------------------------------------------


def run(remote: Remote, options: MountOptions) -> None:
    """Mount in this process and serve until unmounted (SIGINT/SIGTERM unmount cleanly).

    Raises:
        DominoError: before mounting (bad key, unknown project, bad mount point, offline with
        nothing saved); RuntimeError from libfuse when the mount itself fails.
    """
    from . import fs  # loads libfuse: only when really mounting

    mountpoint = Path(os.path.abspath(options.mountpoint))
    state_dir = ensure_private_dir(options.state_dir)
    check_mountpoint(mountpoint)
    if options.allow_other:
        check_allow_other()
    tree, reachable = initial_tree(remote, options)
    cache = BlobCache(
        options.cache_dir,
        size_limit=options.cache_size,
        fetch=lambda key, offset: remote.iter_blob(key, offset=offset, chunk_size=BLOB_CHUNK),
        wait_timeout=options.wait_timeout,
    )
    writable = not (options.read_only or options.commit)
    lock_fd = lock_state(state_dir, remote.project) if writable else -1
    # The queue a killed or unreachable previous run left is resumed before anything is served.
    outbox = Outbox(state_dir / "outbox", remote, max_backoff=10.0) if writable else None
    vfs = VFS(
        remote,
        cache,
        tree,
        runs=RunsDir(remote),
        listing_path=options.listing_path,
        read_only=options.read_only,
        pinned=options.commit is not None,
        poll_interval=options.poll_interval,
        reachable=reachable,
        outbox=outbox,
        upload_delay=options.upload_delay,
        layer_dir=state_dir / "layer",
        ignore=_ignore_rules(cache, tree) if writable else None,
        links=options.links,
        uid=options.uid,
        gid=options.gid,
        umask=options.umask,
        file_mode=options.file_mode,
        dir_mode=options.dir_mode,
        prefetch_requests=options.prefetch,
        prefetch_bytes=options.prefetch_size,
    )
    if reachable:
        vfs.persist(tree)
    status_file = state_dir / "status.json"
    status_stop = threading.Event()

    def write_status() -> None:
        while True:
            with contextlib.suppress(Exception):
                vfs.tick()
                status_mod.write_status(
                    status_file, {**vfs.status(fresh=False), "state": "mounted"}
                )
            if status_stop.wait(1.0):
                return

    registry = state_dir / "mount.json"
    pid_file = state_dir / "mount.pid"
    stopping = threading.Event()
    destroyed_flag = threading.Event()

    def ready() -> None:
        deadline = time.monotonic() + 30
        while not stopping.is_set() and time.monotonic() < deadline:
            if os.path.ismount(mountpoint):
                raise_read_ahead(mountpoint)
                sd_notify("READY=1")
                log.info("mounted %s at %s (commit %s)", remote.project, mountpoint, tree.commit_id)
                return
            time.sleep(0.02)

    def destroyed() -> None:
        destroyed_flag.set()
        stopping.set()
        sd_notify("STOPPING=1")

    pid_file.write_text(f"{os.getpid()}\n")
    registry.write_text(
        json.dumps(
            {
                "mountpoint": str(mountpoint),
                "pid": os.getpid(),
                "project": str(remote.project),
                "host": remote.host,
            }
        )
    )
    watcher = threading.Thread(target=ready, name="ready", daemon=True)
    watcher.start()
    if outbox is not None:
        outbox.start()
    status_mod.register("mount", str(remote.project), mountpoint, status_file)
    status_thread = threading.Thread(target=write_status, name="status", daemon=True)
    status_thread.start()
    vfs.start()
    try:
        fs.mount(
            vfs,
            str(mountpoint),
            on_destroy=destroyed,
            debug=options.debug,
            allow_other=options.allow_other,
        )
    except RuntimeError as exc:
        if not destroyed_flag.is_set():
            raise DominoError(f"libfuse could not mount {mountpoint} (error {exc})") from None
        # libfuse reports the signal that ended the loop (SIGTERM, SIGINT) as an error: a clean
        # unmount is not one.
        log.info("stopped by a signal (libfuse status %s)", exc)
    finally:
        stopping.set()
        vfs.close()
        if outbox is not None:
            # What is in flight finishes; the rest stays queued for the next mount.
            outbox.stop(timeout=15)
            status_stop.set()
            status_thread.join(5)
            with contextlib.suppress(Exception):
                status_mod.write_status(status_file, {**vfs.status(), "state": "unmounted"})
            outbox.close()
        status_stop.set()
        status_mod.unregister("mount")
        cache.close()
        with contextlib.suppress(OSError):
            pid_file.unlink()
        with contextlib.suppress(OSError):
            registry.unlink()
        if lock_fd >= 0:
            os.close(lock_fd)
        log.info("unmounted %s", mountpoint)
