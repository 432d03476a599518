"""The file routes: commits, listings, blobs, uploads, deletions, content by path, find project.

Owns the handlers that read and change a project's files (shared/domino-api-notes.md §11) and
the cache of listing bodies they answer from (one JSON body per commit, prefix and base URL:
a commit never changes, so a kept body is never stale). Blobs leave as FileResponse (sendfile,
Content-Length and Range for free); an upload streams into the blob store and returns once its
own commit is durable. A mixin of app.Server, which builds the shared state and routes to it.
Must not parse request targets or route (app.py does), and must not import anything from
dominofs outside dominofs/server.
"""

from __future__ import annotations

import asyncio
import bisect
import json
from collections import OrderedDict
from collections.abc import AsyncIterator

from aiohttp import web

from .blobs import CHUNK
from .commits import Conflict, FileEntry, NotFound, now_ms
from .faults import BLOB_PATH
from .httpio import ApiError, authenticate, base_url, file_path, json_response, resolve
from .projects import Project
from .stats import Stats
from .store import Store

LISTING_CACHE_SIZE = 64


class FileRoutes:
    """The file handlers (built by app.Server, which sets what they share)."""

    store: Store
    stats: Stats
    no_delete: bool
    _listings: OrderedDict[tuple[str, ...], bytes]

    async def commits(self, request: web.Request, project: Project) -> web.StreamResponse:
        return json_response(project.commits())

    async def files(
        self, request: web.Request, project: Project, commit: str, segs: list[str]
    ) -> web.StreamResponse:
        cid = resolve(project, commit)
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
        user = authenticate(self.store, request)
        project = self.store.project_by_id(pid)
        if project is None:
            raise ApiError(404, f"project {pid!r} not found")
        if project.owner != user.name:
            raise ApiError(403, f"user {user.name} has no access to project {pid}")
        cid = resolve(project, segs[0])
        path = file_path(segs[1:])
        files = project.file_map(cid)
        entry = files.get(path)
        if entry is None:
            raise ApiError(404, f"{path!r} not found in commit {cid}")
        return self._file_response(entry.key)

    async def find_project(self, request: web.Request) -> web.StreamResponse:
        user = authenticate(self.store, request)
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
