"""The virtual `.runs/` folder: the project's runs as read-only JSON and log files (CONTRACT §4).

Owns: which names `.runs/` holds (index.json, latest.json, <runId>.json, <runId>.log, start),
rendering them (the API's JSON, pretty-printed; a log is setup then stdout), how fresh they are
(a rendering older than 2 s is redone on open), and turning what was written to `start` into a
RunRequest. Must not know FUSE, the cache or the tree; talks to the server only through the
`Remote` it is given and raises only errors.*. The key is never rendered: runs hold none.
"""

from __future__ import annotations

import json
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import NotFound, UsageError
from .models import Remote, Run, RunRequest

INDEX = "index.json"
LATEST = "latest.json"
START = "start"
FRESH_SECONDS = 2.0
_SUFFIXES = (".json", ".log")


@dataclass(frozen=True, slots=True)
class Rendering:
    """The bytes of one `.runs/` file as of `made` (monotonic seconds), and its mtime."""

    data: bytes
    made: float
    mtime: float


class RunsDir:
    """The contents of `.runs/`, rendered from the server on demand and kept for 2 s."""

    def __init__(
        self,
        remote: Remote,
        *,
        fresh_seconds: float = FRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._remote = remote
        self._fresh = fresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._runs: list[Run] | None = None
        self._runs_made = 0.0
        self._renderings: dict[str, Rendering] = {}

    # -- names ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every name in `.runs/` (refreshes the runs list when it is older than 2 s)."""
        runs = self._list(max_age=self._fresh)
        names = [INDEX, LATEST, START]
        for run in runs:
            if _safe_id(run.id):
                names += [run.id + ".json", run.id + ".log"]
        return names

    def exists(self, name: str) -> bool:
        """True when `name` is a file of `.runs/` (may ask the server about an unknown run id)."""
        if name in (INDEX, LATEST, START):
            return True
        run_id = _run_id(name)
        if run_id is None:
            return False
        if any(r.id == run_id for r in self._list(max_age=self._fresh)):
            return True
        # A run started a moment ago may not be in the cached list yet.
        return any(r.id == run_id for r in self._list(max_age=0.2))

    # -- renderings ----------------------------------------------------------------------

    def rendering(self, name: str, *, max_age: float | None = None) -> Rendering:
        """The current rendering of `name`, redone when older than `max_age` (default: never).

        Raises:
            NotFound: no such file. Unreachable, ServerError: the server could not answer.
        """
        now = self._clock()
        with self._lock:
            cached = self._renderings.get(name)
        if cached is not None and (max_age is None or now - cached.made <= max_age):
            return cached
        data = self._render(name)
        made = Rendering(data=data, made=self._clock(), mtime=time.time())
        with self._lock:
            self._renderings[name] = made
        return made

    def _render(self, name: str) -> bytes:
        if name == INDEX:
            return _pretty([dict(r.raw) for r in self._list(max_age=0)])
        if name == LATEST:
            runs = self._list(max_age=0)
            if not runs:
                return _pretty(None)
            return _pretty(dict(self._remote.get_run(_newest(runs).id).raw))
        if name == START:
            return b""
        run_id = _run_id(name)
        if run_id is None:
            raise NotFound(f".runs/{name}: no such file")
        if name.endswith(".json"):
            return _pretty(dict(self._remote.get_run(run_id).raw))
        run_log = self._remote.run_log(run_id)
        text = run_log.setup
        if text and not text.endswith("\n"):
            text += "\n"
        return (text + run_log.stdout).encode("utf-8", "replace")

    def _list(self, *, max_age: float) -> list[Run]:
        now = self._clock()
        with self._lock:
            if self._runs is not None and now - self._runs_made <= max_age:
                return self._runs
        runs = self._remote.list_runs()
        with self._lock:
            self._runs, self._runs_made = runs, self._clock()
        return runs

    # -- starting ------------------------------------------------------------------------

    def start(self, data: bytes) -> str:
        """Start a run from what was written to `start`; returns the run id.

        Raises:
            UsageError: not a JSON object with a command, nor a command line (EINVAL).
            BadRequest: the server refused the request (EINVAL). Unreachable and the rest.
        """
        request = parse_start(data)
        run_id = self._remote.start_run(request)
        with self._lock:
            self._runs_made = -1e18  # the next listing asks the server
            self._renderings.pop(INDEX, None)
            self._renderings.pop(LATEST, None)
        return run_id


def parse_start(data: bytes) -> RunRequest:
    """Turn the bytes written to `.runs/start` into a RunRequest.

    Accepts a JSON object {"command": [...] or "...", "title": ..., "isDirect": ...,
    "commitId": ..., "tier": ...} or a plain command line.

    Raises:
        UsageError: anything else.
    """
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UsageError(".runs/start: not UTF-8 text") from None
    if not text:
        raise UsageError(".runs/start: nothing was written; write a command or a JSON object")
    if text.startswith(("{", "[", '"')):
        try:
            obj = json.loads(text)
        except ValueError:
            raise UsageError(".runs/start: not valid JSON") from None
        if not isinstance(obj, dict):
            raise UsageError('.runs/start: write a JSON object such as {"command": [...]}')
        return _request_from(obj)
    try:
        command = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f".runs/start: cannot parse the command line: {exc}") from None
    return RunRequest(command=tuple(command))


def _request_from(obj: dict[str, Any]) -> RunRequest:
    command = obj.get("command")
    if isinstance(command, str):
        try:
            command = shlex.split(command)
        except ValueError as exc:
            raise UsageError(f".runs/start: cannot parse the command: {exc}") from None
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(c, str) and c for c in command)
    ):
        raise UsageError('.runs/start: "command" must be a non-empty list of strings')
    known = {"command", "title", "isDirect", "commitId", "tier", "publishApiEndpoint"}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise UsageError(f".runs/start: unknown field {unknown[0]!r}")
    title, commit, tier = obj.get("title"), obj.get("commitId"), obj.get("tier")
    for name, value in (("title", title), ("commitId", commit), ("tier", tier)):
        if value is not None and not isinstance(value, str):
            raise UsageError(f'.runs/start: "{name}" must be a string')
    direct, publish = obj.get("isDirect", False), obj.get("publishApiEndpoint")
    if not isinstance(direct, bool) or (publish is not None and not isinstance(publish, bool)):
        raise UsageError('.runs/start: "isDirect" and "publishApiEndpoint" must be true or false')
    return RunRequest(
        command=tuple(command),
        is_direct=direct,
        commit_id=commit,
        title=title,
        tier=tier,
        publish_api_endpoint=publish,
    )


def _pretty(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


def _newest(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: (r.queued_ms or 0, r.number or 0))


def _safe_id(run_id: str) -> bool:
    return bool(run_id) and "/" not in run_id and "\0" not in run_id and run_id not in (".", "..")


def _run_id(name: str) -> str | None:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            run_id = name[: -len(suffix)]
            if _safe_id(run_id) and run_id not in ("index", "latest"):
                return run_id
    return None
