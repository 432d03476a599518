"""The mount's core: OS-like semantics over the project's tree, the local layer and the outbox.

Split by noun (rclone's vfs is the model): `inodes` the namespace and its stats, `files` the
file calls and their handles (`handles`), `names` the namespace and metadata calls, `uploads`
the hand-over to the outbox, `refresh` the poller and what a new tree means, `statusview` the
status rendering, `core` the whole. Paths are absolute within the mount ("/", "/a/b.csv").
"""

from __future__ import annotations

from .base import UTIME_NOW, UTIME_OMIT
from .core import VFS
from .handles import Opened

__all__ = ["UTIME_NOW", "UTIME_OMIT", "VFS", "Opened"]
