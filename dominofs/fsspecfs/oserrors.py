"""The one translation from errors.* to the exceptions a Python library raises.

Owns: which builtin exception each dominofs failure becomes at the fsspec boundary (pandas,
pyarrow and dask test for FileNotFoundError and PermissionError, not for our classes). Messages
pass through unchanged: they name the server and what failed, never the key, never a traceback
of the HTTP layer. Must not import anything above errors.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import (
    AuthError,
    BadRequest,
    ConfigError,
    DominoError,
    Forbidden,
    NotFound,
    ReadOnly,
    UsageError,
)


def builtin(exc: DominoError) -> Exception:
    """The builtin exception for `exc` (itself, an OSError, when none fits better)."""
    message = str(exc)
    if isinstance(exc, NotFound):
        return FileNotFoundError(errno.ENOENT, message)
    if isinstance(exc, AuthError | Forbidden):
        return PermissionError(errno.EACCES, message)
    if isinstance(exc, ReadOnly):
        return PermissionError(errno.EROFS, message)
    if isinstance(exc, BadRequest | UsageError | ConfigError):
        return ValueError(message)
    return exc  # Unreachable, ServerError, IntegrityError: OSError (EIO) with a clear message


@contextmanager
def translated() -> Iterator[None]:
    """Raise errors.* from the block as builtin exceptions, without the chain behind them."""
    try:
        yield
    except DominoError as exc:
        raise builtin(exc) from None
