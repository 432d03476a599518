"""DominoClient: the only module that speaks HTTP to a Domino server.

Owns: one requests.Session per client (and, on plain http, plainhttp.py's keep-alive connections
for uploads: a quarter of the CPU per PUT), the (connect, read) timeout on every call, retries
with jittered backoff for idempotent calls only (never the POST that starts a run), Retry-After,
and which route reads a blob (the v1 blob route, else Domino's content route by path; see
`ProjectClient.iter_blob`). Beside it, by noun: httperrors.py maps HTTP failures to errors.*,
wire.py validates what the server sends (a hostile listing is filtered, never trusted),
blobstream.py reads a streamed body, locations.py remembers where listed keys are.
Must not import the FUSE binding or anything above models.
The API key lives only in the session's headers: never in a URL, a message or a log line.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any, TypeVar
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from . import __version__
from .blobstream import BlobStream, range_header
from .config import Settings
from .errors import (
    BadRequest,
    DominoError,
    NotFound,
    ServerError,
    Unreachable,
)
from .fastget import FastGet, Unframed
from .httperrors import MAX_ERROR_BODY, map_status, message_of, retry_after, status_error, why
from .locations import Locations
from .models import (
    EndpointResult,
    ProjectRef,
    RemoteFile,
    Run,
    RunLog,
    RunRequest,
    SearchHit,
    UploadResult,
    clean_relpath,
)
from .plainhttp import PlainHTTP
from .wire import BAD_KEY_CHARS, is_run, list_data, parse_commits, parse_listing, parse_run

__all__ = ["BlobStream", "DominoClient", "ProjectClient", "parse_listing", "parse_run"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_JSON_BODY = 512 * 1024 * 1024
_MAX_PUT_ANSWER = 1 << 20


class DominoClient:
    """A session with one Domino server, for one user (one API key)."""

    def __init__(
        self,
        host: str,
        api_key: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        max_retry_after: float = 30.0,
        pool_size: int = 32,
    ) -> None:
        self.host = host.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self._session = requests.Session()
        # Many FUSE threads read at once; a small pool would serialise them behind one socket.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update(
            {"X-Domino-Api-Key": api_key, "User-Agent": f"dominofs/{__version__}"}
        )
        self._session.trust_env = False  # a proxy from the environment must not see the key
        self._lock = threading.Lock()
        # Found out at the first blob the v1 route 404s and the content route serves (see
        # ProjectClient.iter_blob); from then on every read of a located key goes by path.
        self.blob_route_gone = False
        self._plain: PlainHTTP | None = None
        self._fast: FastGet | None = None
        if self.host.startswith("http://"):
            # Uploads over http.client: a quarter of requests' CPU per PUT (plainhttp.py); blob
            # GETs over raw sockets (fastget.py).
            self._plain = PlainHTTP(
                self.host,
                self._session.headers,  # type: ignore[arg-type]
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
            )
            self._fast = FastGet(
                self.host,
                {"User-Agent": f"dominofs/{__version__}", "X-Domino-Api-Key": api_key},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
            )

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> DominoClient:
        return cls(
            settings.host,
            settings.api_key,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"DominoClient({self.host!r})"

    def close(self) -> None:
        self._session.close()
        if self._plain is not None:
            self._plain.close()
        if self._fast is not None:
            self._fast.close()

    def __enter__(self) -> DominoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def project(self, ref: ProjectRef | str) -> ProjectClient:
        """A client bound to one project (the `models.Remote` the mount and sync use)."""
        return ProjectClient(self, ProjectRef.parse(ref) if isinstance(ref, str) else ref)

    # -- server-wide routes -------------------------------------------------------------

    def version(self) -> str:
        """The server's version string (GET /version)."""
        data = self.get_json("/version", what="version")
        if not isinstance(data, dict) or not isinstance(data.get("version"), str):
            raise ServerError(f"{self.host}: /version answered without a version")
        return str(data["version"])

    def search(self, query: str, *, area: str | None = None) -> list[SearchHit]:
        """Search projects, runs, files or comments the key's user may read."""
        params = {"query": query}
        if area:
            params["area"] = area
        data = self.get_json("/v1/search", params=params, what=f"search {query!r}")
        hits: list[SearchHit] = []
        for item in list_data(data, self.host, "search"):
            try:
                hits.append(
                    SearchHit(
                        id=str(item["id"]),
                        project_id=str(item.get("projectId") or ""),
                        display_text=str(item.get("displayText") or ""),
                        owner_id=str(item.get("ownerId") or ""),
                        path=str(item.get("path") or ""),
                        link=str(item.get("link") or ""),
                        area=str(item.get("area") or ""),
                    )
                )
            except (KeyError, TypeError):
                log.error("%s: skipping a malformed search result", self.host)
        return hits

    # -- the one place every call goes through --------------------------------------------

    def get_json(self, path: str, *, what: str, params: Mapping[str, str] | None = None) -> Any:
        resp = self.request("GET", path, what=what, params=params)
        return _json(resp, self.host, what)

    def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        idempotent: bool | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        body: IO[bytes] | bytes | None = None,
        stream: bool = False,
        ok: tuple[int, ...] = (200, 201, 204, 206),
        passthrough: tuple[int, ...] = (),
    ) -> requests.Response:
        """Send one request, retrying idempotent ones, and map any failure to errors.*.

        `passthrough` statuses are returned to the caller instead of raised.

        Raises:
            DominoError: the mapped failure (Unreachable, AuthError, NotFound, ServerError, ...).
        """
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "PUT", "DELETE")
        url = self.host + path
        start_pos = body.tell() if body is not None and hasattr(body, "tell") else None

        def once() -> requests.Response:
            if start_pos is not None and hasattr(body, "seek"):
                body.seek(start_pos)  # type: ignore[union-attr]
            try:
                resp = self._session.request(
                    method,
                    url,
                    params=params,
                    headers=dict(headers) if headers else None,
                    json=json_body,
                    data=body,
                    stream=stream,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise _Retry(
                    Unreachable(f"cannot reach {self.host} ({what}): {why(exc)}")
                ) from None
            except requests.RequestException as exc:
                raise _Retry(ServerError(f"{self.host} ({what}): {why(exc)}")) from None
            if resp.status_code in ok or resp.status_code in passthrough:
                return resp
            error = map_status(resp, self.host, what)
            delay = retry_after(resp.headers.get("Retry-After"))
            resp.close()
            if resp.status_code not in _RETRY_STATUSES:
                raise error
            raise _Retry(error, delay)

        return self._retrying(once, idempotent=idempotent)

    def put_file(
        self, path: str, body: IO[bytes] | bytes, headers: Mapping[str, str], *, what: str
    ) -> Any:
        """PUT `body` (with its Content-Length in `headers`) at `path`; the answer's JSON.

        Retried like `request` (a PUT is idempotent: the same bytes are sent again).

        Raises:
            DominoError: the mapped failure.
        """
        plain = self._plain
        if plain is None:
            resp = self.request("PUT", path, what=what, body=body, headers=headers)
            return _json(resp, self.host, what)
        start = None if isinstance(body, bytes) else body.tell()

        def once() -> Any:
            if start is not None and not isinstance(body, bytes):
                body.seek(start)
            try:
                answer = plain.send("PUT", path, body, headers, max_body=_MAX_PUT_ANSWER)
            except OSError as exc:  # refused, reset, timed out: as requests' ConnectionError
                raise _Retry(
                    Unreachable(f"cannot reach {self.host} ({what}): {why(exc)}")
                ) from None
            except http.client.HTTPException as exc:
                raise _Retry(ServerError(f"{self.host} ({what}): {why(exc)}")) from None
            if answer.status in (200, 201):
                if not answer.complete:
                    raise ServerError(f"{self.host} ({what}): answer is too large")
                return _parse_json(answer.body, self.host, what)
            error = status_error(answer.status, message_of(answer.body), self.host, what)
            if answer.status not in _RETRY_STATUSES:
                raise error
            raise _Retry(error, retry_after(answer.headers.get("Retry-After")))

        return self._retrying(once, idempotent=True)

    def get_stream(
        self,
        path: str,
        *,
        what: str,
        headers: Mapping[str, str] | None = None,
        passthrough: tuple[int, ...] = (),
    ) -> Any:
        """A streamed GET (a blob): over plain http on the thread's keep-alive connection,
        else through requests. Retried like `request`; the answer has requests' Response
        shape (status_code, headers, raw), which BlobStream reads.

        Raises:
            DominoError: the mapped failure.
        """
        plain = self._plain
        if plain is None:
            return self.request(
                "GET", path, what=what, headers=headers, stream=True, passthrough=passthrough
            )

        fast = self._fast

        def once() -> Any:
            resp: Any = None
            try:
                try:
                    resp = fast.get(path, headers or {}) if fast is not None else None
                except Unframed:
                    resp = None  # chunked: http.client reads it
                if resp is None:
                    resp = plain.open(path, headers or {})
            except OSError as exc:  # refused, reset, timed out: as requests' ConnectionError
                raise _Retry(
                    Unreachable(f"cannot reach {self.host} ({what}): {why(exc)}")
                ) from None
            except http.client.HTTPException as exc:
                raise _Retry(ServerError(f"{self.host} ({what}): {why(exc)}")) from None
            status = resp.status_code
            if status in (200, 206) or status in passthrough:
                return resp
            try:
                body = resp.read(MAX_ERROR_BODY)
            except (OSError, http.client.HTTPException):
                body = b""
            resp.close()
            error = status_error(status, message_of(body), self.host, what)
            if status not in _RETRY_STATUSES:
                raise error
            raise _Retry(error, retry_after(resp.headers.get("Retry-After")))

        return self._retrying(once, idempotent=True)

    def _retrying(self, once: Callable[[], T], *, idempotent: bool) -> T:
        """Call `once` until it returns; it raises _Retry for a failure another try may fix,
        anything else for one it cannot. Idempotent calls only are tried again."""
        attempt = 0
        while True:
            try:
                return once()
            except _Retry as retry:
                error, delay = retry.error, retry.delay
            if not idempotent or attempt >= self.retries:
                raise error
            attempt += 1
            if delay is None:
                # Full jitter: concurrent clients do not return to a struggling server in step.
                delay = random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))
            log.info("%s; retry %d of %d in %.2fs", error, attempt, self.retries, delay)
            time.sleep(min(delay, self.max_retry_after))


class _Retry(Exception):
    """A failure worth another try: the mapped error and the server's Retry-After, if any."""

    def __init__(self, error: DominoError, delay: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.delay = delay


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
            body = _json(resp, self.host, what)
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
        data = _json(resp, self.host, what)
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
        data = _json(resp, self.host, what)
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


def _parse_json(raw: bytes, host: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ServerError(f"{host} ({what}): answer is not JSON") from None


def _json(resp: requests.Response, host: str, what: str) -> Any:
    try:
        length = int(resp.headers.get("Content-Length") or 0)
        if length > _MAX_JSON_BODY:
            raise ServerError(f"{host} ({what}): answer of {length} bytes is too large")
        return resp.json()
    except (ValueError, RecursionError, requests.RequestException):
        # RecursionError: a hostile body nested deeper than the parser's stack.
        raise ServerError(f"{host} ({what}): answer is not JSON") from None
    finally:
        resp.close()
