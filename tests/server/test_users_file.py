"""Users and keys reach the server through a private file or the environment, never argv."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.conftest import write_users_file

from .conftest import Srv

CAROL = "carol-secret-key-31337"
ENTRY_POINTS = {
    "python -m dominofs.server": [sys.executable, "-m", "dominofs.server"],
    "dominofs serve": [sys.executable, "-m", "dominofs", "serve"],
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_readable_users_file_is_refused(tmp_path: Path, entry: str, mode: int) -> None:
    users = write_users_file(tmp_path / "users", {"carol": CAROL})
    os.chmod(users, mode)
    cmd = [*ENTRY_POINTS[entry], "--data", str(tmp_path / "data"), "--port", "0"]
    proc = subprocess.run(
        [*cmd, "--users-file", str(users)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "readable by others" in lines[0]
    assert "chmod 600" in lines[0]
    assert CAROL not in proc.stderr


def test_missing_or_malformed_users_file_is_one_line(tmp_path: Path) -> None:
    bad = write_users_file(tmp_path / "bad", {})
    bad.write_text(f"# comment\n\ncarol{CAROL}\n")
    cmd = [sys.executable, "-m", "dominofs.server", "--data", str(tmp_path / "d"), "--port", "0"]
    for path, expected in ((tmp_path / "absent", "No such file"), (bad, "line 3")):
        proc = subprocess.run(
            [*cmd, "--users-file", str(path)], capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 2
        assert expected in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert CAROL not in proc.stderr


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _assert_carol_works(server: Srv) -> None:
    assert server.proc is not None
    assert CAROL not in _cmdline(server.proc.pid)
    url = f"{server.project_url('carol/notes')}/commits"
    assert requests.get(url, headers={"X-Domino-Api-Key": CAROL}, timeout=10).status_code == 200
    wrong = requests.get(url, headers={"X-Domino-Api-Key": CAROL + "x"}, timeout=10)
    assert wrong.status_code == 401


def test_users_file_keys_are_accepted(tmp_path: Path, start_server: Callable[..., Srv]) -> None:
    users = tmp_path / "carol.users"
    users.touch(0o600)
    users.write_text(f"# test users\n\ncarol:{CAROL}\n")
    server = start_server("--users-file", str(users), "--project", "carol/notes")
    _assert_carol_works(server)


def test_users_from_environment(
    start_server: Callable[..., Srv], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOMINOFS_SERVE_USERS", f"dave:dave-key, carol:{CAROL}")
    server = start_server("--project", "carol/notes")
    _assert_carol_works(server)
    url = f"{server.project_url('carol/notes')}/commits"
    assert requests.get(url, headers={"X-Domino-Api-Key": "dave-key"}, timeout=10).status_code in (
        403,
        404,
    )
