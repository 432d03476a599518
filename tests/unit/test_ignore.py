"""Ignore rules: editors' temporary files, private folders, and .dominoignore (gitignore syntax)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dominofs.ignore import IgnoreRules, is_always_ignored, is_editor_temp

TEMP_NAMES = [
    ".report.py.swp", ".report.py.swo", ".report.py.swx", "4913", "5036", "5159",
    "report.py~", "#report.py#", ".#report.py", "report.py___jb_tmp___",
    "report.py___jb_old___", ".goutputstream-ABC123", ".~lock.sheet.ods#", "~$report.docx",
    "sedAb12Cd", "settings.json.vsctmp", ".~notebook.ipynb",
]  # fmt: skip

REAL_NAMES = [
    "report.py", "4914", "2024", "49130", "data.csv", "sed.txt", "sedimentary", "swp.py",
    "notes.md", ".dominoignore", ".dominokeep", "#hashtag.txt", "lock.ods",
]  # fmt: skip


@pytest.mark.parametrize("name", TEMP_NAMES)
def test_editor_temp_names_are_ignored(name: str) -> None:
    assert is_editor_temp(name)
    assert IgnoreRules().is_ignored(f"dir/{name}")


@pytest.mark.parametrize("name", REAL_NAMES)
def test_real_names_are_kept(name: str) -> None:
    assert not is_editor_temp(name)
    assert not IgnoreRules().is_ignored(f"dir/{name}")


@pytest.mark.parametrize(
    "path", [".dominofs", ".dominofs/status.json", ".git/HEAD", "sub/.git/config", "a/.dominofs/x"]
)
def test_private_folders_always_ignored(path: str) -> None:
    assert is_always_ignored(path)
    # No pattern can re-include them.
    assert IgnoreRules(["!.git/", "!.dominofs/"]).is_ignored(path)


def test_dominoignore_gitignore_syntax(tmp_path: Path) -> None:
    (tmp_path / ".dominoignore").write_text(
        "# comment\n*.log\n!keep.log\nbuild/\n/top.txt\nresults/run-*/\n"
    )
    rules = IgnoreRules.for_root(tmp_path)
    assert rules.is_ignored("a.log")
    assert rules.is_ignored("deep/b.log")
    assert not rules.is_ignored("keep.log")
    assert rules.is_ignored("build/out.bin")
    assert rules.is_ignored("x/build/out.bin")
    assert rules.is_ignored("build", is_dir=True)
    assert not rules.is_ignored("build")  # a file named build is not the folder
    assert rules.is_ignored("top.txt")
    assert not rules.is_ignored("sub/top.txt")
    assert rules.is_ignored("results/run-3/model.pkl")
    assert not rules.is_ignored("results/final.csv")
    assert not rules.is_ignored("main.py")


def test_missing_ignore_file_means_builtins_only(tmp_path: Path) -> None:
    rules = IgnoreRules.for_root(tmp_path)
    assert rules.patterns == []
    assert not rules.is_ignored("a.log")
    assert rules.is_ignored("a.log~")
