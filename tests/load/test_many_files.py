"""A 100,000-file project through a real mount: the walk, `ls -R` and memory (issue 7, Load)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from dominofs.server.store import Store
from tests.load.build import add_small_files, small_content, tree_path
from tests.load.conftest import LoadEnv, rss_kib

pytestmark = [pytest.mark.slow, pytest.mark.fuse, pytest.mark.timeout(240)]

FILES = 100_000
RSS_LIMIT_MB = 300
HIDDEN = (".runs", ".dominofs")  # the mount's own folders, not project files


def walk_stat(root: Path) -> dict[str, int]:
    """os.walk + os.stat of every project file: relative path -> size."""
    out: dict[str, int] = {}
    for dirpath, dirs, files in os.walk(root):
        if dirpath == str(root):
            dirs[:] = [d for d in dirs if d not in HIDDEN]
        rel = os.path.relpath(dirpath, root)
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.normpath(os.path.join(rel, name))] = st.st_size
    return out


def ls_r(root: Path) -> set[str]:
    """Every path `ls -R` prints (dot-files excluded, as ls does), relative to root."""
    proc = subprocess.run(
        ["ls", "-R", "-1", str(root)], capture_output=True, text=True, check=True, timeout=120
    )
    out: set[str] = set()
    current = ""
    for line in proc.stdout.splitlines():
        if line.endswith(":") and line.startswith(str(root)):
            current = os.path.relpath(line[:-1], root)
        elif line:
            out.add(os.path.normpath(os.path.join(current, line)))
    return out


def test_100000_file_project_walk_ls_and_memory(load_env: LoadEnv) -> None:
    files = {tree_path(i): small_content(i) for i in range(FILES)}

    def build(store: Store) -> None:
        add_small_files(store, store.add_project("alice/load"), files)

    env = load_env(build, ram=512 << 20)
    env.server.reset_stats()
    t = time.monotonic()
    m = env.mount("--poll-interval", "0", project="alice/load")
    mount_s = time.monotonic() - t
    at_mount = env.server.requests_count("GET files")
    assert m.proc is not None

    t = time.monotonic()
    seen = walk_stat(m.path)
    walk_s = time.monotonic() - t
    generated = {p: size for p, size in seen.items() if p.startswith("d")}
    assert len(generated) == FILES
    assert generated == {p: len(data) for p, data in files.items()}
    assert set(seen) - set(generated) == {"README.md", ".dominoignore"}

    listed = ls_r(m.path)
    visible_dirs = {os.path.dirname(p) for p in files} | {p.split("/")[0] for p in files}
    assert listed == (set(files) | visible_dirs | {"README.md"})

    # One listing of the whole commit, at mount time; the walk, the stats and ls -R ask nothing.
    assert at_mount == 1
    assert env.server.requests_count("GET files") == 1, env.server.stats()
    # At most the project's .dominoignore (the mount reads its rules); no file's bytes.
    assert env.server.requests_count("GET blobs") <= 1

    rss_mb = rss_kib(m.proc.pid) / 1024
    assert 0 < rss_mb <= RSS_LIMIT_MB, (
        f"mount RSS {rss_mb:.0f} MB with {FILES:,} files (mount {mount_s:.1f}s, walk {walk_s:.1f}s)"
    )
