"""How a symbolic link travels to a project with `--links`: a small file `NAME.dominolink`.

Owns: the suffix, which project paths carry a link, and the encoding of a link's target (its
bytes, as rclone's `.rclonelink` files hold them). Used by the mount and the sync service, which
must agree on it. Must not touch the filesystem or import anything above models/errors.
"""

from __future__ import annotations

LINK_SUFFIX = ".dominolink"
MAX_TARGET = 4095  # PATH_MAX less the NUL: what symlink(2) itself accepts


def link_file(path: str) -> str:
    """The project path that carries the symlink `path`."""
    return path + LINK_SUFFIX


def link_of(path: str) -> str | None:
    """The symlink a project path `NAME.dominolink` carries, or None for any other path."""
    if not path.endswith(LINK_SUFFIX):
        return None
    name = path[: -len(LINK_SUFFIX)]
    if not name or name.endswith("/"):
        return None  # a bare ".dominolink" is a plain file
    return name


def encode_target(target: str) -> bytes:
    """The bytes a link file holds for `target`."""
    return target.encode("utf-8", "surrogateescape")


def decode_target(data: bytes) -> str | None:
    """The target a link file's bytes name, or None when they cannot be one (then the file stays
    a plain file: empty, too long, or holding a NUL)."""
    if not data or len(data) > MAX_TARGET or b"\0" in data:
        return None
    return data.decode("utf-8", "surrogateescape")
