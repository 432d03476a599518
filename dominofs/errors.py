"""The failures dominofs reports, each an OSError with a real errno.

Owns: the error family every layer raises and the CLI exit code of each. Must not import
anything from dominofs. Messages are one line and never contain an API key.
"""

from __future__ import annotations

import errno as _errno


class DominoError(OSError):
    """Base of every dominofs failure: an OSError whose errno the mount can return as is."""

    default_errno = _errno.EIO
    exit_code = 1

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        code = self.default_errno if errno is None else errno
        # One line always: a multi-line server message would break logs and the CLI's output.
        message = " ".join(str(message).split())
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[DominoError], tuple[str]]:
        return (type(self), (self.message,))


class UsageError(DominoError):
    """The user asked for something malformed (bad OWNER/PROJECT, bad size, bad JSON)."""

    default_errno = _errno.EINVAL
    exit_code = 2


class ConfigError(DominoError):
    """Configuration is missing, unreadable or unsafe (a key file others can read)."""

    default_errno = _errno.EINVAL
    exit_code = 2


class BadRequest(DominoError):
    """The server answered 400: the request was malformed."""

    default_errno = _errno.EINVAL
    exit_code = 2


class AuthError(DominoError):
    """The server answered 401: no key, or a key it does not know."""

    default_errno = _errno.EACCES
    exit_code = 3


class Forbidden(DominoError):
    """The server answered 403: the key's user may not do this."""

    default_errno = _errno.EACCES
    exit_code = 3


class NotFound(DominoError):
    """The server answered 404, or a path does not exist."""

    default_errno = _errno.ENOENT
    exit_code = 4


class Unreachable(DominoError):
    """The server could not be reached or did not answer in time."""

    default_errno = _errno.EIO
    exit_code = 5


class ServerError(DominoError):
    """The server answered 5xx, or something it should never send."""

    default_errno = _errno.EIO
    exit_code = 6


class IntegrityError(DominoError):
    """Bytes from the server do not match what its listing promised (short or wrong hash)."""

    default_errno = _errno.EIO
    exit_code = 6


class Conflict(DominoError):
    """The server answered 409, or a path changed remotely since an edit started."""

    default_errno = _errno.EBUSY
    exit_code = 7


class ReadOnly(DominoError):
    """A write to something that cannot be written (a pinned commit, .runs/, status.json)."""

    default_errno = _errno.EROFS
    exit_code = 1


class NotSupported(DominoError):
    """An operation the API cannot express (symlinks, hard links, device nodes)."""

    default_errno = _errno.EPERM
    exit_code = 1
