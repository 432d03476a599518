"""domino:// paths: OWNER/PROJECT[@COMMIT]/PATH parsed, and names that remember their blob.

Owns: the one parser of what a caller writes (with or without `domino://`), the rule that names
come back in the caller's form (`alice/churn@c0ffee/x.csv` stays pinned, `alice/churn/x.csv`
stays at head), and `BlobName`, the str a listing returns for a file. Must not talk to a server
or hold state beyond one name.

Why `BlobName`: dask sends each task the filesystem and a name from `glob`. A name that carries
its blob (host, commit, key, size) lets a worker open exactly what the client listed without a
listing of its own. The blob is honoured only by a name that has travelled (been unpickled): in
the process that listed it, a name is a plain name and is looked up afresh, so a write after a
glob is never hidden behind the blob the glob saw.
"""

from __future__ import annotations

import errno
import functools
import re
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..models import ProjectRef, RemoteFile

PROTOCOL = "domino"
_PREFIXES = (f"{PROTOCOL}://", f"{PROTOCOL}::")
_COMMIT = re.compile(r"^[0-9A-Za-z]{4,64}$")
_MOVING = frozenset({"head", "latest", "master", "main"})  # aliases that move: not a pin


def strip_protocol(path: str) -> str:
    """`path` without `domino://`, leading or trailing slashes; a BlobName is kept as is."""
    if isinstance(path, BlobName) and not path.startswith(_PREFIXES) and not path.endswith("/"):
        return path
    text = str(path)
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    return text.strip("/")


@dataclass(frozen=True, slots=True)
class Location:
    """Where a path points: a project, a pinned commit or head (None), a project path."""

    project: ProjectRef
    commit: str | None
    path: str  # project-relative, "" for the project's root
    root: str  # the project as the caller wrote it: "alice/churn" or "alice/churn@c0ffee"

    def name(self, rel: str | None = None) -> str:
        """The name of project path `rel` (this location's own by default), in the caller's form."""
        rel = self.path if rel is None else rel
        return f"{self.root}/{rel}" if rel else self.root

    @property
    def url(self) -> str:
        return f"{PROTOCOL}://{self.name()}"


def parse(path: str, *, commit: str | None = None) -> Location:
    """Parse OWNER/PROJECT[@COMMIT][/PATH]; `commit` is the filesystem's own pin, if any.

    Raises:
        FileNotFoundError: no project named (`domino://` or `domino://OWNER`): the v1 API lists
            no projects, so there is nothing there to list.
        ValueError: a malformed name, a moving alias used as a commit, `.` or `..` in the path,
            or a commit in the path that disagrees with the filesystem's `commit=`.
    """
    text = strip_protocol(path)
    first = text.find("/")
    second = text.find("/", first + 1) if first >= 0 else -1
    head, rel = (text, "") if second < 0 else (text[:second], text[second + 1 :])
    ref, pinned, root = _project(head, commit)
    probe = f"/{rel}/"
    if rel and ("//" in probe or "/./" in probe or "/../" in probe or "\0" in rel):
        parts = [p for p in rel.split("/") if p]
        if any(p in (".", "..") or "\0" in p for p in parts):
            raise ValueError(f"{PROTOCOL}://{text}: '.', '..' and NUL are not allowed in a path")
        rel = "/".join(parts)
    return Location(ref, pinned or commit, rel, root)


@functools.lru_cache(maxsize=1024)
def _project(text: str, commit: str | None) -> tuple[ProjectRef, str | None, str]:
    """(project, commit in the path, root as written) of OWNER/PROJECT[@COMMIT]; every name
    of a listing shares its root, so this runs once per root, not once per name."""
    owner, _, project = text.partition("/")
    if not project:
        raise FileNotFoundError(
            errno.ENOENT,
            f"{PROTOCOL}://{text}: name a project, as in domino://OWNER/PROJECT/PATH "
            "(the v1 API lists no projects)",
        )
    pinned = None
    if "@" in project:
        project, pinned = project.split("@", 1)
        if pinned.lower() in _MOVING:
            raise ValueError(
                f"{PROTOCOL}://{text}: @{pinned} moves; write domino://{owner}/{project}/... "
                "for the newest files, or @COMMIT for a fixed one"
            )
        if not _COMMIT.match(pinned):
            raise ValueError(f"{PROTOCOL}://{text}: {pinned!r} is not a commit id")
    try:
        ref = ProjectRef.parse(f"{owner}/{project}")
    except UsageError:
        raise ValueError(
            f"{PROTOCOL}://{text}: {owner}/{project} is not a project: write "
            "domino://OWNER/PROJECT/PATH, for example domino://alice/churn/data/train.csv"
        ) from None
    if pinned and commit and pinned != commit:
        raise ValueError(
            f"{PROTOCOL}://{text}: the path pins commit {pinned} but the filesystem was opened "
            f"with commit={commit}"
        )
    return ref, pinned, f"{owner}/{project}@{pinned}" if pinned else f"{owner}/{project}"


@dataclass(frozen=True, slots=True)
class Pin:
    """The blob a name stood for when it was listed."""

    host: str
    commit: str | None
    file: RemoteFile


class BlobName(str):
    """A file's name as listed (equal to the plain str) that remembers which blob it named.

    `pin` is set only on a name that was unpickled (see the module docstring).
    """

    pin: Pin | None
    _blob: Pin

    @classmethod
    def of(cls, name: str, blob: Pin) -> BlobName:
        out = cls(name)
        out._blob = blob
        out.pin = None
        return out

    def __copy__(self) -> BlobName:
        return self  # a copy in this process is still this process's name, not a travelled one

    def __deepcopy__(self, memo: dict[int, Any]) -> BlobName:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        blob = self._blob
        f = blob.file
        return (_arrived, (str(self), blob.host, blob.commit, f.path, f.size, f.mtime_ms, f.key))


def _arrived(
    name: str, host: str, commit: str | None, path: str, size: int, mtime_ms: int, key: str
) -> BlobName:
    blob = Pin(host, commit, RemoteFile(path=path, size=size, mtime_ms=mtime_ms, key=key))
    out = BlobName.of(name, blob)
    out.pin = blob
    return out


def travelled_pin(path: object, host: str) -> Pin | None:
    """The blob `path` names if it is a BlobName that travelled from a listing on `host`."""
    pin = getattr(path, "pin", None) if isinstance(path, BlobName) else None
    return pin if pin is not None and pin.host == host else None
