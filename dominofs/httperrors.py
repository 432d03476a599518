"""What a failed HTTP exchange becomes: the one mapping from statuses to errors.*.

Owns: the status -> error class table, the short hint each error's message starts with, the
server's own `message` (read from at most 64 KiB of an error body, never more), Retry-After in
either form, the JSON of an answer (bounded; a body that is not JSON is a ServerError), and the
human part of a requests/urllib3 exception's text. Messages name the host and what was asked,
never the key (it is only ever in a header). Must not import anything above errors.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable
from typing import Any

import requests

from .errors import AuthError, BadRequest, Conflict, DominoError, Forbidden, NotFound, ServerError

MAX_ERROR_BODY = 64 * 1024
MAX_JSON_BODY = 512 * 1024 * 1024


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


def map_status(resp: requests.Response, host: str, what: str) -> DominoError:
    return status_error(resp.status_code, _server_message(resp), host, what)


def status_error(status: int, message: str, host: str, what: str) -> DominoError:
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
            raw = (resp.content or b"")[:MAX_ERROR_BODY]
        else:  # a streamed answer: read only so much of a possibly huge error body
            raw = resp.raw.read(MAX_ERROR_BODY, decode_content=True) if resp.raw else b""
    except Exception:  # a broken error body must not hide the status it came with
        raw = b""
    return message_of(raw)


def message_of(raw: bytes) -> str:
    """The `message` of a JSON error body ('' when there is none)."""
    try:
        data = json.loads(raw[:MAX_ERROR_BODY])
    except ValueError:
        return ""
    msg = data.get("message") if isinstance(data, dict) else None
    return str(msg)[:300] if msg else ""


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def why(exc: BaseException) -> str:
    """The human part of an exception's message: requests' messages embed the URL and urllib3
    internals, so only the last part is kept."""
    text = str(exc).split("(Caused by ")[-1].rstrip(")")
    return text.split(": ")[-1][:200] if text else type(exc).__name__


def parse_json(raw: bytes, host: str, what: str) -> Any:
    """The JSON an answer's body holds.

    Raises:
        ServerError: it holds none.
    """
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ServerError(f"{host} ({what}): answer is not JSON") from None


def json_answer(resp: requests.Response, host: str, what: str) -> Any:
    """The JSON of answer `resp` (closed after), at most MAX_JSON_BODY bytes of it.

    Raises:
        ServerError: it holds none, or too much.
    """
    try:
        length = int(resp.headers.get("Content-Length") or 0)
        if length > MAX_JSON_BODY:
            raise ServerError(f"{host} ({what}): answer of {length} bytes is too large")
        return resp.json()
    except (ValueError, RecursionError, requests.RequestException):
        # RecursionError: a hostile body nested deeper than the parser's stack.
        raise ServerError(f"{host} ({what}): answer is not JSON") from None
    finally:
        resp.close()
