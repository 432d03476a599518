"""The routes that run a project's code: runs (start, list, record, stdout) and its endpoint.

Owns the handlers that translate HTTP to runner.py's and endpoint.py's calls and shape their
JSON (shared/domino-api-notes.md §11): a run's start body is validated before anything runs, an
endpoint call's answer carries Domino's timing headers. A mixin of app.Server, which builds the
shared state and routes to it.
Must not parse request targets or route (app.py does), must not start processes itself, and
must not import anything from dominofs outside dominofs/server.
"""

from __future__ import annotations

import time

from aiohttp import web

from .endpoint import EndpointError, Endpoints
from .httpio import ApiError, authenticate, base_url, file_path, json_response, read_json, resolve
from .projects import Project
from .runner import BadRequest, Run, Runner, validate_request
from .stats import Stats
from .store import Store


class RunRoutes:
    """The run and endpoint handlers (built by app.Server, which sets what they share)."""

    store: Store
    runner: Runner
    endpoints: Endpoints
    stats: Stats

    async def runs_list(self, request: web.Request, project: Project) -> web.StreamResponse:
        return json_response(
            {"objectType": "list", "uri": request.path, "data": self.runner.list_runs(project)}
        )

    async def runs_start(self, request: web.Request, project: Project) -> web.StreamResponse:
        user = authenticate(self.store, request)
        try:
            body = validate_request(await read_json(request, self.stats))
        except BadRequest as exc:
            raise ApiError(400, str(exc)) from None
        commit = body.get("commitId")
        body = {**body, "commitId": resolve(project, commit) if commit else project.head}
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
        cid = resolve(project, commit) if commit else project.head
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
