"""DominoClient: the only module that speaks HTTP to a Domino server.

Owns: one requests.Session per client (and, on plain http, plainhttp.py's keep-alive connections
for uploads: a quarter of the CPU per PUT), the (connect, read) timeout on every call, retries
with jittered backoff for idempotent calls only (never the POST that starts a run), Retry-After,
and the one mapping from HTTP failures to errors.*. It validates what the server sends (a hostile
listing is filtered, never trusted). Must not import the FUSE binding or anything above models.
The API key lives only in the session's headers: never in a URL, a message or a log line.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, TypeGuard, TypeVar
from urllib.parse import quote

import requests
import urllib3
from requests.adapters import HTTPAdapter

from . import __version__
from .config import Settings
from .errors import (
    AuthError,
    BadRequest,
    Conflict,
    DominoError,
    Forbidden,
    NotFound,
    ServerError,
    Unreachable,
)
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

log = logging.getLogger(__name__)

T = TypeVar("T")

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_ERROR_BODY = 64 * 1024
_MAX_JSON_BODY = 512 * 1024 * 1024
_MAX_PUT_ANSWER = 1 << 20
_BAD_KEY_CHARS = frozenset("/\\?#% \0")


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
        self._plain: PlainHTTP | None = None
        if self.host.startswith("http://"):
            # Uploads over http.client: a quarter of requests' CPU per PUT (plainhttp.py).
            self._plain = PlainHTTP(
                self.host,
                self._session.headers,  # type: ignore[arg-type]
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
        for item in _list_data(data, self.host, "search"):
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
                    Unreachable(f"cannot reach {self.host} ({what}): {_why(exc)}")
                ) from None
            except requests.RequestException as exc:
                raise _Retry(ServerError(f"{self.host} ({what}): {_why(exc)}")) from None
            if resp.status_code in ok or resp.status_code in passthrough:
                return resp
            error = _map_status(resp, self.host, what)
            delay = _retry_after(resp.headers.get("Retry-After"))
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
                    Unreachable(f"cannot reach {self.host} ({what}): {_why(exc)}")
                ) from None
            except http.client.HTTPException as exc:
                raise _Retry(ServerError(f"{self.host} ({what}): {_why(exc)}")) from None
            if answer.status in (200, 201):
                if not answer.complete:
                    raise ServerError(f"{self.host} ({what}): answer is too large")
                return _parse_json(answer.body, self.host, what)
            error = _status_error(answer.status, _message_of(answer.body), self.host, what)
            if answer.status not in _RETRY_STATUSES:
                raise error
            raise _Retry(error, _retry_after(answer.headers.get("Retry-After")))

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
        data = self.client.get_json(f"{self._base}/commits", what=self._what("commits"))
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
            raise ServerError(f"{self.host} ({self._what('commits')}): not a list of commit ids")
        return list(data)

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
        """The files of a commit under `path` (recursive, files only), hostile entries skipped."""
        what = self._what(f"files of {commit_id[:12]}" + (f" under {path}" if path else ""))
        url = f"{self._base}/files/{quote(commit_id, safe='')}/{quote(path.strip('/'))}"
        data = self.client.get_json(url, what=what)
        return parse_listing(data, host=self.host, what=what)

    def iter_blob(
        self, key: str, *, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> BlobStream:
        """Stream a blob from `offset`, at most `length` bytes when given (a Range request;
        skipped and capped locally if Range is ignored).

        Raises:
            ValueError: `length` is not positive.
            NotFound, Unreachable, ServerError: also while iterating.
        """
        if not key or _BAD_KEY_CHARS.intersection(key):
            raise NotFound(f"{self.host} ({self._what()}): {key!r} is not a blob key")
        if length is not None and length <= 0:
            raise ValueError(f"length must be positive, not {length}")
        what = self._what(f"blob {key[:12]}")
        headers = {"Range": f"bytes={offset}-"} if offset > 0 else None
        if length is not None:
            headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        resp = self.client.request(
            "GET",
            f"{self._base}/blobs/{key}",
            what=what,
            headers=headers,
            stream=True,
            passthrough=(416,),
        )
        return BlobStream(
            resp, offset=offset, length=length, chunk_size=chunk_size, host=self.host, what=what
        )

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
        return [parse_run(r) for r in _list_data(data, self.host, "runs") if _is_run(r)]

    def list_runs_raw(self) -> Any:
        return self.client.get_json(f"{self._base}/runs", what=self._what("runs"))

    def get_run(self, run_id: str) -> Run:
        data = self.client.get_json(
            f"{self._base}/runs/{quote(run_id, safe='')}", what=self._what(f"run {run_id}")
        )
        if not _is_run(data):
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


# -- parsing what the server sends ---------------------------------------------------------


def parse_listing(data: Any, *, host: str, what: str) -> list[RemoteFile]:
    """Turn a files-list answer into RemoteFiles, skipping every entry that is unsafe.

    Skipped (with one logged error each kind): unsafe paths, non-integer or negative sizes,
    missing keys, duplicates, and a file whose path is also a folder of other files.
    """
    files: dict[str, RemoteFile] = {}
    skipped: dict[str, int] = {}
    for item in _list_data(data, host, what):
        reason = None
        path = clean_relpath(item.get("path")) if isinstance(item, dict) else None
        if not isinstance(item, dict):
            reason = "not an object"
        elif path is None:
            reason = "unsafe path"
        else:
            size, key, mtime = item.get("size"), item.get("key"), item.get("lastModified", 0)
            if not _is_int(size) or size < 0 or size > 1 << 50:
                reason = "bad size"
            elif not isinstance(key, str) or not key or _BAD_KEY_CHARS.intersection(key):
                reason = "bad key"
            elif path in files:
                reason = "duplicate path"
            else:
                files[path] = RemoteFile(
                    path=path,
                    size=int(size),
                    mtime_ms=int(mtime) if _is_int(mtime) and 0 <= mtime < 1 << 53 else 0,
                    key=key,
                    url=str(item.get("url") or ""),
                )
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
    # A name cannot be a file and a folder at once: the folder (the deeper paths) wins.
    folders = {p.rsplit("/", 1)[0] for p in files if "/" in p}
    folders |= {f.rsplit("/", i)[0] for f in folders for i in range(1, f.count("/") + 1)}
    for clash in folders & files.keys():
        del files[clash]
        skipped["file and folder share a name"] = skipped.get("file and folder share a name", 0) + 1
    for reason, count in skipped.items():
        log.error("%s (%s): skipped %d listing entries: %s", host, what, count, reason)
    return sorted(files.values(), key=lambda f: f.path)


def parse_run(data: Any) -> Run:
    """A Run from one run object of the API.

    Raises:
        ServerError: not a JSON object with a string `id`.
    """
    if not _is_run(data):
        raise ServerError("the server sent a run that is not an object with a string id")

    def opt_int(name: str) -> int | None:
        v = data.get(name)
        return int(v) if _is_int(v) else None

    def opt_str(name: str) -> str | None:
        v = data.get(name)
        return v if isinstance(v, str) else None

    return Run(
        id=str(data["id"]),
        number=opt_int("number"),
        status=str(data.get("status") or "Unknown"),
        title=opt_str("title"),
        commit_id=opt_str("commitId"),
        output_commit_id=opt_str("outputCommitId"),
        queued_ms=opt_int("queued"),
        started_ms=opt_int("started"),
        completed_ms=opt_int("completed"),
        is_completed=bool(data.get("isCompleted")),
        raw=dict(data),
    )


def _is_run(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("id"), str)


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _list_data(data: Any, host: str, what: str) -> list[Any]:
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return list(data["data"])
    if isinstance(data, list):
        return data
    raise ServerError(f"{host} ({what}): answer is not a list")


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


class BlobStream(Iterator[bytes]):
    """A blob's bytes from a streamed GET: an iterator of `bytes` chunks, or `readinto`.

    `readinto(buffer)` fills a caller's buffer straight from the socket (no bytes object per
    chunk; the blob cache uses it); iteration yields chunks of up to `chunk_size`. Use one or the
    other. Errors are errors.* (Unreachable, ServerError), raised while reading. `close` (also on
    exhaustion or error) releases the connection. A body whose Range was ignored (200 to a
    request with an offset) has its first `offset` bytes skipped locally, and ends after `length`.
    """

    __slots__ = (
        "_chunks", "_fp", "_host", "_left", "_pending", "_resp", "_skip", "_what", "chunk_size",
    )  # fmt: skip

    def __init__(
        self,
        resp: requests.Response,
        *,
        offset: int,
        length: int | None = None,
        chunk_size: int,
        host: str,
        what: str,
    ) -> None:
        self._resp: requests.Response | None = resp
        self.chunk_size = chunk_size
        self._host = host
        self._what = what
        self._chunks: Iterator[bytes] | None = None
        self._skip = offset if (offset > 0 and resp.status_code == 200) else 0
        # Range ignored (200): the rest of the blob comes; stop after the `length` asked for.
        self._left = length if (length is not None and resp.status_code == 200) else None
        self._fp: Any = None
        self._pending = b""
        if resp.status_code == 416:
            self.close()  # asked for bytes at or past the end: there are none
        elif _identity(resp) and resp.headers.get("Content-Length") is not None:
            # http.client's response under urllib3's: its readinto is a recv_into the caller's
            # buffer (urllib3's own readinto reads a bytes object and copies it).
            fp = getattr(resp.raw, "_fp", None)
            if fp is not None and getattr(fp, "length", None) is not None:
                self._fp = fp

    def __iter__(self) -> BlobStream:
        return self

    def __next__(self) -> bytes:
        if self._resp is None:
            raise StopIteration
        if self._chunks is None:
            self._chunks = _body_chunks(self._resp, self.chunk_size)
        try:
            while True:
                chunk = next(self._chunks)
                if self._skip:
                    if len(chunk) <= self._skip:
                        self._skip -= len(chunk)
                        continue
                    chunk, self._skip = chunk[self._skip :], 0
                if self._left is not None:
                    if self._left <= 0:
                        raise StopIteration
                    chunk = chunk[: self._left]
                    self._left -= len(chunk)
                return chunk
        except StopIteration:
            self.close()
            raise
        except BaseException as exc:
            self.close()
            raise self._mapped(exc) from None

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Fill up to len(buffer) bytes; 0 at the end of the blob. Raises errors.*."""
        resp = self._resp
        if resp is None or not len(buffer):
            return 0
        if self._fp is None:
            return self._readinto_chunks(buffer)
        try:
            while self._skip:
                view = memoryview(buffer)[: min(len(buffer), self._skip)]
                n = self._recv(view)
                self._skip -= n
            if self._left is not None:
                if self._left <= 0:
                    self.close()
                    return 0
                buffer = memoryview(buffer)[: self._left]
            n = self._recv(buffer)
            if self._left is not None:
                self._left -= n
        except BaseException as exc:
            self.close()
            raise self._mapped(exc) from None
        if n == 0:
            self._release()
        return n

    def _release(self) -> None:
        """The body was read to its end: the connection goes back to the pool for the next
        request (closing would cost a new connection per cold blob)."""
        resp, fp = self._resp, self._fp
        if resp is not None and fp is not None and fp.length == 0 and fp.fp is None:
            self._resp = self._fp = None
            try:
                resp.raw.release_conn()
            except Exception:
                resp.close()
            return
        self.close()

    def _recv(self, buffer: bytearray | memoryview) -> int:
        fp = self._fp
        remaining = fp.length
        n = fp.readinto(buffer)
        if not n and remaining:
            raise urllib3.exceptions.ProtocolError(
                f"Connection broken: IncompleteRead({remaining} bytes missing)"
            )
        return int(n)

    def _readinto_chunks(self, buffer: bytearray | memoryview) -> int:
        # A chunked or encoded body: copy from the iterator, keeping what does not fit.
        chunk = self._pending or next(self, b"")
        n = min(len(chunk), len(buffer))
        buffer[:n] = chunk[:n]
        self._pending = chunk[n:]
        return n

    def close(self) -> None:
        resp, self._resp = self._resp, None
        self._fp = None
        if resp is not None:
            resp.close()

    def _mapped(self, exc: BaseException) -> BaseException:
        host, what = self._host, self._what
        if isinstance(exc, DominoError):
            return exc
        if isinstance(
            exc,
            (
                requests.ConnectionError,
                requests.Timeout,
                urllib3.exceptions.TimeoutError,
                TimeoutError,
            ),
        ):
            return Unreachable(f"cannot read from {host} ({what}): {_why(exc)}")
        if isinstance(
            exc,
            (
                requests.RequestException,
                urllib3.exceptions.HTTPError,
                OSError,
                http.client.HTTPException,
            ),
        ):
            return ServerError(f"{host} ({what}): download broke off: {_why(exc)}")
        return exc


