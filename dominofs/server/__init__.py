"""The local Domino v1 server (aiohttp): a development and test peer for dominofs.

Shares no code with the client: nothing here imports dominofs outside dominofs/server.
Modules: main (serve and its lifecycle), app (HTTP), store (disk), runner (runs), endpoint
(published endpoint), search, stats.
"""

from __future__ import annotations

from .main import serve

__all__ = ["serve"]
