"""Frozen records of what the Domino v1 API returns, and the small Protocols lower layers use.

Owns: the shapes passed between layers. Lower modules (tree, cache, outbox, vfs, runsdir, sync)
depend on the Protocols here, never on api.py; cli.py hands them the real client.
Must not import requests, diskcache or the FUSE binding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from .errors import UsageError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True, slots=True)
class ProjectRef:
    """A project named as OWNER/NAME."""

    owner: str
    name: str

    @classmethod
    def parse(cls, text: str) -> ProjectRef:
        """Parse 'OWNER/NAME'.

        Raises:
            UsageError: the text is not two valid names joined by one slash.
        """
        parts = text.split("/")
        if len(parts) != 2 or not all(_NAME.match(p) for p in parts):
            raise UsageError(
                f"{text!r} is not a project: write OWNER/PROJECT, for example alice/churn"
            )
        return cls(parts[0], parts[1])

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One file of a commit's listing. `key` identifies its bytes (opaque to the client)."""

    path: str
    size: int
    mtime_ms: int
    key: str
    url: str = ""


@dataclass(frozen=True, slots=True)
class UploadResult:
    """What the server answered to a PUT: the path's new key."""

    path: str
    size: int
    mtime_ms: int
    key: str
    url: str = ""


TERMINAL_STATUSES = frozenset({"Succeeded", "Failed", "Error", "Stopped"})


@dataclass(frozen=True, slots=True)
class Run:
    """One run as the API gives it; `raw` keeps every field exactly as sent."""

    id: str
    number: int | None
    status: str
    title: str | None
    commit_id: str | None
    output_commit_id: str | None
    queued_ms: int | None
    started_ms: int | None
    completed_ms: int | None
    is_completed: bool
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def finished(self) -> bool:
        return self.is_completed or self.status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class RunLog:
    """A run's console: the setup log and stdout (which includes stderr)."""

    setup: str
    stdout: str


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What starting a run needs (POST /runs)."""

    command: tuple[str, ...]
    is_direct: bool = False
    commit_id: str | None = None
    title: str | None = None
    tier: str | None = None
    publish_api_endpoint: bool | None = None


@dataclass(frozen=True, slots=True)
class EndpointResult:
    """A published model endpoint's answer."""

    result: Any
    request_id: str
    release: Mapping[str, Any]
    timings_ms: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One search result."""

    id: str
    project_id: str
    display_text: str
    owner_id: str
    path: str
    link: str
    area: str


class Remote(Protocol):
    """One project on a Domino server, as the mount and the sync service see it.

    Every method raises only errors.* (Unreachable when the server does not answer in time).
    """

    @property
    def project(self) -> ProjectRef: ...

    @property
    def host(self) -> str: ...

    def commits(self) -> list[str]:
        """Commit ids, newest first."""
        ...

    def list_files(self, commit_id: str, path: str = "") -> list[RemoteFile]:
        """The files of a commit under `path` (recursive, files only)."""
        ...

    def learn(self, commit_id: str, files: Iterable[RemoteFile]) -> None:
        """Be told a listing of `commit_id` that was not fetched here (one loaded from disk), so
        its files can be read where the server reads files by path only."""
        ...

    def iter_blob(
        self, key: str, *, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        """Stream a blob's bytes from `offset` (at most `length` of them); never holds the blob
        in memory. The key must be in a listing this Remote fetched or was told (`learn`)."""
        ...

    def upload(self, path: str, data: BinaryIO, *, size: int | None = None) -> UploadResult:
        """PUT a file's bytes at `path`; creates a new commit."""
        ...

    def delete(self, path: str) -> bool:
        """Delete a path on the server; False when the server has no DELETE (kept local)."""
        ...

    def list_runs(self) -> list[Run]: ...

    def get_run(self, run_id: str) -> Run: ...

    def run_log(self, run_id: str) -> RunLog: ...

    def start_run(self, request: RunRequest) -> str:
        """Start a run; returns its id. Never retried."""
        ...


MAX_NAME_BYTES = 255


def clean_relpath(path: object) -> str | None:
    """The project-relative form of a path from a listing, or None if it is unsafe.

    Unsafe: empty, absolute after stripping, NUL, `.` or `..` segments, a name over 255 bytes,
    a name no filesystem can hold (a lone surrogate other than an escaped byte).
    Repeated and trailing slashes are folded (python-domino sends `//`).
    """
    if not isinstance(path, str) or "\0" in path:
        return None
    parts = [p for p in path.split("/") if p]
    if not parts:
        return None
    for part in parts:
        try:
            size = len(part.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:
            return None
        if part in (".", "..") or size > MAX_NAME_BYTES:
            return None
    return "/".join(parts)
