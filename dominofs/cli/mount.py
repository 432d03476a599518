"""`dominofs mount` and `dominofs umount` (CONTRACT §4).

Owns: the command line of a mount, building the client it hands to mount.py, and the background
mode: validate, start `python -m dominofs mount --foreground ...` as a detached child (the API key
through its environment, never argv; stderr to the mount's log file), and return once the mount
answers, or print the child's error and fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import click

from .. import mount as mount_mod
from ..api import DominoClient
from ..config import ensure_private_dir, parse_size
from ..errors import DominoError
from .common import (
    DEBUG_KEY,
    cache_options,
    parse_project,
    poll_option,
    server_options,
    settings,
    upload_delay_option,
)

READY_TIMEOUT = 60.0


class _Octal(click.ParamType):  # type: ignore[type-arg]
    """A file mode in octal (0644, 644, 0o644), permission bits only."""

    name = "mode"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().removeprefix("0o")
        try:
            mode = int(text, 8)
        except ValueError:
            self.fail(f"{value!r} is not an octal mode such as 0644", param, ctx)
        if not 0 <= mode <= 0o7777:
            self.fail(f"{value!r} is not a mode (0000 to 7777)", param, ctx)
        return mode


_OCTAL = _Octal()
_ID = click.IntRange(0, 2**32 - 2)


@click.command()
@click.argument("project")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--foreground", is_flag=True, help="Stay in the foreground (systemd Type=notify).")
@click.option("--read-only", is_flag=True, help="Refuse every write.")
@click.option("--commit", default=None, metavar="ID", help="Mount this commit (read-only).")
@poll_option("Seconds between checks for a new head commit; 0 = never.")
@upload_delay_option("Seconds after the last close before a file is uploaded.")
@click.option("--allow-other", is_flag=True, help="Let other users in (the kernel checks modes).")
@click.option(
    "--uid", type=click.IntRange(0, 2**32 - 2), default=None, help="Owner of server files."
)
@click.option(
    "--gid", type=click.IntRange(0, 2**32 - 2), default=None, help="Group of server files."
)
@click.option("--umask", type=_OCTAL, default=None, help="Mask for the modes of server files.")
@click.option("--file-mode", type=_OCTAL, default=None, help="Mode of server files (e.g. 0644).")
@click.option("--dir-mode", type=_OCTAL, default=None, help="Mode of server folders (e.g. 0755).")
@click.option("--links", is_flag=True, help="Keep symlinks on the server as NAME.dominolink.")
@click.option(
    "--prefetch",
    type=click.IntRange(0, 256),
    default=16,
    show_default=True,
    help="Files fetched at once ahead of a program reading a folder's files in turn; 0 = off.",
)
@click.option(
    "--prefetch-size",
    default="64MiB",
    show_default=True,
    metavar="SIZE",
    help="At most this much fetched ahead and not read yet.",
)
@cache_options
@server_options
@click.pass_context
def mount(
    ctx: click.Context,
    project: str,
    mountpoint: Path,
    foreground: bool,
    read_only: bool,
    commit: str | None,
    poll_interval: float,
    upload_delay: float,
    allow_other: bool,
    uid: int | None,
    gid: int | None,
    umask: int | None,
    file_mode: int | None,
    dir_mode: int | None,
    links: bool,
    prefetch: int,
    prefetch_size: str,
    cache_dir: Path | None,
    cache_size: str | None,
) -> None:
    """Mount OWNER/PROJECT at MOUNTPOINT (an empty folder)."""
    s = settings(ctx, cache_dir=cache_dir, cache_size=cache_size)
    ref = parse_project(project)
    mountpoint = Path(os.path.abspath(mountpoint))
    options = mount_mod.MountOptions(
        mountpoint=mountpoint,
        state_dir=mount_mod.mount_state_dir(s.state_dir, s.host, ref),
        cache_dir=s.cache_dir,
        cache_size=s.cache_size,
        read_only=read_only,
        commit=commit,
        poll_interval=poll_interval,
        upload_delay=upload_delay,
        wait_timeout=max(30.0, 2 * s.read_timeout),
        debug=bool(ctx.meta.get(DEBUG_KEY)),
        allow_other=allow_other,
        uid=uid,
        gid=gid,
        umask=umask,
        file_mode=file_mode,
        dir_mode=dir_mode,
        links=links,
        prefetch=prefetch,
        prefetch_size=parse_size(prefetch_size),
    )
    client = DominoClient.from_settings(s)
    ctx.call_on_close(client.close)
    remote = client.project(ref)
    if foreground:
        mount_mod.run(remote, options)
        return
    mount_mod.preflight(remote, options)
    state_dir = ensure_private_dir(options.state_dir)
    ensure_private_dir(s.cache_dir)
    log_path = state_dir / "mount.log"
    argv = [sys.executable, "-m", "dominofs", "-v", "mount", "--foreground",
            "--host", s.host, str(ref), str(mountpoint),
            "--poll-interval", str(poll_interval), "--upload-delay", str(upload_delay),
            "--cache-dir", str(s.cache_dir), "--cache-size", str(s.cache_size)]  # fmt: skip
    if read_only:
        argv.append("--read-only")
    if commit:
        argv += ["--commit", commit]
    if allow_other:
        argv.append("--allow-other")
    if links:
        argv.append("--links")
    argv += ["--prefetch", str(prefetch), "--prefetch-size", prefetch_size]
    for flag, value in (("--uid", uid), ("--gid", gid)):
        if value is not None:
            argv += [flag, str(value)]
    for flag, value in (("--umask", umask), ("--file-mode", file_mode), ("--dir-mode", dir_mode)):
        if value is not None:
            argv += [flag, f"{value:04o}"]
    env = dict(os.environ)
    env["DOMINO_USER_API_KEY"] = s.api_key  # through the environment: argv is public
    env["DOMINOFS_STATE_DIR"] = str(s.state_dir)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    start_offset = os.lseek(fd, 0, os.SEEK_END)
    try:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=fd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        code = child.poll()
        if code is not None:
            raise DominoError(_last_error(log_path, start_offset) or f"the mount exited ({code})")
        if _answers(mountpoint):
            click.echo(f"mounted {ref} at {mountpoint} (log: {log_path})", err=True)
            return
        if time.monotonic() > deadline:
            child.kill()
            child.wait(10)
            if mount_mod.is_stale(mountpoint):
                mount_mod.cleanup_stale(mountpoint)
            raise DominoError(
                f"the mount did not answer within {READY_TIMEOUT:.0f}s; see {log_path}"
            )
        time.sleep(0.05)


def _answers(mountpoint: Path) -> bool:
    try:
        if not os.path.ismount(mountpoint):
            return False
        os.statvfs(mountpoint)  # reaches the daemon (stat may come from the kernel's cache)
        os.stat(mountpoint)
    except OSError:
        return False
    return True


def _last_error(log_path: Path, offset: int) -> str | None:
    try:
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    prefix = "dominofs: error: "
    for line in reversed(lines):
        if line.startswith(prefix):
            return line[len(prefix) :]
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return None


@click.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to wait for queued uploads before refusing.",
)
@click.option("--force", is_flag=True, help="Unmount even with uploads pending (kept queued).")
def umount(mountpoint: Path, timeout: float, force: bool) -> None:
    """Wait for MOUNTPOINT's queued uploads, unmount it and wait for its process to finish."""
    from ..config import load_settings

    mountpoint = Path(os.path.abspath(mountpoint))
    pending = mount_mod.wait_drained(mountpoint, timeout)
    if pending:
        if not force:
            raise DominoError(
                f"{mountpoint}: not unmounted, {len(pending)} change(s) not on the server yet "
                f"({', '.join(pending[:5])}{', ...' if len(pending) > 5 else ''}); "
                "wait, or use --force (they stay queued for the next mount)"
            )
        click.echo(
            f"unmounting with {len(pending)} change(s) still queued for the next mount", err=True
        )

    try:
        state_root = load_settings(require_key=False).state_dir
    except DominoError:
        state_root = None
    mount_mod.unmount(mountpoint, state_root=state_root)


COMMANDS = [mount, umount]
