"""The HTTP face of the local server: routing, auth, project access, the server-wide routes.

Owns the aiohttp application. One catch-all route hands every request to `dispatch`, which
parses the raw request target itself (python-domino sends `//`, percent-encoded names and
arbitrary first segments on PUT), authenticates, checks project access and calls a handler.
The handlers live by noun: fileroutes.py (commits, listings, blobs, uploads, content) and
runroutes.py (runs, the endpoint), both mixins of Server; the server-wide ones (version,
_stats, search) are here. Every error leaves as JSON {"message": ...}: the middleware turns
ApiError, aiohttp's HTTP exceptions and anything unexpected (500, logged) into that shape.
Must not import anything from dominofs outside dominofs/server.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
from collections import OrderedDict
from typing import Any

from aiohttp import web

from .endpoint import Endpoints
from .faults import FAULTS, FaultInjector, fault_middleware, fault_point
from .fileroutes import FileRoutes
from .httpio import (
    MAX_JSON_BODY,
    ApiError,
    Handler,
    authenticate,
    error_response,
    json_response,
    no_such_route,
    split_target,
)
from .runner import Runner
from .runroutes import RunRoutes
from .search import AREAS, search
from .stats import Stats
from .store import Store

log = logging.getLogger(__name__)

VERSION = "5.10.0"
STARTED = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
LOOPBACK = ("127.", "::1", "::ffff:127.")

STAT = web.RequestKey("stat", str)


class Server(RunRoutes, FileRoutes):
    """The handlers and what they share: store, runner, endpoints, counters, options."""

    def __init__(
        self,
        store: Store,
        runner: Runner,
        endpoints: Endpoints,
        *,
        no_delete: bool,
        no_v1_blobs: bool = False,
    ):
        self.store = store
        self.runner = runner
        self.endpoints = endpoints
        self.no_delete = no_delete
        self.no_v1_blobs = no_v1_blobs
        self.stats = Stats()
        self._listings: OrderedDict[tuple[str, ...], bytes] = OrderedDict()

    # -- dispatch -------------------------------------------------------------------------------

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Route one request by its decoded segments; see the module docstring."""
        method = "GET" if request.method == "HEAD" else request.method
        try:
            segs = split_target(request.raw_path)
        except UnicodeDecodeError:
            raise ApiError(400, "the path is not valid UTF-8 after percent-decoding") from None
        if segs == ["version"]:
            return await self._call(request, method, "version", {"GET": self.version})
        if segs[:1] == ["_stats"] and len(segs) <= 2:
            if segs == ["_stats"]:
                return await self._call(request, method, "stats", {"GET": self.stats_get})
            if segs[1] == "reset":
                return await self._call(request, method, "stats", {"POST": self.stats_reset})
        if segs[:2] == ["v1", "projects"] and len(segs) >= 4:
            return await self._project_route(request, method, segs[2], segs[3], segs[4:])
        if segs == ["v1", "search"]:
            return await self._call(request, method, "search", {"GET": self.search})
        if len(segs) in (4, 5) and segs[0] == "v1" and segs[3] == "endpoint":
            return await self._endpoint_route(request, method, segs[1], segs[2], segs[4:])
        if segs == ["v4", "gateway", "projects", "findProjectByOwnerAndName"]:
            return await self._call(request, method, "v4", {"GET": self.find_project})
        if (
            segs[:4] == ["api", "projects", "v1", "projects"]
            and len(segs) >= 8
            and segs[5] == "files"
            and segs[-1] == "content"
        ):
            handlers: dict[str, Handler] = {"GET": self.content}
            return await self._call(request, method, "content", handlers, segs[4], segs[6:-1])
        raise no_such_route(request)

    async def _call(
        self,
        request: web.Request,
        method: str,
        stat: str,
        handlers: dict[str, Handler],
        *args: Any,
    ) -> web.StreamResponse:
        request[STAT] = f"{method} {stat}"
        injected = await fault_point(request, stat)
        if injected is not None:
            return injected
        handler = handlers.get(method)
        if handler is None:
            allowed = ", ".join(sorted(handlers))
            raise ApiError(405, f"method {request.method} not allowed here", {"Allow": allowed})
        return await handler(request, *args)

    async def _project_route(
        self, request: web.Request, method: str, owner: str, name: str, rest: list[str]
    ) -> web.StreamResponse:
        head = rest[0] if rest else ""
        if method in ("PUT", "DELETE"):
            # Every PUT/DELETE under the project is a file, even .../runs or .../files/x.
            handlers: dict[str, Handler] = {"PUT": self.upload, "DELETE": self.delete}
            return await self._with_project(request, method, "upload", handlers, owner, name, rest)
        if rest == ["commits"]:
            return await self._with_project(
                request, method, "commits", {"GET": self.commits}, owner, name
            )
        if head == "files":
            commit = rest[1] if len(rest) > 1 else "head"
            return await self._with_project(
                request, method, "files", {"GET": self.files}, owner, name, commit, rest[2:]
            )
        if head == "blobs" and len(rest) == 2:
            if self.no_v1_blobs:  # as a deployment that has dropped the deprecated route
                return await self._call(request, method, "blobs", {"GET": self.gone})
            return await self._with_project(
                request, method, "blobs", {"GET": self.blobs}, owner, name, rest[1]
            )
        if rest == ["runs"]:
            handlers = {"GET": self.runs_list, "POST": self.runs_start}
            return await self._with_project(request, method, "runs", handlers, owner, name)
        if head == "runs" and len(rest) == 2:
            return await self._with_project(
                request, method, "run", {"GET": self.run_get}, owner, name, rest[1]
            )
        if head == "run" and len(rest) == 3 and rest[2] == "stdout":
            return await self._with_project(
                request, method, "stdout", {"GET": self.run_stdout}, owner, name, rest[1]
            )
        handlers = {"PUT": self.upload, "DELETE": self.delete}
        return await self._with_project(request, method, "upload", handlers, owner, name, rest)

    async def _endpoint_route(
        self, request: web.Request, method: str, owner: str, name: str, rest: list[str]
    ) -> web.StreamResponse:
        handlers: dict[str, Handler]
        if not rest:
            handlers = {"POST": self.endpoint_call, "DELETE": self.endpoint_delete}
        elif rest == ["state"]:
            handlers = {"GET": self.endpoint_state}
        elif rest == ["publishRelease"]:
            handlers = {"POST": self.endpoint_publish}
        else:
            raise no_such_route(request)
        return await self._with_project(request, method, "endpoint", handlers, owner, name)

    async def _with_project(
        self,
        request: web.Request,
        method: str,
        stat: str,
        handlers: dict[str, Handler],
        owner: str,
        name: str,
        *args: Any,
    ) -> web.StreamResponse:
        """Count, check the method, authenticate, find the project, check access, call."""
        in_project: dict[str, Handler] = {
            m: functools.partial(self._in_project, h, owner, name) for m, h in handlers.items()
        }
        return await self._call(request, method, stat, in_project, *args)

    async def _in_project(
        self, handler: Handler, owner: str, name: str, request: web.Request, *args: Any
    ) -> web.StreamResponse:
        """Authenticate, find the project, check access, then call `handler` with it."""
        user = authenticate(self.store, request)
        project = self.store.project(owner, name)
        if project is None:
            raise ApiError(404, f"project {owner}/{name} not found")
        if project.owner != user.name:
            raise ApiError(403, f"user {user.name} has no access to project {owner}/{name}")
        return await handler(request, project, *args)

    # -- plain routes ---------------------------------------------------------------------------

    async def version(self, request: web.Request) -> web.StreamResponse:
        return json_response(
            {
                "version": VERSION,
                "buildId": "dominofs-local",
                "buildUrl": None,
                "commitId": "0" * 40,
                "commitUrl": None,
                "timestamp": STARTED,
            }
        )

    def _require_loopback(self, request: web.Request) -> None:
        if not (request.remote or "").startswith(LOOPBACK):
            raise ApiError(403, "/_stats answers only callers on loopback")

    async def stats_get(self, request: web.Request) -> web.StreamResponse:
        self._require_loopback(request)
        return json_response(self.stats.snapshot())

    async def stats_reset(self, request: web.Request) -> web.StreamResponse:
        self._require_loopback(request)
        self.stats.reset()
        return json_response(self.stats.snapshot())

    async def gone(self, request: web.Request) -> web.StreamResponse:
        raise no_such_route(request)

    # -- search ---------------------------------------------------------------------------------

    async def search(self, request: web.Request) -> web.StreamResponse:
        user = authenticate(self.store, request)
        query = request.query.get("query")
        if not query:
            raise ApiError(400, "'query' is required")
        area = request.query.get("area")
        if area is not None and area not in AREAS:
            raise ApiError(400, f"'area' must be one of {', '.join(AREAS)}")
        areas = [area] if area else list(AREAS)
        loop = asyncio.get_running_loop()
        data: list[dict[str, Any]] = []
        for a in areas:
            data += await loop.run_in_executor(
                None, search, self.store, self.runner, user, query, a
            )
        return json_response({"objectType": "list", "uri": request.path_qs, "data": data})