def _identity(resp: requests.Response) -> bool:
    return resp.headers.get("Content-Encoding", "identity").lower() == "identity"


def _body_chunks(resp: requests.Response, chunk_size: int) -> Iterator[bytes]:
    """The body in chunks of up to `chunk_size` bytes.

    An unencoded body is read straight from urllib3 (`raw.read`): iter_content's generator and
    decoder layers cost a Python round trip per chunk on the hot path of every cold read.
    urllib3 errors (ProtocolError for a broken or short body, ReadTimeoutError) propagate.
    """
    raw = resp.raw
    if not _identity(resp) or raw is None:
        yield from resp.iter_content(chunk_size)
        return
    read = raw.read
    while chunk := read(chunk_size, decode_content=False):
        yield chunk


_STATUS_ERRORS: dict[int, Callable[[str], DominoError]] = {
    400: BadRequest,
    401: AuthError,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
}

_STATUS_HINTS = {
    401: "the API key was refused; check DOMINO_USER_API_KEY or run dominofs login",
    403: "this key's user has no access",
    404: "not found",
}


def _map_status(resp: requests.Response, host: str, what: str) -> DominoError:
    return _status_error(resp.status_code, _server_message(resp), host, what)


def _status_error(status: int, message: str, host: str, what: str) -> DominoError:
    hint = _STATUS_HINTS.get(status, f"server answered {status}")
    text = f"{host} ({what}): {hint}" + (f": {message}" if message else "")
    factory = _STATUS_ERRORS.get(status)
    if factory is not None:
        return factory(text)
    if status == 429 or status >= 500:
        return ServerError(text)
    return ServerError(text)


def _server_message(resp: requests.Response) -> str:
    try:
        if getattr(resp, "_content_consumed", False):
            raw = (resp.content or b"")[:_MAX_ERROR_BODY]
        else:  # a streamed answer: read only so much of a possibly huge error body
            raw = resp.raw.read(_MAX_ERROR_BODY, decode_content=True) if resp.raw else b""
    except Exception:  # a broken error body must not hide the status it came with
        raw = b""
    return _message_of(raw)


def _message_of(raw: bytes) -> str:
    """The `message` of a JSON error body ('' when there is none)."""
    try:
        data = json.loads(raw[:_MAX_ERROR_BODY])
    except ValueError:
        return ""
    msg = data.get("message") if isinstance(data, dict) else None
    return str(msg)[:300] if msg else ""


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _why(exc: BaseException) -> str:
    # requests' messages embed the URL and urllib3 internals; keep the last, human part.
    text = str(exc).split("(Caused by ")[-1].rstrip(")")
    return text.split(": ")[-1][:200] if text else type(exc).__name__
