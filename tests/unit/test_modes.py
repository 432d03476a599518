"""The mount's mode journal: one line per change, read back after a restart or a crash."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dominofs import modes
from dominofs.modes import LEGACY_NAME, ModeJournal


def test_changes_are_appended_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "modes.jsonl"
    j = ModeJournal(path)
    j.record("/a.sh", 0o755)
    inode = path.stat().st_ino
    for i in range(500):
        j.record(f"/d/f{i}", 0o600)
    j.record("/a.sh", 0o700)
    j.record("/d/f3", None)  # back to the default
    j.record("/d/f4", 0o600)  # unchanged: no line
    # Appended, never rewritten: the same file, one line per change (this was a full rewrite
    # of every mode per change, quadratic for `chmod -R`).
    assert path.stat().st_ino == inode
    assert len(path.read_text().splitlines()) == 1 + 500 + 2
    j.close()
    again = ModeJournal(path)
    assert again.modes == {"/a.sh": 0o700, **{f"/d/f{i}": 0o600 for i in range(500) if i != 3}}
    again.close()


def test_a_torn_last_line_is_skipped_and_not_appended_after(tmp_path: Path) -> None:
    path = tmp_path / "modes.jsonl"
    path.write_text(json.dumps(["/a", 0o755]) + "\n" + '["/b", 4')
    j = ModeJournal(path)
    assert j.modes == {"/a": 0o755}
    j.record("/c", 0o700)
    j.close()
    assert ModeJournal(path).modes == {"/a": 0o755, "/c": 0o700}


def test_the_older_single_file_is_taken_over(tmp_path: Path) -> None:
    legacy = tmp_path / LEGACY_NAME
    legacy.write_text(json.dumps({"/run.sh": {"mode": 0o755}, "/x": {"mtime": 5}}))
    j = ModeJournal(tmp_path / "modes.jsonl")
    assert j.modes == {"/run.sh": 0o755}
    assert not legacy.exists()
    j.record("/y", 0o700)
    j.close()
    assert ModeJournal(tmp_path / "modes.jsonl").modes == {"/run.sh": 0o755, "/y": 0o700}


def test_a_journal_mostly_of_stale_lines_is_compacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modes, "_SLACK", 10)
    path = tmp_path / "modes.jsonl"
    j = ModeJournal(path)
    for i in range(40):
        j.record("/same", 0o700 if i % 2 else 0o755)
    lines = path.read_text().splitlines()
    assert len(lines) <= 2 * 1 + 10 + 1
    assert j.modes == {"/same": 0o700}
    j.close()
    assert ModeJournal(path).modes == {"/same": 0o700}
    assert not os.path.exists(str(path) + ".tmp")
