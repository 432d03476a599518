"""DominoClient: the only module that speaks HTTP to a Domino server.

Owns: one requests.Session per client (and, on plain http, plainhttp.py's keep-alive connections
for uploads: a quarter of the CPU per PUT, and fastget.py's for blob reads), the (connect, read)
timeout on every call, retries with jittered backoff for idempotent calls only (never the POST
that starts a run), Retry-After, and the server-wide calls (version, search). Beside it, by
noun: projectapi.py holds one project's routes (and which route reads a blob), httperrors.py
maps HTTP failures to errors.*, wire.py validates what the server sends (a hostile listing is
filtered, never trusted), blobstream.py reads a streamed body, locations.py remembers where
listed keys are.
Must not import the FUSE binding or anything above models.
The API key lives only in the session's headers: never in a URL, a message or a log line.
"""

from __future__ import annotations

import http.client
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, TypeVar

import requests
from requests.adapters import HTTPAdapter

from . import __version__
from .blobstream import BlobStream
from .config import Settings
from .errors import (
    DominoError,
    ServerError,
    Unreachable,
)
from .fastget import FastGet, Unframed
from .httperrors import (
    MAX_ERROR_BODY,
    json_answer,
    map_status,
    message_of,
    parse_json,
    retry_after,
    status_error,
    why,
)
from .models import (
    ProjectRef,
    SearchHit,
)
from .plainhttp import PlainHTTP
from .projectapi import ProjectClient
from .wire import list_data, parse_listing, parse_run

__all__ = ["BlobStream", "DominoClient", "ProjectClient", "parse_listing", "parse_run"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
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
        return json_answer(resp, self.host, what)

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
            return json_answer(resp, self.host, what)
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
                return parse_json(answer.body, self.host, what)
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
