"""ProjectClient: one project's routes of the v1 API, over a DominoClient's session.

Owns: the project's URLs (every path segment quoted), its commits and file listings (checked by
wire.py), which route reads a blob (the v1 blob route, else Domino's content route by path, once
the server has said it lacks the first: see `iter_blob`), uploads and deletions, runs and their
logs, the model endpoint. Sends nothing itself: every call goes through DominoClient.request,
get_stream or put_file (their timeouts, retries and error mapping).
Must not import the FUSE binding or anything above models.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from .blobstream import BlobStream, range_header
from .errors import BadRequest, NotFound, ServerError
from .httperrors import json_answer
from .locations import Locations
from .models import (
    EndpointResult,
    ProjectRef,
    RemoteFile,
    Run,
    RunLog,
    RunRequest,
    UploadResult,
    clean_relpath,
)
from .wire import BAD_KEY_CHARS, is_run, list_data, parse_commits, parse_listing, parse_run

if TYPE_CHECKING:
    from .api import DominoClient

log = logging.getLogger(__name__)


class ProjectClient:
    """One project on one server: implements `models.Remote`."""

    def __init__(self, client: DominoClient, ref: ProjectRef) -> None:
        self.client = client
        self._ref = ref
        self._base = f"/v1/projects/{quote(ref.owner, safe='')}/{quote(ref.name, safe='')}"
        self._model_base = f"/v1/{quote(ref.owner, safe='')}/{quote(ref.name, safe='')}"
        self._locations = Locations()
        self._id: str | None = None
        self._id_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ProjectClient({self.client.host!r}, {str(self._ref)!r})"

    @property
    def project(self) -> ProjectRef:
        return self._ref

    @property
    def host(self) -> str:
        return self.client.host

    def _what(self, detail: str = "") -> str:
        return f"{self._ref}: {detail}" if detail else str(self._ref)

    # -- files --------------------------------------------------------------------------

    def commits(self) -> list[str]:
        """Commit ids, newest first."""
        what = self._what("commits")
        data = self.client.get_json(f"{self._base}/commits", what=what)
        return parse_commits(data, host=self.host, what=what)

    def head_commit(self) -> str:
        """The newest commit id.

        Raises:
            NotFound: the project has no commit.
        """
        commits = self.commits()
        if not commits:
            raise NotFound(f"{self.host} ({self._what()}): the project has no commit")
        return commits[0]

    def check(self) -> str:
        """Check that the key works and the project is readable; returns the head commit."""
        return self.head_commit()

    def list_files(self, commit_id: str, path: str = "") -> list[RemoteFile]:
        """The files of a commit under `path` (recursive, files only), hostile entries skipped.

        The client remembers where each key is (see `learn`)."""
        what = self._what(f"files of {commit_id[:12]}" + (f" under {path}" if path else ""))
        url = f"{self._base}/files/{quote(commit_id, safe='')}/{quote(path.strip('/'))}"
        data = self.client.get_json(url, what=what)
        files = parse_listing(data, host=self.host, what=what)
        self._locations.learn(commit_id, files)
        return files

    def learn(self, commit_id: str, files: Iterable[RemoteFile]) -> None:
        """Remember where the keys of a listing of `commit_id` can be read by path: what a
        listing loaded from disk needs, so its files stay readable without the blob route."""
        self._locations.learn(commit_id, files)

    def iter_blob(
        self, key: str, *, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> BlobStream:
        """Stream a blob from `offset`, at most `length` bytes (None: to its end).

        A Range request (`bytes=offset-` or `bytes=offset-(offset+length-1)`); a server that
        ignores Range is skipped and capped locally. The v1 blob route is tried first; where it
        404s and the content route serves the key's file (by path, at a commit a listing named
        it in), the server is taken to have no blob route, and every later read of a key this
        client has seen listed goes straight to the content route (no request wasted on the
        blob route again). A 404 from both is the blob route's NotFound.

        Raises:
            NotFound, Unreachable, ServerError: also while iterating. ValueError: length < 0.
        """
        if not key or BAD_KEY_CHARS.intersection(key):
            raise NotFound(f"{self.host} ({self._what()}): {key!r} is not a blob key")
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0, not {length}")
        what = self._what(f"blob {key[:12]}")
        if length == 0:
            return BlobStream(None, offset=0, chunk_size=chunk_size, host=self.host, what=what)
        where = self._locations.find(key)
        if where is not None and self.client.blob_route_gone:
            return self._content(where, offset, length, chunk_size, what)
        try:
            resp = self._get_range(f"{self._base}/blobs/{key}", offset, length, what)
        except NotFound as exc:
            if where is None:
                if self.client.blob_route_gone:
                    raise NotFound(
                        f"{exc}; the server has no blob route and no listing this client has "
                        "seen names this key"
                    ) from None
                raise
            try:
                stream = self._content(where, offset, length, chunk_size, what)
            except NotFound:
                raise exc from None
            if not self.client.blob_route_gone:
                self.client.blob_route_gone = True
                log.warning(
                    "%s: the v1 blob route answers 404 where the content route serves the file; "
                    "reading files by path from now on",
                    self.host,
                )
            return stream
        return BlobStream(
            resp, offset=offset, chunk_size=chunk_size, host=self.host, what=what, length=length
        )

    def _content(
        self, where: tuple[str, str], offset: int, length: int | None, chunk_size: int, what: str
    ) -> BlobStream:
        """The file at (commit, path) from the content route (same Range and cap as blobs).

        Raises:
            NotFound: the server has no content route, or not this file; the rest of request's.
        """
        commit, path = where
        project_id = self._project_id()
        url = (
            f"/api/projects/v1/projects/{quote(project_id, safe='')}/files/"
            f"{quote(commit, safe='')}/{quote(path)}/content"
        )
        resp = self._get_range(url, offset, length, f"{what} ({path} at {commit[:12]})")
        return BlobStream(
            resp, offset=offset, chunk_size=chunk_size, host=self.host, what=what, length=length
        )

    def _get_range(self, url: str, offset: int, length: int | None, what: str) -> Any:
        return self.client.get_stream(
            url, what=what, headers=range_header(offset, length), passthrough=(416,)
        )

    def _project_id(self) -> str:
        """The project's id (the content route names projects by id), asked once.

        Raises:
            NotFound: the server has no such lookup (so no content route); the rest of
            request's.
        """
        with self._id_lock:
            if self._id is None:
                what = self._what("project id")
                data = self.client.get_json(
                    "/v4/gateway/projects/findProjectByOwnerAndName",
                    what=what,
                    params={"ownerName": self._ref.owner, "projectName": self._ref.name},
                )
                pid = data.get("id") if isinstance(data, dict) else None
                if not isinstance(pid, str) or not pid:
                    raise ServerError(f"{self.host} ({what}): answer has no project id")
                self._id = pid
            return self._id

    def upload(self, path: str, data: IO[bytes], *, size: int | None = None) -> UploadResult:
        """PUT a file's bytes at `path` (a new commit). Retried: the same bytes are re-sent."""
        clean = clean_relpath(path)
        if clean is None or clean != path:
            raise BadRequest(f"{path!r} is not a project path")
        what = self._what(path)
        headers = {"Content-Type": "application/octet-stream"}
        url = f"{self._base}/{quote(path)}"
        if size is None:
            resp = self.client.request("PUT", url, what=what, body=data, headers=headers)
            body = json_answer(resp, self.host, what)
        else:
            headers["Content-Length"] = str(size)
            # An empty file object makes requests send chunked *and* our Content-Length: 400.
            body = self.client.put_file(url, b"" if size == 0 else data, headers, what=what)
        try:
            return UploadResult(
                path=str(body.get("path") or path),
                size=int(body["size"]),
                mtime_ms=int(body.get("lastModified") or 0),
                key=str(body["key"]),
                url=str(body.get("url") or ""),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ServerError(f"{self.host} ({what}): upload answer lacks size or key") from None

    def delete(self, path: str) -> bool:
        """Delete `path` on the server. False when the server has no DELETE (keep it local)."""
        what = self._what(path)
        resp = self.client.request(
            "DELETE",
            f"{self._base}/{quote(path)}",
            what=what,
            passthrough=(404, 405, 501),
        )
        status = resp.status_code
        resp.close()
        # 404: already gone, which is what was asked; 405/501: no DELETE on this server.
        return status not in (405, 501)

    # -- runs ---------------------------------------------------------------------------

    def list_runs(self) -> list[Run]:
        data = self.client.get_json(f"{self._base}/runs", what=self._what("runs"))
        return [parse_run(r) for r in list_data(data, self.host, "runs") if is_run(r)]

    def list_runs_raw(self) -> Any:
        return self.client.get_json(f"{self._base}/runs", what=self._what("runs"))

    def get_run(self, run_id: str) -> Run:
        data = self.client.get_json(
            f"{self._base}/runs/{quote(run_id, safe='')}", what=self._what(f"run {run_id}")
        )
        if not is_run(data):
            raise ServerError(f"{self.host} ({self._what(f'run {run_id}')}): not a run object")
        return parse_run(data)

    def run_log(self, run_id: str) -> RunLog:
        what = self._what(f"log of run {run_id}")
        data = self.client.get_json(f"{self._base}/run/{quote(run_id, safe='')}/stdout", what=what)
        if not isinstance(data, dict):
            raise ServerError(f"{self.host} ({what}): not a JSON object")
        return RunLog(setup=str(data.get("setup") or ""), stdout=str(data.get("stdout") or ""))

    def start_run(self, request: RunRequest) -> str:
        """Start a run and return its id. Never retried: a retry could start it twice."""
        what = self._what("start run")
        body = {
            "command": list(request.command),
            "isDirect": request.is_direct,
            "commitId": request.commit_id,
            "title": request.title,
            "tier": request.tier,
            "publishApiEndpoint": request.publish_api_endpoint,
        }
        resp = self.client.request(
            "POST", f"{self._base}/runs", what=what, json_body=body, idempotent=False
        )
        data = json_answer(resp, self.host, what)
        if not isinstance(data, dict) or not isinstance(data.get("runId"), str):
            raise ServerError(f"{self.host} ({what}): answer has no runId")
        return str(data["runId"])

    # -- the published model endpoint -------------------------------------------------------

    def call_endpoint(self, parameters: list[Any]) -> EndpointResult:
        what = self._what("endpoint")
        resp = self.client.request(
            "POST",
            f"{self._model_base}/endpoint",
            what=what,
            json_body={"parameters": parameters},
            idempotent=False,
        )
        data = json_answer(resp, self.host, what)
        if not isinstance(data, dict) or "result" not in data:
            raise ServerError(f"{self.host} ({what}): answer has no result")
        timings: dict[str, float] = {}
        for name in ("Deserialization", "User-Code", "Serialization"):
            raw = resp.headers.get(f"Domino-{name}-Time")
            try:
                timings[name.lower().replace("-", "_")] = float(raw) if raw is not None else 0.0
            except ValueError:
                timings[name.lower().replace("-", "_")] = 0.0
        release = data.get("release")
        return EndpointResult(
            result=data["result"],
            request_id=str(data.get("requestId") or ""),
            release=release if isinstance(release, dict) else {},
            timings_ms=timings,
        )

    def endpoint_state(self) -> dict[str, Any]:
        data = self.client.get_json(
            f"{self._model_base}/endpoint/state", what=self._what("endpoint state")
        )
        return data if isinstance(data, dict) else {}

    def publish_endpoint(self, commit_id: str, file: str, function: str) -> None:
        body = {"commitId": commit_id, "bindingDefinition": {"file": file, "function": function}}
        self.client.request(
            "POST",
            f"{self._model_base}/endpoint/publishRelease",
            what=self._what("publish endpoint"),
            json_body=body,
            idempotent=False,
        ).close()

    def unpublish_endpoint(self) -> None:
        self.client.request(
            "DELETE", f"{self._model_base}/endpoint", what=self._what("unpublish endpoint")
        ).close()
