"""The systemd user units pass `systemd-analyze verify` with no output at all."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"


@pytest.mark.parametrize("unit", ["dominofs-sync@.service", "dominofs-mount@.service"])
def test_unit_verifies_cleanly(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (./scripts/test installs it)")
    home = tmp_path / "home"
    bindir = home / ".local" / "bin"
    bindir.mkdir(parents=True)
    stub = bindir / "dominofs"  # %h/.local/bin/dominofs must exist and be executable
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    conf = home / ".config" / "dominofs"
    conf.mkdir(parents=True)
    (conf / "test.env").write_text("PROJECT=alice/demo\nDIR=/tmp\nMOUNTPOINT=/tmp\n")
    unitdir = tmp_path / "units"
    unitdir.mkdir()
    instance = unit.replace("@.", "@test.")
    shutil.copy(UNITS / unit, unitdir / unit)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(runtime),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "SYSTEMD_LOG_LEVEL": "notice",
    }
    result = subprocess.run(
        [analyze, "--user", "verify", "--man=no", str(unitdir / instance)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    output = (result.stdout + result.stderr).strip()
    assert output == "", output
    assert result.returncode == 0


def test_units_use_absolute_paths_and_notify() -> None:
    for unit in ("dominofs-sync@.service", "dominofs-mount@.service"):
        text = (UNITS / unit).read_text()
        assert "Type=notify" in text
        assert "NotifyAccess=main" in text
        assert "Restart=on-failure" in text
        assert "EnvironmentFile=%h/.config/dominofs/%i.env" in text
        for line in text.splitlines():
            if line.startswith(("ExecStart=", "ExecStop=")):
                cmd = line.split("=", 1)[1]
                assert cmd.startswith(("/", "%h/")), line
                assert "/usr/bin/env" not in cmd
    assert "WatchdogSec=" in (UNITS / "dominofs-sync@.service").read_text()
