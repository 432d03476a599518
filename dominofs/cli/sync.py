"""`dominofs sync`: keep a local folder and a project in step (CONTRACT §5).

Owns: the command's options, building the client (the key comes from env/config/key file,
never argv), signal handling (SIGTERM/SIGINT finish the upload in flight and exit 0), and
handing a held-deletes confirmation to a sync already running on the folder.
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

import click

from ..errors import Unreachable
from ..sync import SyncService, request_confirm_deletes
from .common import (
    parse_project,
    poll_option,
    project_client,
    seconds_option,
    server_options,
    upload_delay_option,
)


@click.command("sync")
@server_options
@click.argument("project")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--once", is_flag=True, help="Reconcile both ways and exit (0 when in step).")
@click.option("--pull", is_flag=True, help="Download the project into an empty DIR first.")
@click.option(
    "--links",
    is_flag=True,
    help="Carry symlinks as NAME.dominolink files holding their target, as the mount does.",
)
@upload_delay_option("Seconds a file must be quiet before it is uploaded.", hi=3600)
@poll_option("Seconds between checks for remote changes.", lo=0.5)
@click.option(
    "--confirm-deletes", is_flag=True, help="Send the deletions the mass-delete guard is holding."
)
@seconds_option(
    "--max-backoff",
    10.0,
    "Longest wait between retries while the server is down.",
    lo=0.1,
    hidden=True,
)
@seconds_option(
    "--once-timeout",
    300.0,
    "With --once: give up waiting for the queue after this many seconds.",
    lo=1,
    hidden=True,
)
@click.pass_context
def sync(
    ctx: click.Context,
    project: str,
    directory: Path,
    once: bool,
    pull: bool,
    links: bool,
    upload_delay: float,
    poll_interval: float,
    confirm_deletes: bool,
    max_backoff: float,
    once_timeout: float,
) -> None:
    """Keep DIR and OWNER/PROJECT in step: watch, upload changes, download remote ones."""
    parse_project(project)
    root = directory.expanduser().absolute()
    if confirm_deletes and root.is_dir():
        pid = request_confirm_deletes(root)
        if pid is not None:
            click.echo(f"dominofs: asked the sync running on {root} (pid {pid}) to send its "
                       "held deletions")  # fmt: skip
            return
    remote = project_client(ctx, project)
    try:
        remote.check()
    except Unreachable:
        if once or pull:
            raise
        click.echo(f"dominofs: warning: cannot reach {remote.host}; changes are queued until "
                   "it answers", err=True)  # fmt: skip
    service = SyncService(
        root,
        remote,
        upload_delay=upload_delay,
        poll_interval=poll_interval,
        confirm_deletes=confirm_deletes,
        pull=pull,
        links=links,
        max_backoff=max_backoff,
    )
    if once:
        service.run_once(timeout=once_timeout)
        return

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = service.run()
    if code:
        ctx.exit(code)


COMMANDS = [sync]
