"""domino:// for fsspec: pandas, pyarrow, dask and any fsspec-aware tool open project files by URL.

Registered through the `fsspec.specs` entry point (pyproject.toml), so that in a fresh interpreter
`pd.read_csv("domino://alice/churn/data/train.csv")` works with nothing imported by hand.

Module map (arrows are imports; nothing here imports the FUSE binding, the mount, the vfs or the
outbox, and nothing outside imports this package):
    filesystem  the fsspec surface: paths in, listings out, opens, writes, deletes
      -> paths      OWNER/PROJECT[@COMMIT]/PATH, names in the caller's form, BlobName
      -> listings   per process: clients, the commit-listing LRU, head pointers, own writes
      -> files      the pinned reader and the spooled writer (fsspec's AbstractBufferedFile)
      -> blobs      Range reads, the mounts' blob cache, a blob as an upload body
      -> oserrors   errors.* -> FileNotFoundError, PermissionError, ValueError
    and below them: api (HTTP), tree (a listing as folders), cache (blobs on disk), config.
"""

from __future__ import annotations

from .filesystem import DominoFileSystem

__all__ = ["DominoFileSystem"]
