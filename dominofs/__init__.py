"""dominofs: a Domino Data Lab project as a local folder (mount, sync, CLI, local server)."""

from __future__ import annotations

__version__ = "0.1.0"
