"""Pure helpers of the server: request-target parsing, file paths, ignore patterns, commit ids."""

from __future__ import annotations

import pytest

from dominofs.server.commits import FileEntry, commit_id_for
from dominofs.server.httpio import ApiError, file_path, split_target
from dominofs.server.runner import is_ignored, parse_patterns
from dominofs.server.store import DOMINOIGNORE_TEXT

DEFAULT_PATTERNS = parse_patterns(DOMINOIGNORE_TEXT)


def test_split_target_decodes_and_collapses() -> None:
    assert split_target("/v1//projects/a/b/files/c//x%20y/?q=1") == [
        "v1", "projects", "a", "b", "files", "c", "x y",
    ]  # fmt: skip
    assert split_target("/a+b/%2Bc") == ["a+b", "+c"]
    assert split_target("http://host:1/v1/x") == ["v1", "x"]


@pytest.mark.parametrize("segs", [[".."], ["a", "."], ["a\x00b"], ["a/../b"]])
def test_file_path_rejects(segs: list[str]) -> None:
    with pytest.raises(ApiError) as info:
        file_path(segs)
    assert info.value.status == 400


def test_file_path_joins_and_strips() -> None:
    assert file_path(["a", "b/c", "d"]) == "a/b/c/d"
    assert file_path([]) == ""


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("x.pyc", True),
        ("deep/dir/x.pyc", True),
        ("results/run-3/out.txt", True),
        ("results/out.txt", False),
        (".git/config", True),
        ("sub/__pycache__/m.cpython-311.pyc", True),
        ("dominodump-1.tar", True),
        ("~backup", True),
        ("notes.txt", False),
        (".idea/workspace.xml", True),
    ],
)
def test_default_ignore_patterns(path: str, ignored: bool) -> None:
    assert is_ignored(path, DEFAULT_PATTERNS) is ignored


def test_commit_id_is_canonical() -> None:
    files = {"b": FileEntry("1" * 40, 1, 5), "a": FileEntry("2" * 40, 2, 6)}
    reordered = dict(reversed(list(files.items())))
    first = commit_id_for(None, 1, "m", files)
    assert first == commit_id_for(None, 1, "m", reordered)
    assert len(first) == 40
    assert first != commit_id_for(None, 2, "m", files)
