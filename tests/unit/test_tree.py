"""tree.py: folders derived from a flat listing, the diff between snapshots, persistence."""

from __future__ import annotations

from pathlib import Path

from dominofs.models import RemoteFile
from dominofs.tree import Tree


def rf(path: str, key: str = "k", size: int = 1, mtime: int = 1000) -> RemoteFile:
    return RemoteFile(path=path, size=size, mtime_ms=mtime, key=key)


def test_folders_are_derived_from_file_paths() -> None:
    tree = Tree("c1", [rf("a.txt"), rf("d/e/f.csv"), rf("d/g.txt"), rf("d/e/h/i.bin")])
    assert tree.children("") == ("a.txt", "d")
    assert tree.children("d") == ("e", "g.txt")
    assert tree.children("d/e") == ("f.csv", "h")
    assert tree.children("d/e/h") == ("i.bin",)
    assert tree.is_dir("d/e")
    assert not tree.is_dir("d/g.txt")
    assert tree.file("d/g.txt") == rf("d/g.txt")
    assert tree.file("d") is None
    assert tree.children("a.txt") is None
    assert len(tree) == 4


def test_a_name_that_is_both_file_and_folder_is_a_folder() -> None:
    tree = Tree("c1", [rf("x"), rf("x/y")])
    assert tree.is_dir("x")
    assert tree.file("x") is None
    assert tree.file("x/y") is not None
    tree = Tree("c1", [rf("x/y"), rf("x")])
    assert tree.is_dir("x")
    assert tree.file("x") is None


def test_unsafe_paths_are_dropped() -> None:
    tree = Tree("c1", [rf("../etc/passwd"), rf("/abs"), rf("ok//b")])
    assert sorted(tree.files) == ["abs", "ok/b"]


def test_empty_tree_has_a_root() -> None:
    tree = Tree("c0", [])
    assert tree.children("") == ()
    assert tree.is_dir("")


def test_diff_reports_only_what_changed() -> None:
    old = Tree("c1", [rf("a", "k1"), rf("b/c", "k2"), rf("b/d", "k3"), rf("gone/x", "k4")])
    new = Tree("c2", [rf("a", "k1"), rf("b/c", "k9"), rf("b/d", "k3"), rf("new/y/z", "k5")])
    diff = old.diff(new)
    assert diff.changed == {"b/c"}
    assert diff.added == {"new/y/z"}
    assert diff.removed == {"gone/x"}
    assert diff.dirs_added == {"new", "new/y"}
    assert diff.dirs_removed == {"gone"}
    assert "a" not in diff.touched()
    assert "b/d" not in diff.touched()
    assert {"b/c", "new/y/z", "gone/x", "", "new/y"} <= diff.touched()
    assert old.diff(old).empty


def test_size_or_mtime_change_is_a_change() -> None:
    old = Tree("c1", [rf("a", "k", size=1), rf("b", "k", mtime=1)])
    new = Tree("c2", [rf("a", "k", size=2), rf("b", "k", mtime=2)])
    assert old.diff(new).changed == {"a", "b"}


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    tree = Tree("c1", [rf("a", "k1", 10, 5), rf("d/b", "k2", 20, 6)])
    target = tmp_path / "listing.json"
    tree.save(target)
    loaded = Tree.load(target)
    assert loaded is not None
    assert loaded.commit_id == "c1"
    assert loaded.files == tree.files
    assert loaded.children("d") == ("b",)
    assert oct(target.stat().st_mode & 0o777) == oct(0o600)


def test_load_of_missing_or_corrupt_listing_is_none(tmp_path: Path) -> None:
    assert Tree.load(tmp_path / "missing.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert Tree.load(bad) is None
    bad.write_text('{"format": 99, "commit": "c", "files": []}')
    assert Tree.load(bad) is None
