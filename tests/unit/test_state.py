"""The per-folder state database: rows survive reopening; metadata; the stat fast path."""

from __future__ import annotations

from pathlib import Path

from dominofs.state import FileState, StateDB


def test_rows_survive_reopen(tmp_path: Path) -> None:
    db_path = tmp_path / "s" / "state.db"
    with StateDB(db_path) as db:
        db.put(FileState("a.txt", "k1", "h1", 3, 100, 7))
        db.put_many([FileState(f"d/{i}", f"k{i}", "h", i, i, i) for i in range(10)])
        db.head = "c1"
        db.set_meta("root_dev", "42")
    with StateDB(db_path) as db:
        row = db.get("a.txt")
        assert row == FileState("a.txt", "k1", "h1", 3, 100, 7, base_key="k1")
        assert db.count() == 11
        assert "d/3" in db.paths()
        assert db.head == "c1"
        assert db.get_meta("root_dev") == "42"
        db.remove("a.txt")
        db.head = None
        assert db.get("a.txt") is None
        assert db.head is None
        assert db.count() == 10


def test_replace_and_base_key(tmp_path: Path) -> None:
    with StateDB(tmp_path / "state.db") as db:
        db.put(FileState("a", "k1", "h1", 1, 1, 1))
        db.put(FileState("a", "k2", "h2", 2, 2, 2, base_key="k1"))
        row = db.get("a")
        assert row is not None
        assert (row.key, row.base_key, row.sha256) == ("k2", "k1", "h2")
        assert [r.path for r in db.all()] == ["a"]


def test_same_stat_fast_path() -> None:
    row = FileState("a", "k", "h", 10, 123, 5)
    assert row.same_stat(10, 123, 5)
    assert not row.same_stat(10, 124, 5)  # mtime moved
    assert not row.same_stat(11, 123, 5)  # size moved
    assert not row.same_stat(10, 123, 6)  # replaced by rename
