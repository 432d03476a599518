"""Fault injection for the local server: fail, drop, stall, corrupt or slow requests on purpose.

Owns: the fault SPEC grammar, the rules in force (set by `serve --faults SPEC` and changeable at
run time through the loopback-only `/_faults` route), the hook `fault_point` that dispatch calls
once it has named a request's route, and the middleware that serves `/_faults` and applies the
faults that need the handler's answer (lose, late, truncate, flip). Must not import anything from
dominofs outside dominofs/server, and must not touch the store: a fault changes what goes over
the wire, never what is kept. With no rules in force it costs one lookup per request.

SPEC grammar (spaces around the separators are ignored; an empty SPEC means no faults):

    SPEC   = RULE *(";" RULE)
    RULE   = ROUTE *(":" OPTION)
    ROUTE  = "*" | version | commits | files | blobs | upload | runs | run | stdout | endpoint
             | search | v4 | content        (the /_stats route names; "*" is all of them)
    OPTION = NAME "=" VALUE

Which requests a rule hits (rules are tried in order; every rule that hits a request acts):
    method=GET      only requests with this method (HEAD counts as GET)
    rate=P          hit this share of the matching requests, 0 < P <= 1 (default 1: every one,
                    which is deterministic; tests use rate=1 with count)
    seed=N          seed of the rule's own random choice when rate < 1 (a repeatable sequence)
    count=N         hit at most N requests, then the rule is spent
    auth_after=N    let N matching requests through, then hit them, answering 401 unless the
                    rule gives another status: an API key that expires

What a hit does (one rule may combine several):
    latency=S       wait S seconds before handling
    stall=S         wait S seconds before handling (a request body stays unread meanwhile)
    status=CODE     answer CODE (400..599) with JSON {"message"} instead of handling
    retry_after=S   with status: the Retry-After header (default 1 for 429 and 503, else none)
    drop=1          close the connection without an answer; a request body is read half-way
                    first, so an upload breaks off mid-body
    lose=1          handle the request (an upload commits), then close without the answer: a 2xx
                    whose body is lost
    late=S          handle the request, then hold the answer S seconds
    truncate=1      (blobs, content) announce the full Content-Length, send half the bytes, close
    flip=1          (blobs, content) send the whole body with the bits of its middle byte flipped

Every wait (latency, stall, late) ends early when the rules are changed or cleared, so a test can
hold a request as long as it needs and release it with DELETE /_faults.

Examples:
    blobs:status=503:rate=0.5:retry_after=1;upload:drop=1;files:stall=5;blobs:truncate=1
    *:latency=0.05;*:auth_after=10       (slow, and the key "expires" after ten requests)
    upload:status=500:count=2            (the next two uploads fail, then all is well)

/_faults (no key; loopback callers only, like /_stats):
    GET     {"spec": "...", "rules": [{"rule": "...", "seen": n, "hits": n}, ...]}
    PUT     JSON body {"spec": "..."}: replace the rules (counters restart); 400 on a bad spec
    DELETE  clear every rule and release every waiting request
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from aiohttp import web

log = logging.getLogger(__name__)

ROUTES = frozenset(
    {"version", "commits", "files", "blobs", "upload", "runs", "run", "stdout", "endpoint",
     "search", "v4", "content"}
)  # fmt: skip
FAULTS_PATH = "/_faults"
LOOPBACK = ("127.", "::1", "::ffff:127.")
MAX_WAIT = 3600.0
CHUNK = 256 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_FLOATS = ("latency", "stall", "late", "retry_after")
_INTS = ("count", "auth_after", "seed", "status")
_FLAGS = ("drop", "lose", "truncate", "flip")
_OPTIONS = frozenset({"method", "rate", *_FLOATS, *_INTS, *_FLAGS})
_EFFECTS = ("latency", "stall", "status", "drop", "lose", "late", "truncate", "flip")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass
class Effects:
    """What a fault does to one request: wait, answer with a status, drop or spoil the answer."""

    latency: float = 0.0
    stall: float = 0.0
    status: int | None = None
    retry_after: float | None = None
    drop: bool = False
    lose: bool = False
    late: float = 0.0
    truncate: bool = False
    flip: bool = False


@dataclass(kw_only=True)
class Rule(Effects):
    """One parsed rule and its counters (`seen`: requests it matched, `hits`: ones it acted on)."""

    text: str
    route: str
    method: str | None = None
    rate: float = 1.0
    seed: int | None = None
    count: int | None = None
    auth_after: int | None = None
    seen: int = 0
    hits: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def matches(self, method: str, route: str) -> bool:
        return (self.route in ("*", route)) and self.method in (None, method)

    def take(self) -> bool:
        """Count one matching request; True if the rule acts on it."""
        self.seen += 1
        if self.auth_after is not None and self.seen <= self.auth_after:
            return False
        if self.count is not None and self.hits >= self.count:
            return False
        if self.rate < 1.0 and self.rng.random() >= self.rate:
            return False
        self.hits += 1
        return True


@dataclass
class Hit(Effects):
    """What the rules that hit one request ask for, combined."""

    def add(self, rule: Rule) -> None:
        self.latency += rule.latency
        self.stall = max(self.stall, rule.stall)
        status = rule.status
        if status is None and rule.auth_after is not None:
            status = 401
        if self.status is None and status is not None:
            self.status = status
            self.retry_after = rule.retry_after
            if self.retry_after is None and status in (429, 503):
                self.retry_after = 1.0
        self.drop |= rule.drop
        self.lose |= rule.lose
        self.late = max(self.late, rule.late)
        self.truncate |= rule.truncate
        self.flip |= rule.flip

    @property
    def after(self) -> bool:
        """True if something must happen once the handler has answered."""
        return self.lose or self.late > 0 or self.truncate or self.flip


def _acts_otherwise(rule: Rule) -> bool:
    return any(getattr(rule, name) for name in _EFFECTS)


def parse_spec(spec: str | None) -> list[Rule]:
    """The rules of SPEC (grammar in the module docstring).

    Raises:
        ValueError: an unknown route or option, a bad value, or a rule that does nothing.
    """
    rules: list[Rule] = []
    for text in (spec or "").split(";"):
        text = text.strip()
        if text:
            rules.append(_parse_rule(text))
    return rules


def _parse_rule(text: str) -> Rule:
    route, *options = (part.strip() for part in text.split(":"))
    if route != "*" and route not in ROUTES:
        known = ", ".join(sorted(ROUTES))
        raise ValueError(f"fault rule {text!r}: unknown route {route!r} (use * or {known})")
    rule = Rule(text=text, route=route)
    given: set[str] = set()
    for option in options:
        name, eq, value = (s.strip() for s in option.partition("="))
        if not eq or not name or not value:
            raise ValueError(f"fault rule {text!r}: {option!r} is not NAME=VALUE")
        if name not in _OPTIONS:
            raise ValueError(f"fault rule {text!r}: unknown option {name!r}")
        if name in given:
            raise ValueError(f"fault rule {text!r}: {name} given twice")
        given.add(name)
        _set_option(rule, name, value)
    if rule.status is None and rule.retry_after is not None:
        raise ValueError(f"fault rule {text!r}: retry_after needs a status")
    if not _acts_otherwise(rule) and rule.auth_after is None:
        raise ValueError(f"fault rule {text!r}: does nothing (no status, drop, stall, ...)")
    if rule.seed is not None:
        rule.rng = random.Random(rule.seed)
    return rule


def _set_option(rule: Rule, name: str, value: str) -> None:
    where = f"fault rule {rule.text!r}: {name}={value!r}"
    if name == "method":
        rule.method = value.upper()
    elif name == "rate":
        rate = _number(value, where)
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"{where}: the rate must be in (0, 1]")
        rule.rate = rate
    elif name in _FLOATS:
        seconds = _number(value, where)
        if not 0.0 <= seconds <= MAX_WAIT:
            raise ValueError(f"{where}: seconds must be in [0, {MAX_WAIT:g}]")
        setattr(rule, name, seconds)
    elif name in _INTS:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{where}: not an integer") from None
        if number < 0:
            raise ValueError(f"{where}: must not be negative")
        if name == "status" and not 400 <= number <= 599:
            raise ValueError(f"{where}: the status must be 400..599")
        setattr(rule, name, number)
    else:  # a flag
        if value.lower() not in _TRUE + _FALSE:
            raise ValueError(f"{where}: use 1 or 0")
        setattr(rule, name, value.lower() in _TRUE)


def _number(value: str, where: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{where}: not a number") from None
    if number != number:  # NaN
        raise ValueError(f"{where}: not a number")
    return number


class FaultInjector:
    """The rules in force and their counters. Used from the event loop only (no locking)."""

    def __init__(self, spec: str | None = None) -> None:
        self._rules: list[Rule] = []
        self._spec = ""
        self._changed = asyncio.Event()
        if spec:
            self.set(spec)

    @property
    def spec(self) -> str:
        return self._spec

    @property
    def active(self) -> bool:
        return bool(self._rules)

    def set(self, spec: str | None) -> None:
        """Replace the rules (their counters restart) and release every waiting request.

        Raises:
            ValueError: a bad spec; the rules in force are kept.
        """
        rules = parse_spec(spec)
        self._rules = rules
        self._spec = "; ".join(r.text for r in rules)
        self._changed.set()
        self._changed = asyncio.Event()
        if rules:
            log.info("fault injection on: %s", self._spec)
        else:
            log.info("fault injection off")

    def clear(self) -> None:
        self.set("")

    def snapshot(self) -> dict[str, Any]:
        return {
            "spec": self._spec,
            "rules": [{"rule": r.text, "seen": r.seen, "hits": r.hits} for r in self._rules],
        }

    def choose(self, method: str, route: str) -> Hit | None:
        """Count the request against every matching rule; what the ones that hit it ask for."""
        hit: Hit | None = None
        for rule in self._rules:
            if rule.matches(method, route) and rule.take():
                hit = hit or Hit()
                hit.add(rule)
        return hit

    async def wait(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the rules change meanwhile."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)


FAULTS = web.AppKey("faults", FaultInjector)
AFTER = web.RequestKey("fault_after", Hit)
BLOB_PATH = web.ResponseKey("blob_path", str)
"""Set by the handlers that answer with a stored blob file, so truncate and flip can read it."""


# -- the hook dispatch calls, and the middleware ------------------------------------------------


async def fault_point(request: web.Request, route: str) -> web.StreamResponse | None:
    """Apply the faults for a request whose route is now known.

    Returns a response to send instead of handling the request (an injected status or a
    dropped connection), or None to handle it; faults that need the answer are left for
    `fault_middleware` in the request.
    """
    injector = request.app.get(FAULTS)
    if injector is None or not injector.active or route not in ROUTES:
        return None
    method = "GET" if request.method == "HEAD" else request.method
    hit = injector.choose(method, route)
    if hit is None:
        return None
    await injector.wait(hit.latency)
    await injector.wait(hit.stall)
    if hit.status is not None:
        return _status_response(hit.status, hit.retry_after)
    if hit.drop:
        await _read_half(request)
        return _Dropped(abort=True)
    if hit.after:
        request[AFTER] = hit
    return None


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve /_faults; apply lose, late, truncate and flip to the handler's answer."""
    if request.path == FAULTS_PATH:
        return await _faults_route(request)
    response: web.StreamResponse = await handler(request)
    hit = request.get(AFTER)
    if hit is None or response.prepared:
        return response
    await request.app[FAULTS].wait(hit.late)
    if hit.lose:
        return _Dropped(abort=True)
    if (hit.truncate or hit.flip) and response.status == 200 and request.method != "HEAD":
        blob = response.get(BLOB_PATH)
        if blob is not None:
            return await _send_corrupted(request, blob, truncate=hit.truncate, flip=hit.flip)
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            return await _send_corrupted_bytes(
                request, response.body, truncate=hit.truncate, flip=hit.flip
            )
    return response


