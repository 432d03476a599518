"""`dominofs status`: every mount and sync of this user (CONTRACT §6).

Owns: reading the registry (status.collect()), printing it for people or as JSON, and --wait
(until nothing is pending, or --timeout). Must not talk to a server.
"""

from __future__ import annotations

import time
from typing import Any

import click

from .. import status as status_mod
from ..errors import DominoError
from .common import echo_json


class StatusTimeout(DominoError):
    """`status --wait` gave up with changes still pending."""

    exit_code = 1


def _pending(item: dict[str, Any]) -> int:
    value = item.get("pending_uploads", 0)
    return value if isinstance(value, int) else 0


def _size(n: object) -> str:
    value = float(n) if isinstance(n, int | float) else 0.0
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _describe(item: dict[str, Any]) -> list[str]:
    reach = item.get("server_reachable")
    server = (
        "server unreachable"
        if reach is False
        else "server reachable"
        if reach
        else "server unknown"
    )
    lines = [
        f"{item.get('kind')} {item.get('project')} at {item.get('path')} (pid {item.get('pid')}): "
        f"{item.get('state', '?')}, {_pending(item)} pending, {server}"
    ]
    for c in item.get("conflicts") or []:
        copy = f" -> {c.get('conflict_path')}" if c.get("conflict_path") else ""
        lines.append(f"  conflict: {c.get('path')}{copy}")
    for f in item.get("failed") or []:
        lines.append(f"  failed: {f.get('op')} {f.get('path')}: {f.get('error')}")
    held = item.get("held_deletes_count") or 0
    if held:
        lines.append(
            f"  {held} deletions held: {item.get('held_reason')}; "
            f"run: dominofs sync {item.get('project')} {item.get('path')} --confirm-deletes"
        )
    local = item.get("local_only")
    if isinstance(local, dict) and local.get("objects"):
        lines.append(
            f"  local only (never uploaded, kept here): {local.get('objects')} objects, "
            f"{_size(local.get('bytes'))}"
        )
    skipped = item.get("skipped_symlinks_count") or 0
    if skipped:
        why = (
            "a plain NAME.dominolink file takes the place of their link file"
            if item.get("links")
            else "not uploaded; dominofs sync --links carries them"
        )
        shown = item.get("skipped_symlinks") or []
        more = f", and {skipped - len(shown)} more" if skipped > len(shown) else ""
        lines.append(f"  {skipped} symlinks skipped ({why}): {', '.join(shown)}{more}")
    for p in item.get("deletions_kept_local") or []:
        lines.append(f"  deletion kept local (server has no DELETE): {p}")
    if item.get("last_error"):
        lines.append(f"  last error: {item['last_error']}")
    return lines


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--wait", is_flag=True, help="Return once nothing is pending anywhere.")
@click.option(
    "--timeout",
    default=None,
    type=click.FloatRange(0),
    help="With --wait: give up after this many seconds (exit 1).",
)
def status(as_json: bool, wait: bool, timeout: float | None) -> None:
    """Show every mount and sync: pending uploads, conflicts, deletions kept local, errors."""
    items = status_mod.collect()
    if wait:
        deadline = None if timeout is None else time.monotonic() + timeout
        while any(_pending(i) for i in items):
            if deadline is not None and time.monotonic() >= deadline:
                n = sum(_pending(i) for i in items)
                raise StatusTimeout(f"{n} changes still pending after {timeout:g}s")
            time.sleep(0.2)
            items = status_mod.collect()
    if as_json:
        echo_json(items)
        return
    if not items:
        click.echo("no dominofs mount or sync is running")
        return
    for item in items:
        for line in _describe(item):
            click.echo(line)


COMMANDS = [status]
