"""What every command shares: server options, settings, the client, exit codes, output helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..api import DominoClient, ProjectClient
from ..config import Settings, load_settings
from ..errors import UsageError
from ..models import ProjectRef

F = TypeVar("F", bound=Callable[..., Any])

DEBUG_KEY = "dominofs.debug"
_HOST_KEY = "dominofs.host"
_KEYFILE_KEY = "dominofs.api_key_file"

EXIT_USAGE = 2
EXIT_INTERNAL = 70


def _store(key: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is not None:
            ctx.meta[key] = value
        return value

    return callback


def server_options(func: F) -> F:
    """Add --host and --api-key-file (never --api-key: argv is visible to every user)."""
    func = click.option(
        "--api-key-file",
        type=click.Path(dir_okay=False),
        expose_value=False,
        callback=_store(_KEYFILE_KEY),
        help="File holding the API key (mode 0600). Default: $DOMINO_USER_API_KEY or config.",
    )(func)
    func = click.option(
        "--host",
        expose_value=False,
        callback=_store(_HOST_KEY),
        help="Domino server URL. Default: $DOMINO_API_HOST or the config file.",
    )(func)
    return func


def seconds_option(
    flag: str,
    default: float,
    help: str,
    *,
    lo: float = 0,
    hi: float | None = None,
    hidden: bool = False,
) -> Callable[[F], F]:
    """A float option in seconds within [lo, hi], its default shown in --help."""

    def decorate(func: F) -> F:
        return click.option(
            flag,
            default=default,
            show_default=True,
            hidden=hidden,
            type=click.FloatRange(lo, hi),
            help=help,
        )(func)

    return decorate


def poll_option(help: str, *, lo: float = 0) -> Callable[[F], F]:
    """--poll-interval: seconds between checks for remote changes (default 15)."""
    return seconds_option("--poll-interval", 15.0, help, lo=lo)


def upload_delay_option(help: str, *, hi: float | None = None) -> Callable[[F], F]:
    """--upload-delay: seconds a closed file waits before it is uploaded (default 1)."""
    return seconds_option("--upload-delay", 1.0, help, hi=hi)


def cache_options(func: F) -> F:
    """Add --cache-dir and --cache-size (the blob cache's folder and size limit)."""
    func = click.option(
        "--cache-size", default=None, metavar="SIZE", help="Cache size, e.g. 10GiB."
    )(func)
    func = click.option(
        "--cache-dir",
        default=None,
        type=click.Path(file_okay=False, path_type=Path),
        help="Blob cache folder (shared by all mounts). Default: the user cache dir.",
    )(func)
    return func


def settings(ctx: click.Context, **overrides: Any) -> Settings:
    """Settings for this invocation: flags, then environment, then the config file."""
    return load_settings(
        host=ctx.meta.get(_HOST_KEY),
        api_key_file=ctx.meta.get(_KEYFILE_KEY),
        **{k: v for k, v in overrides.items() if v is not None},
    )


def client(ctx: click.Context, **overrides: Any) -> DominoClient:
    c = DominoClient.from_settings(settings(ctx, **overrides))
    ctx.call_on_close(c.close)
    return c


def project_client(ctx: click.Context, project: str, **overrides: Any) -> ProjectClient:
    return client(ctx, **overrides).project(ProjectRef.parse(project))


def parse_project(text: str) -> ProjectRef:
    return ProjectRef.parse(text)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def parse_json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not JSON (quote strings: '\"text\"')") from None


def is_tty() -> bool:
    return sys.stdout.isatty()
