"""The HTTP face of the local server: routing, auth, path parsing, JSON errors and the handlers.

Owns the aiohttp application. One catch-all route hands every request to `dispatch`, which
parses the raw request target itself (python-domino sends `//`, percent-encoded names and
arbitrary first segments on PUT), authenticates, checks project access and calls a handler.
Handlers translate HTTP to store/runner/endpoint/search calls and shape the JSON of the v1 API
(shared/domino-api-notes.md §11). Every error leaves as JSON {"message": ...}: the middleware
turns ApiError, aiohttp's HTTP exceptions and anything unexpected (500, logged) into that shape.
Must not import anything from dominofs outside dominofs/server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import datetime
import functools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from .endpoint import EndpointError, Endpoints
from .faults import BLOB_PATH, FAULTS, FaultInjector, fault_middleware, fault_point
from .runner import BadRequest, Run, Runner, validate_request
from .search import AREAS, search
from .stats import Stats
from .store import CHUNK, Conflict, FileEntry, NotFound, Project, Store, User, now_ms

log = logging.getLogger(__name__)

VERSION = "5.10.0"
STARTED = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
MAX_JSON_BODY = 8 << 20
LISTING_CACHE_SIZE = 64
LOOPBACK = ("127.", "::1", "::ffff:127.")

STAT = web.RequestKey("stat", str)


class ApiError(Exception):
    """An error the client should see as JSON {"message": ...} with this status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    body = json.dumps(data, ensure_ascii=False).encode("utf-8")
    return web.Response(
        body=body, status=status, headers=headers, content_type="application/json", charset="utf-8"
    )


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response({"message": message}, status=status, headers=headers)


# -- parsing ----------------------------------------------------------------------------------


def split_target(raw_target: str) -> list[str]:
    """Percent-decoded path segments of a raw request target, empty segments dropped.

    `+` stays literal (unquote, not unquote_plus); `//` collapses; a decoded `/` inside a
    segment is split again by file_path.
    """
    path = raw_target.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:  # absolute-form target: keep only the path part
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    return [unquote(s, errors="strict") for s in path.split("/") if s]


def file_path(segments: list[str]) -> str:
    """A project-relative file path from decoded segments; rejects `.`, `..` and NUL with 400."""
    parts: list[str] = []
    for seg in segments:
        for part in seg.split("/"):
            if not part:
                continue
            if part in (".", "..") or "\x00" in part:
                raise ApiError(400, f"invalid path segment {part!r}: no '.', '..' or NUL allowed")
            parts.append(part)
    return "/".join(parts)


def api_key_of(request: web.Request) -> str | None:
    """The key from X-Domino-Api-Key, Basic (password, username ignored) or Bearer."""
    key = request.headers.get("X-Domino-Api-Key")
    if key:
        return key
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


async def read_json(request: web.Request, stats: Stats) -> Any:
    """The JSON body, or ApiError 400/413."""
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise ApiError(413, "request body too large")
    raw = await request.content.read(MAX_JSON_BODY + 1)
    if len(raw) > MAX_JSON_BODY:
        raise ApiError(413, "request body too large")
    stats.bytes_received += len(raw)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON") from None


def no_such_route(request: web.Request) -> ApiError:
    """What a route this server does not have answers (also the blob route under --no-v1-blobs,
    so a client cannot tell it from a deployment without it)."""
    return ApiError(404, f"no such route: {request.method} {request.path}")


def base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


Handler = Callable[..., Awaitable[web.StreamResponse]]


