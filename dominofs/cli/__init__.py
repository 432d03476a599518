"""The `dominofs` command: click commands, the only place that wires concrete objects together.

Owns: argument parsing, turning errors.* into one line on stderr and a distinct exit code, and
building the DominoClient that lower layers receive. Each sub-module owns a family of commands.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from .. import __version__
from ..errors import DominoError
from .common import DEBUG_KEY, EXIT_INTERNAL, EXIT_USAGE

log = logging.getLogger("dominofs")


class _Group(click.Group):
    """Maps every failure to one line and an exit code; a traceback only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DominoError as exc:
            _fail(ctx, str(exc), exc.exit_code, exc)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130, None)
        except OSError as exc:
            _fail(ctx, exc.strerror or str(exc), 1, exc)
        except Exception as exc:
            _fail(ctx, f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL, exc)


def _fail(ctx: click.Context, message: str, code: int, exc: BaseException | None) -> None:
    if exc is not None and ctx.meta.get(DEBUG_KEY):
        log.error("failed", exc_info=exc)
    click.echo(f"dominofs: error: {message}", err=True)
    ctx.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dominofs")
@click.option("--debug", is_flag=True, help="Log everything and show tracebacks.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int) -> None:
    """Work on a Domino Data Lab project as if it were a local folder."""
    ctx.meta[DEBUG_KEY] = debug
    level = logging.DEBUG if debug or verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _register() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name == "common":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for command in getattr(module, "COMMANDS", ()):
            cli.add_command(command)


_register()


def main() -> None:
    """Console entry point."""
    try:
        cli.main(prog_name="dominofs", standalone_mode=True)
    except SystemExit:
        raise
    except click.exceptions.UsageError as exc:  # pragma: no cover - standalone handles it
        click.echo(f"dominofs: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
