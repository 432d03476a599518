"""The HTTP edge every handler shares: request targets, callers, JSON in, JSON answers out.

Owns the request side's parsing (the raw target's segments, a file path from them, the API key
of Basic, Bearer or X-Domino-Api-Key, a bounded JSON body) and the answer side's shape: JSON,
and every error as JSON {"message": ...} through ApiError. Not named http.py: endpoint_worker.py
runs as a script with this folder first on sys.path, where that name would hide the standard
library's http from the user code it loads.
Must not route or handle a request (app.py and the *routes.py modules do), and must not import
anything from dominofs outside dominofs/server.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from .commits import NotFound
from .projects import Project
from .stats import Stats
from .store import Store, User

MAX_JSON_BODY = 8 << 20


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


def authenticate(store: Store, request: web.Request) -> User:
    """The user whose API key the request carries, or ApiError 401."""
    key = api_key_of(request)
    if key is None:
        raise ApiError(401, "missing credentials: send X-Domino-Api-Key")
    user = store.user_for_key(key)
    if user is None:
        raise ApiError(401, "unknown API key")
    return user


def resolve(project: Project, commit: str) -> str:
    """A known commit id for commit (an id or an alias such as head), or ApiError 404."""
    try:
        return project.resolve(commit)
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
