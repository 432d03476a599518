"""`dominofs runs list|show|log|start|wait`: runs from the command line."""

from __future__ import annotations

import shlex
import time

import click

from ..api import ProjectClient
from ..errors import DominoError
from ..models import Run, RunRequest
from .common import echo_json, project_client, server_options

EXIT_RUN_FAILED = 8


@click.group("runs")
def runs() -> None:
    """List, inspect, start and follow runs."""


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _duration(run: Run) -> str:
    if not run.started_ms:
        return "-"
    end = run.completed_ms or int(time.time() * 1000)
    secs = max(0, (end - run.started_ms) // 1000)
    return f"{secs // 3600}:{secs // 60 % 60:02d}:{secs % 60:02d}"


@runs.command("list")
@server_options
@click.argument("project")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-n", "limit", default=20, show_default=True, help="How many, newest first.")
@click.pass_context
def list_(ctx: click.Context, project: str, as_json: bool, limit: int) -> None:
    """The project's runs, newest first."""
    items = project_client(ctx, project).list_runs()[:limit]
    if as_json:
        echo_json([dict(r.raw) for r in items])
        return
    click.echo(f"{'#':>4}  {'STATUS':<10}  {'STARTED':<19}  {'DURATION':>8}  TITLE / ID")
    for r in items:
        title = r.title or " ".join(r.raw.get("command") or []) or ""
        number = "-" if r.number is None else str(r.number)
        click.echo(
            f"{number:>4}  {r.status:<10}  {_when(r.started_ms or r.queued_ms):<19}  "
            f"{_duration(r):>8}  {title}  ({r.id})"
        )


@runs.command("show")
@server_options
@click.argument("project")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="The API's JSON (the default).")
@click.pass_context
def show(ctx: click.Context, project: str, run_id: str, as_json: bool) -> None:
    """One run, as the API gives it."""
    echo_json(dict(project_client(ctx, project).get_run(run_id).raw))


@runs.command("log")
@server_options
@click.argument("project")
@click.argument("run_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run ends.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between polls.")
@click.pass_context
def log_(ctx: click.Context, project: str, run_id: str, follow: bool, interval: float) -> None:
    """A run's setup log and output."""
    pc = project_client(ctx, project)
    shown = 0
    while True:
        run = pc.get_run(run_id) if follow else None
        out = pc.run_log(run_id)
        text = out.stdout if follow else (out.setup + out.stdout)
        click.echo(text[shown:], nl=False)
        shown = len(text)
        if not follow or (run is not None and run.finished):
            if follow:  # output may have grown between the status and the log
                click.echo(pc.run_log(run_id).stdout[shown:], nl=False)
            return
        time.sleep(interval)


def follow_run(pc: ProjectClient, run_id: str, *, interval: float, timeout: float | None) -> Run:
    """Print each status change as it happens; return the finished run."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    while True:
        run = pc.get_run(run_id)
        if run.status != last:
            click.echo(f"{time.strftime('%H:%M:%S')}  {run_id}  {run.status}", err=True)
            last = run.status
        if run.finished:
            return run
        if deadline is not None and time.monotonic() > deadline:
            raise DominoError(f"run {run_id} still {run.status} after {timeout:.0f}s")
        time.sleep(interval)


@runs.command("start")
@server_options
@click.argument("project")
@click.argument("command", nargs=-1, required=True)
@click.option("--title", default=None, help="A title for the run.")
@click.option("--tier", default=None, help="Hardware tier name.")
@click.option("--direct", is_flag=True, help="Run COMMAND through the shell.")
@click.option("--commit", default=None, help="Run this commit instead of the newest.")
@click.option("--wait", "wait_", is_flag=True, help="Follow it; exit 0 only if it Succeeded.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between polls.")
@click.pass_context
def start(
    ctx: click.Context,
    project: str,
    command: tuple[str, ...],
    title: str | None,
    tier: str | None,
    direct: bool,
    commit: str | None,
    wait_: bool,
    interval: float,
) -> None:
    """Start a run of COMMAND [ARG]... (e.g. train.py --epochs 3)."""
    pc = project_client(ctx, project)
    cmd = (shlex.join(command),) if direct else command
    run_id = pc.start_run(
        RunRequest(command=cmd, is_direct=direct, commit_id=commit, title=title, tier=tier)
    )
    click.echo(run_id)
    if wait_:
        run = follow_run(pc, run_id, interval=interval, timeout=None)
        ctx.exit(0 if run.status == "Succeeded" else EXIT_RUN_FAILED)


@runs.command("wait")
@server_options
@click.argument("project")
@click.argument("run_id")
@click.option("--timeout", default=None, type=float, help="Give up after this many seconds.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between polls.")
@click.pass_context
def wait(
    ctx: click.Context, project: str, run_id: str, timeout: float | None, interval: float
) -> None:
    """Follow a run until it ends; exit 0 only if it Succeeded."""
    run = follow_run(project_client(ctx, project), run_id, interval=interval, timeout=timeout)
    ctx.exit(0 if run.status == "Succeeded" else EXIT_RUN_FAILED)


COMMANDS = [runs]