class _Dropped(web.StreamResponse):
    """A response that is never sent: preparing it ends the connection.

    aiohttp treats a ConnectionError from prepare() as a client that went away: it stops
    using the connection and logs nothing.
    """

    def __init__(self, *, abort: bool) -> None:
        super().__init__(status=500)
        self._abort = abort

    async def prepare(self, request: web.BaseRequest) -> NoReturn:
        transport = request.transport
        if self._abort and transport is not None:
            transport.abort()
        raise ConnectionResetError("connection ended by an injected fault")


def _status_response(status: int, retry_after: float | None) -> web.Response:
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["Retry-After"] = f"{retry_after:g}"
    if status == 401:
        message = "unknown API key (an injected fault: the key expired)"
    else:
        message = f"an injected fault answered {status}"
    body = json.dumps({"message": message}).encode()
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


async def _read_half(request: web.Request) -> None:
    """Read about half of the request body, so a drop happens mid-body."""
    if not request.can_read_body:
        return
    want = (request.content_length or 2 * CHUNK) // 2
    with contextlib.suppress(Exception):  # the client may be gone already
        while want > 0:
            data = await request.content.read(min(want, CHUNK))
            if not data:
                return
            want -= len(data)


async def _send_corrupted(
    request: web.Request, path: str, *, truncate: bool, flip: bool
) -> web.StreamResponse:
    """Stream the blob file at `path`, cut in half or with its middle byte flipped."""
    loop = asyncio.get_running_loop()
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, after the last read
    except OSError:
        return _Dropped(abort=True)
    try:
        size = os.fstat(fh.fileno()).st_size
        response = await _start(request, size)
        limit = size // 2 if truncate else size
        middle = size // 2
        pos = 0
        while pos < limit:
            chunk = await loop.run_in_executor(None, fh.read, min(CHUNK, limit - pos))
            if not chunk:
                break
            if flip and pos <= middle < pos + len(chunk):
                chunk = _flipped(chunk, middle - pos)
            await response.write(chunk)
            pos += len(chunk)
    finally:
        fh.close()
    return await _finish(request, response, truncate=truncate)