SERVER = web.AppKey("server", Server)


# -- application ------------------------------------------------------------------------------


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes JSON {"message"}; unexpected ones are logged and answered 500."""
    server = request.app[SERVER]
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, exc.reason, headers)
    except asyncio.CancelledError:
        raise
    except ConnectionError as exc:
        # The client went away (mid-body, say): nothing to answer and nothing broken here.
        # Escaping, it would reach aiohttp, which logs a traceback for it.
        log.info("%s %s: the client went away (%s)", request.method, request.path, exc)
        return error_response(400, "the connection broke off")
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(500, "internal server error (logged on the server)")
    finally:
        stat = request.get(STAT)
        if stat is not None:
            server.stats.requests[stat] += 1


async def _count_sent(request: web.Request, response: web.StreamResponse) -> None:
    # Called once headers are final, so FileResponse already knows its (range) length.
    request.app[SERVER].stats.bytes_sent += response.content_length or 0


def make_app(
    store: Store,
    *,
    no_delete: bool = False,
    no_v1_blobs: bool = False,
    run_time_limit: float = 3600.0,
    faults: str | None = None,
) -> web.Application:
    """The aiohttp application; its cleanup stops runs and endpoint workers.

    Raises:
        ValueError: a bad fault spec (grammar in faults.py).
    """
    runner = Runner(store, time_limit=run_time_limit)
    endpoints = Endpoints(store)
    server = Server(store, runner, endpoints, no_delete=no_delete, no_v1_blobs=no_v1_blobs)
    app = web.Application(
        middlewares=[json_errors, fault_middleware], client_max_size=MAX_JSON_BODY
    )
    app[SERVER] = server
    app[FAULTS] = FaultInjector(faults)
    app.router.add_route("*", "/{tail:.*}", server.dispatch)
    app.on_response_prepare.append(_count_sent)

    async def stop_work(app: web.Application) -> None:
        await runner.shutdown()
        await endpoints.shutdown()

    app.on_shutdown.append(stop_work)
    return app
