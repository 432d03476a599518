"""Read-ahead across files through a real mount: a program reading a folder's files in turn has
the next ones fetched ahead of it, within the budget; stat-only walks fetch nothing."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.mount.conftest import Env, wait_for

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(90)]

N = 40


def _files(env: Env, n: int = N) -> dict[str, bytes]:
    files = {f"data/f{i:03d}.csv": f"row,{i}\n".encode() * 50 for i in range(n)}
    for path, data in files.items():
        env.remote.upload(path, io.BytesIO(data), size=len(data))
    return files


def _prefetch(mp: Path) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((mp / ".dominofs" / "status.json").read_text())
    return dict(status["prefetch"])


def test_a_folder_scan_is_fetched_ahead_once_per_blob(fenv: Env) -> None:
    files = _files(fenv)
    m = fenv.mount("--poll-interval", "0", "--read-only")
    fenv.server.reset_stats()
    out = subprocess.run(f"cat {m.path}/data/*", shell=True, capture_output=True, check=True)
    assert out.stdout == b"".join(files[p] for p in sorted(files))
    p = wait_for(lambda: (s := _prefetch(m.path))["used"] > N // 2 and s, what="read ahead")
    assert p["started"] >= N // 2
    assert p["ahead_bytes"] <= p["budget_bytes"]
    assert fenv.server.requests_count("GET blobs") == N  # each blob once, ahead or not


def test_stat_only_walks_and_random_reads_fetch_little(fenv: Env) -> None:
    files = _files(fenv)
    m = fenv.mount("--poll-interval", "0", "--read-only")
    fenv.server.reset_stats()
    for cmd in ("ls -lR", "find", "du -s"):
        subprocess.run(f"{cmd} {m.path} > /dev/null", shell=True, check=True)
    for p in files:
        os.stat(m.path / p)
    assert fenv.server.requests_count("GET blobs") == 0
    assert _prefetch(m.path)["started"] == 0
    order = sorted(files)
    random.Random(3).shuffle(order)
    for p in order:
        assert (m.path / p).read_bytes() == files[p]
    assert fenv.server.requests_count("GET blobs") == N
    assert _prefetch(m.path)["started"] < N // 2  # a random order earns short windows


def test_prefetch_can_be_switched_off(fenv: Env) -> None:
    _files(fenv, 10)
    m = fenv.mount("--poll-interval", "0", "--read-only", "--prefetch", "0")
    subprocess.run(f"cat {m.path}/data/* > /dev/null", shell=True, check=True)
    assert _prefetch(m.path)["started"] == 0
    r = fenv.cli("mount", "alice/demo", str(fenv.root), "--prefetch-size", "lots")
    assert r.returncode == 2
    assert "is not a size" in r.stderr
