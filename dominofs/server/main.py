"""serve(): open the store, add users and projects, listen, run until SIGTERM/SIGINT.

Owns the process-level lifecycle only: the event loop, the listening socket, the one line on
stdout that says where the server listens, and signal handling. Everything else is app.py's.
Must not import anything from dominofs outside dominofs/server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from .app import make_app
from .faults import parse_spec
from .store import Store

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 5.0


def serve(
    *,
    data_dir: str | os.PathLike[str],
    bind: str = "127.0.0.1",
    port: int = 0,
    users: Sequence[tuple[str, str]] = (),
    projects: Sequence[str] = (),
    no_delete: bool = False,
    no_v1_blobs: bool = False,
    run_time_limit: float = 3600.0,
    faults: str | None = None,
) -> None:
    """Run the local Domino server until SIGTERM or SIGINT; blocks.

    `no_v1_blobs`: GET /v1/projects/{u}/{p}/blobs/{key} answers 404 as an unknown route does,
    like a deployment that has dropped it (files are read by path through the content route).

    `faults` is a fault-injection spec (grammar in faults.py), changeable at run time through
    /_faults. Raises ValueError for a bad user, project (e.g. an owner that is not a user) or
    fault spec, and OSError when the address cannot be bound.
    """
    parse_spec(faults)  # a bad spec fails before anything is written
    store = Store.open(data_dir)
    for name, key in users:
        store.add_user(name, key)
    for full_name in projects:
        store.add_project(full_name)
    asyncio.run(
        _serve(
            store,
            bind,
            port,
            no_delete=no_delete,
            no_v1_blobs=no_v1_blobs,
            run_time_limit=run_time_limit,
            faults=faults,
        )
    )


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve(
    store: Store,
    bind: str,
    port: int,
    *,
    no_delete: bool,
    no_v1_blobs: bool,
    run_time_limit: float,
    faults: str | None = None,
) -> None:
    app = make_app(
        store,
        no_delete=no_delete,
        no_v1_blobs=no_v1_blobs,
        run_time_limit=run_time_limit,
        faults=faults,
    )
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, bind, port)
        await site.start()
        actual = runner.addresses[0][1]
        # The contract: exactly this one line, once the socket accepts connections.
        sys.stdout.write(f"dominofs serve: listening on {_url(bind, actual)}\n")
        sys.stdout.flush()
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
