"""Build big projects offline, straight into a server data directory (before the server starts).

The same approach as scripts/bench.py: blob files go into the store's own layout
(`BlobStore.path`) without fsync, from a few threads, and every file lands in one commit via
`Project.write_commit`. Creating 100,000 files through HTTP would be one commit per PUT and would
dominate the run; these are throwaway test data in a tmp dir, so durability is not needed.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from dominofs.server.store import FileEntry, Project, Store, blob_hasher, now_ms
from tests.conftest import ALICE_KEY

MiB = 1 << 20
GiB = 1 << 30


def open_store(data_dir: Path) -> Store:
    """The store in data_dir with alice (the test key), as the server fixture will serve it."""
    store = Store.open(data_dir)
    store.add_user("alice", ALICE_KEY)
    return store


def tree_path(i: int) -> str:
    """Where file i goes: 3 folder levels, 100 files per leaf folder (like the bench)."""
    return f"d{i // 1000:03d}/s{(i // 100) % 10}/f{i:06d}.txt"


def small_content(i: int) -> bytes:
    """Distinct content per i, sizes 20 bytes to a few KiB."""
    line = f"file {i}: {hashlib.sha256(str(i).encode()).hexdigest()}\n".encode()
    return line * (1 + i % 50)


def add_small_files(store: Store, project: Project, files: dict[str, bytes]) -> dict[str, str]:
    """Write each path's bytes as a blob and commit them all at once; returns path -> key."""
    when = now_ms()
    changes: dict[str, FileEntry | None] = {}
    blobs: dict[str, bytes] = {}
    keys: dict[str, str] = {}
    for path, data in files.items():
        h = blob_hasher()
        h.update(data)
        key = h.hexdigest()
        blobs[str(store.blobs.path(key))] = data
        changes[path] = FileEntry(key, len(data), when)
        keys[path] = key
    for parent in {os.path.dirname(p) for p in blobs}:
        os.makedirs(parent, exist_ok=True)

    def write(batch: list[tuple[str, bytes]]) -> None:
        for blob_path, data in batch:
            fd = os.open(blob_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    items = list(blobs.items())
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(write, [items[k::4] for k in range(4)]))
    project.write_commit(changes, f"load: {len(files)} files")
    return keys


def big_chunks(size: int, seed: int) -> Iterator[bytes]:
    """`size` bytes, 1 MiB at a time, every MiB distinct (an 8-byte counter + a seeded pattern)."""
    base = hashlib.sha256(f"seed{seed}".encode()).digest() * (MiB // 32)
    sent = 0
    n = 0
    while sent < size:
        chunk = (n.to_bytes(8, "little") + base[8:])[: min(MiB, size - sent)]
        sent += len(chunk)
        n += 1
        yield chunk


def add_big_file(store: Store, project: Project, path: str, size: int, seed: int = 1) -> str:
    """Stream a `size`-byte blob into the store (hashed on the way) and commit it; its key."""
    tmp = store.root / "tmp" / f"big-{seed}"
    h = blob_hasher()
    with open(tmp, "wb") as f:
        for chunk in big_chunks(size, seed):
            h.update(chunk)
            f.write(chunk)
    key = h.hexdigest()
    target = store.blobs.path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    project.write_commit({path: FileEntry(key, size, now_ms())}, f"load: {path}")
    return key
