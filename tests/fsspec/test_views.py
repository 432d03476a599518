"""A listing with this process's own changes laid over it (listings.View), without a server."""

from __future__ import annotations

from dominofs.fsspecfs.listings import View
from dominofs.models import RemoteFile
from dominofs.tree import Tree


def f(path: str, key: str = "k") -> RemoteFile:
    return RemoteFile(path=path, size=1, mtime_ms=1, key=key)


def test_changes_answer_point_questions_and_merge_for_listings() -> None:
    base = View(Tree("c1", [f("a/x"), f("a/y"), f("b/z"), f("top")]))
    changes = {"a/x": None, "a/y": None, "new/deep/n": f("new/deep/n"), "b/z": f("b/z", "k2")}
    view = View(base.listing, changes, base)
    assert view.file("a/x") is None
    assert view.file("top") == f("top")
    assert view.file("b/z") == f("b/z", "k2")
    assert not view.is_dir("a")  # every file of it deleted here
    assert view.is_dir("new")
    assert view.is_dir("new/deep")
    assert view.is_dir("b")
    assert not view.is_dir("top")
    assert not view.is_dir("nothing")
    assert view.commit_of("new/deep/n") is None
    assert view.commit_of("top") == "c1"
    assert view.children("") == ("b", "new", "top")
    assert view.files_under("") == ["b/z", "new/deep/n", "top"]
    assert view.files_under("new") == ["new/deep/n"]
    assert view.is_dir("new")
    assert not view.is_dir("a")


def test_a_view_without_changes_is_its_listing() -> None:
    tree = Tree("c1", [f("a/x")])
    view = View(tree)
    assert view.tree is tree
    assert view.files_under("a") == ["a/x"]
    assert view.is_dir("")
    assert view.is_dir("a")
    assert not view.is_dir("a/x")