class Server:
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
        user = self.authenticate(request)
        project = self.store.project(owner, name)
        if project is None:
            raise ApiError(404, f"project {owner}/{name} not found")
        if project.owner != user.name:
            raise ApiError(403, f"user {user.name} has no access to project {owner}/{name}")
        return await handler(request, project, *args)

    def authenticate(self, request: web.Request) -> User:
        key = api_key_of(request)
        if key is None:
            raise ApiError(401, "missing credentials: send X-Domino-Api-Key")
        user = self.store.user_for_key(key)
        if user is None:
            raise ApiError(401, "unknown API key")
        return user

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

    # -- files ----------------------------------------------------------------------------------

    async def commits(self, request: web.Request, project: Project) -> web.StreamResponse:
        return json_response(project.commits())

    def _resolve(self, project: Project, commit: str) -> str:
        try:
            return project.resolve(commit)
        except NotFound as exc:
            raise ApiError(404, str(exc)) from None

    async def files(
        self, request: web.Request, project: Project, commit: str, segs: list[str]
    ) -> web.StreamResponse:
        cid = self._resolve(project, commit)
        prefix = file_path(segs)
        base = base_url(request)
        cache_key = (project.id, cid, prefix, base, request.path)
        body = self._listings.get(cache_key)
        if body is None:
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(
                None, self._build_listing, project, cid, prefix, base, request.path
            )
            self._listings[cache_key] = body
            while len(self._listings) > LISTING_CACHE_SIZE:
                self._listings.popitem(last=False)
        else:
            self._listings.move_to_end(cache_key)
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    @staticmethod
    def _build_listing(project: Project, cid: str, prefix: str, base: str, uri: str) -> bytes:
        """Files of commit cid equal to prefix or under prefix/, sorted by path, as JSON."""
        files, paths = project.files(cid)
        if prefix:
            lo = bisect.bisect_left(paths, prefix + "/")
            hi = bisect.bisect_left(paths, prefix + "0")  # "0" sorts right after "/"
            selected = paths[lo:hi]
            if prefix in files:
                selected = [prefix, *selected]
        else:
            selected = paths
        blob_base = f"{base}/v1/projects/{project.owner}/{project.name}/blobs/"
        data = [
            {
                "path": p,
                "lastModified": files[p].last_modified,
                "size": files[p].size,
                "key": files[p].key,
                "url": blob_base + files[p].key,
            }
            for p in selected
        ]
        doc = {"objectType": "list", "uri": uri, "data": data}
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    async def gone(self, request: web.Request) -> web.StreamResponse:
        raise no_such_route(request)

    async def blobs(self, request: web.Request, project: Project, key: str) -> web.StreamResponse:
        if key not in project.keys or not self.store.blobs.exists(key):
            raise ApiError(404, f"blob {key!r} not found in project {project.full_name}")
        return self._file_response(key)

    def _file_response(self, key: str) -> web.StreamResponse:
        # FileResponse: sendfile, Content-Length, and Range (206) for free.
        path = self.store.blobs.path(key)
        response = web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})
        response[BLOB_PATH] = str(path)  # for the truncate and flip faults
        return response

    async def _body_chunks(self, request: web.Request) -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(CHUNK):
            self.stats.bytes_received += len(chunk)
            yield chunk

    async def upload(
        self, request: web.Request, project: Project, segs: list[str]
    ) -> web.StreamResponse:
        path = file_path(segs)
        if not path:
            raise ApiError(400, "an upload needs a file path after the project name")
        key, size = await self.store.blobs.ingest_stream(self._body_chunks(request))
        when = now_ms()
        try:
            # Group commit: returns once this upload's own commit is durable on disk.
            changes: dict[str, FileEntry | None] = {path: FileEntry(key, size, when)}
            await project.commit(changes, f"Added/Modified: {path}")
        except Conflict as exc:
            # 400, not 409: python-domino turns any 409 into "credentials expired".
            raise ApiError(400, f"a file and a folder may not share a name: {exc}") from None
        url = f"{base_url(request)}/v1/projects/{project.owner}/{project.name}/blobs/{key}"
        body = {"path": path, "lastModified": when, "size": size, "key": key, "url": url}
        return json_response(body, status=201, headers={"Location": url})

    async def delete(
        self, request: web.Request, project: Project, segs: list[str]
    ) -> web.StreamResponse:
        if self.no_delete:
            raise ApiError(405, "deletion is not supported by this server")
        path = file_path(segs)
        if not path:
            raise ApiError(400, "a deletion needs a file or folder path")
        try:
            changes: dict[str, FileEntry | None] = {path: None}
            cid = await project.commit(changes, f"Deleted: {path}")
        except NotFound:
            raise ApiError(404, f"{path!r} not found in project {project.full_name}") from None
        return json_response({"path": path, "commitId": cid})

    async def content(self, request: web.Request, pid: str, segs: list[str]) -> web.StreamResponse:
        user = self.authenticate(request)
        project = self.store.project_by_id(pid)
        if project is None:
            raise ApiError(404, f"project {pid!r} not found")
        if project.owner != user.name:
            raise ApiError(403, f"user {user.name} has no access to project {pid}")
        cid = self._resolve(project, segs[0])
        path = file_path(segs[1:])
        files = project.file_map(cid)
        entry = files.get(path)
        if entry is None:
            raise ApiError(404, f"{path!r} not found in commit {cid}")
        return self._file_response(entry.key)

    async def find_project(self, request: web.Request) -> web.StreamResponse:
        user = self.authenticate(request)
        owner = request.query.get("ownerName")
        name = request.query.get("projectName")
        if not owner or not name:
            raise ApiError(400, "ownerName and projectName are required")
        project = self.store.project(owner, name)
        if project is None:
            raise ApiError(404, f"project {owner}/{name} not found")
        if project.owner != user.name:
            raise ApiError(403, f"user {user.name} has no access to project {owner}/{name}")
        owner_user = self.store.users[project.owner]
        body = {"id": project.id, "name": project.name, "ownerUsername": owner}
        return json_response({**body, "ownerId": owner_user.id})

    # -- runs -----------------------------------------------------------------------------------

    async def runs_list(self, request: web.Request, project: Project) -> web.StreamResponse:
        return json_response(
            {"objectType": "list", "uri": request.path, "data": self.runner.list_runs(project)}
        )

    async def runs_start(self, request: web.Request, project: Project) -> web.StreamResponse:
        user = self.authenticate(request)
        try:
            body = validate_request(await read_json(request, self.stats))
        except BadRequest as exc:
            raise ApiError(400, str(exc)) from None
        commit = body.get("commitId")
        body = {**body, "commitId": self._resolve(project, commit) if commit else project.head}
        run = self.runner.start(project, user.id, body)
        link = f"{base_url(request)}/{project.owner}/{project.name}/runs/{run.id}"
        message = f"Run for project {project.full_name} started. You can view progress here: {link}"
        return json_response({"runId": run.id, "message": message})

    def _run(self, project: Project, run_id: str) -> Run:
        run = self.runner.get(project, run_id)
        if run is None:
            raise ApiError(404, f"run {run_id!r} not found in project {project.full_name}")
        return run

    async def run_get(self, request: web.Request, project: Project, rid: str) -> web.StreamResponse:
        return json_response(self._run(project, rid).record)

    async def run_stdout(
        self, request: web.Request, project: Project, rid: str
    ) -> web.StreamResponse:
        run = self._run(project, rid)
        lines_param = request.query.get("previewNumberOfLines")
        setup, stdout = self.runner.logs(run)
        if lines_param is not None:
            try:
                n = int(lines_param)
            except ValueError:
                n = -1
            if n < 0:
                raise ApiError(400, "previewNumberOfLines must be a non-negative integer")
            kept = stdout.splitlines(keepends=True)[-n:] if n else []
            stdout = "".join(kept)
        return json_response({"setup": setup, "stdout": stdout})

    # -- endpoint -------------------------------------------------------------------------------

    async def endpoint_state(self, request: web.Request, project: Project) -> web.StreamResponse:
        state = self.endpoints.get(project).state
        published = bool(state.get("isPublished"))
        return json_response({"isPublished": published, "release": state.get("release")})

    async def endpoint_publish(self, request: web.Request, project: Project) -> web.StreamResponse:
        body = await read_json(request, self.stats)
        binding = body.get("bindingDefinition") if isinstance(body, dict) else None
        if not isinstance(binding, dict):
            raise ApiError(400, "'bindingDefinition' {file, function} is required")
        file, function = binding.get("file"), binding.get("function")
        if not isinstance(file, str) or not isinstance(function, str) or not function:
            raise ApiError(400, "'bindingDefinition' needs string 'file' and 'function'")
        commit = body.get("commitId")
        if commit is not None and not isinstance(commit, str):
            raise ApiError(400, "'commitId' must be a string or null")
        cid = self._resolve(project, commit) if commit else project.head
        path = file_path(file.split("/"))
        files = project.file_map(cid)
        if path not in files:
            raise ApiError(400, f"file {path!r} is not in commit {cid}")
        if not path.endswith(".py"):
            raise ApiError(400, "this server publishes Python (.py) endpoints only")
        ep = await self.endpoints.publish(project, cid, path, function)
        return json_response({"isPublished": True, "release": ep.state["release"]})

    async def endpoint_delete(self, request: web.Request, project: Project) -> web.StreamResponse:
        await self.endpoints.unpublish(project)
        return json_response({"isPublished": False, "release": None})

    async def endpoint_call(self, request: web.Request, project: Project) -> web.StreamResponse:
        started = time.perf_counter()
        body = await read_json(request, self.stats)
        params = body.get("parameters") if isinstance(body, dict) else None
        if not isinstance(params, list):
            raise ApiError(400, "'parameters' must be a JSON array")
        decode_ms = (time.perf_counter() - started) * 1000
        try:
            result = await self.endpoints.call(project, params, decode_ms)
        except EndpointError as exc:
            raise ApiError(exc.status, exc.message) from None
        headers = {
            "Domino-Deserialization-Time": str(round(result.deserialization_ms)),
            "Domino-User-Code-Time": str(round(result.user_ms)),
            "Domino-Serialization-Time": str(round(result.serialization_ms)),
        }
        try:
            return json_response(result.body, headers=headers)
        except (TypeError, ValueError):
            raise ApiError(500, "the endpoint result is not JSON serialisable") from None

    # -- search ---------------------------------------------------------------------------------

    async def search(self, request: web.Request) -> web.StreamResponse:
        user = self.authenticate(request)
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
