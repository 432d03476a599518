"""`dominofs call | search | login`: the endpoint, search and first-time setup."""

from __future__ import annotations

import dataclasses

import click

from ..api import DominoClient
from ..config import config_path, write_config
from ..errors import AuthError, UsageError
from .common import client, echo_json, parse_json_arg, project_client, server_options

AREAS = ("project", "run", "file", "comment")


@click.command("call")
@server_options
@click.argument("project")
@click.argument("params", nargs=-1)
@click.pass_context
def call(ctx: click.Context, project: str, params: tuple[str, ...]) -> None:
    """Call the project's published model endpoint with JSON PARAMs (e.g. 3 '"text"')."""
    values = [parse_json_arg(p, "parameter") for p in params]
    result = project_client(ctx, project).call_endpoint(values)
    echo_json(result.result)


@click.command("search")
@server_options
@click.argument("query")
@click.option("--area", type=click.Choice(AREAS), default=None, help="Only this kind of result.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def search(ctx: click.Context, query: str, area: str | None, as_json: bool) -> None:
    """Search projects, runs, files and comments you can read."""
    hits = client(ctx).search(query, area=area)
    if as_json:
        echo_json([dataclasses.asdict(h) for h in hits])
        return
    for h in hits:
        click.echo(f"{h.area:<8} {h.display_text}" + (f"  ({h.path})" if h.path else ""))


@click.command("login")
@click.option("--host", prompt="Domino server URL", help="e.g. https://domino.example.com")
@click.pass_context
def login(ctx: click.Context, host: str) -> None:
    """Ask for the server and API key, check them, and save them (mode 0600)."""
    key = click.prompt("API key", hide_input=True).strip()
    if not key:
        raise UsageError("an empty API key cannot work")
    host = host.strip().rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise UsageError(f"{host!r} is not a URL: write http(s)://HOST[:PORT]")
    with DominoClient(host, key, retries=1) as c:
        version = c.version()
        try:
            c.search("dominofs-login-check", area="project")
        except AuthError:
            raise AuthError(
                f"{host} refused this API key; copy it again from your account"
            ) from None
    path = config_path()
    write_config(path, host=host, api_key=key)
    click.echo(f"Logged in to {host} (Domino {version}); settings saved in {path}")


COMMANDS = [call, search, login]
