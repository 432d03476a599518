"""`dominofs serve`: the local Domino v1 server (CONTRACT §3)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError


@click.command()
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where projects, commits, blobs and runs are kept.",
)
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=0,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port; 0 picks a free one.",
)
@click.option(
    "--user",
    "users",
    multiple=True,
    metavar="NAME:KEY",
    help="A user and their API key (repeatable). Argv is visible to every local user: "
    "only for throwaway test keys.",
)
@click.option(
    "--users-file",
    "users_files",
    multiple=True,
    metavar="PATH",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file of NAME:KEY lines, mode 0600 (repeatable). Users are also read from "
    "DOMINOFS_SERVE_USERS (NAME:KEY,NAME:KEY) when set.",
)
@click.option(
    "--project",
    "projects",
    multiple=True,
    metavar="OWNER/NAME",
    help="Create this project if missing (repeatable).",
)
@click.option("--no-delete", is_flag=True, help="Answer DELETE with 405, like the real v1 API.")
@click.option(
    "--no-v1-blobs",
    is_flag=True,
    help="Answer the deprecated v1 blob route with 404, like a deployment that has dropped it "
    "(files are then read by path through the content route).",
)
@click.option(
    "--run-time-limit",
    default=3600.0,
    show_default=True,
    type=float,
    help="Seconds before a run is stopped.",
)
@click.option("--faults", default=None, metavar="SPEC", help="Inject faults (testing).")
def serve(
    data_dir: Path,
    bind: str,
    port: int,
    users: tuple[str, ...],
    users_files: tuple[Path, ...],
    projects: tuple[str, ...],
    no_delete: bool,
    no_v1_blobs: bool,
    run_time_limit: float,
    faults: str | None,
) -> None:
    """Run the local Domino v1 server on loopback (development and tests)."""
    from .. import server  # the server is only loaded by the commands that start it
    from ..server.users import collect_users, parse_user

    try:
        pairs = collect_users(
            cli_users=[parse_user(item, where="--user") for item in users],
            users_files=users_files,
        )
        server.serve(
            data_dir=data_dir,
            bind=bind,
            port=port,
            users=pairs,
            projects=list(projects),
            no_delete=no_delete,
            no_v1_blobs=no_v1_blobs,
            run_time_limit=run_time_limit,
            faults=faults,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


COMMANDS = [serve]
