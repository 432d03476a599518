"""`dominofs demo --for N`: the main job end to end, and it leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.fuse
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_demo_runs_end_to_end_and_cleans_up(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.run(
        [sys.executable, "-m", "dominofs", "demo", "--for", "1", str(mnt)],
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert f"mounted at {mnt}" in out
    assert "data/points.csv" in out
    assert "id,x,y" in out  # a file was read through the mount
    assert "is Succeeded" in out  # a run was started by writing .runs/start
    assert '"rmse"' in out  # and its output commit appeared in the mount
    assert "demo stopped" in out
    assert str(mnt) not in Path("/proc/mounts").read_text()
    assert list(mnt.iterdir()) == []


def test_demo_rejects_a_missing_mount_point(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "dominofs", "demo", "--for", "1", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert "does not exist" in p.stderr
    assert "Traceback" not in p.stderr