async def _send_corrupted_bytes(
    request: web.Request, body: bytes, *, truncate: bool, flip: bool
) -> web.StreamResponse:
    response = await _start(request, len(body))
    data = body[: len(body) // 2] if truncate else body
    if flip and data and len(body) // 2 < len(data):
        data = _flipped(data, len(body) // 2)
    await response.write(data)
    return await _finish(request, response, truncate=truncate)


async def _start(request: web.Request, size: int) -> web.StreamResponse:
    response = web.StreamResponse(status=200)
    response.content_type = "application/octet-stream"
    response.content_length = size
    await response.prepare(request)
    return response


async def _finish(
    request: web.Request, response: web.StreamResponse, *, truncate: bool
) -> web.StreamResponse:
    if not truncate:
        await response.write_eof()
        return response
    # Flush what was sent, then close (not abort: that would discard the bytes in flight).
    await response.drain()
    if request.transport is not None:
        request.transport.close()
    return _Dropped(abort=False)


def _flipped(chunk: bytes, index: int) -> bytes:
    data = bytearray(chunk)
    data[index] ^= 0xFF
    return bytes(data)


async def _faults_route(request: web.Request) -> web.StreamResponse:
    if not (request.remote or "").startswith(LOOPBACK):
        return _message(403, "/_faults answers only callers on loopback")
    injector = request.app.get(FAULTS)
    if injector is None:
        return _message(404, "this server has no fault injection")
    if request.method in ("GET", "HEAD"):
        return web.json_response(injector.snapshot())
    if request.method == "DELETE":
        injector.clear()
        return web.json_response(injector.snapshot())
    if request.method == "PUT":
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _message(400, 'the body must be JSON {"spec": "..."}')
        spec = body.get("spec") if isinstance(body, dict) else None
        if not isinstance(spec, str):
            return _message(400, 'the body must be JSON {"spec": "..."}')
        try:
            injector.set(spec)
        except ValueError as exc:
            return _message(400, str(exc))
        return web.json_response(injector.snapshot())
    return web.json_response(
        {"message": f"method {request.method} not allowed here"},
        status=405,
        headers={"Allow": "DELETE, GET, PUT"},
    )


def _message(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)
