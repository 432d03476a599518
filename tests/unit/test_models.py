"""Records, project names and the path cleaning every listing goes through."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dominofs import errors
from dominofs.models import ProjectRef, clean_relpath


def test_project_ref_parses_and_rejects() -> None:
    assert ProjectRef.parse("alice/churn") == ProjectRef("alice", "churn")
    assert str(ProjectRef.parse("a.b/c-d_e")) == "a.b/c-d_e"
    for bad in ["alice", "alice/", "/churn", "a/b/c", "a b/c", "../x", ""]:
        with pytest.raises(errors.UsageError, match="OWNER/PROJECT"):
            ProjectRef.parse(bad)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("a/b.csv", "a/b.csv"),
        ("//a//b/", "a/b"),
        ("/README.md", "README.md"),
        ("../etc/passwd", None),
        ("a/../b", None),
        ("a/./b", None),
        ("a\0b", None),
        ("", None),
        ("/", None),
        ("x" * 256, None),
        ("é" * 127, "é" * 127),
        ("é" * 128, None),
        (None, None),
        (5, None),
    ],
)
def test_clean_relpath(raw: object, clean: str | None) -> None:
    assert clean_relpath(raw) == clean


@given(st.text())
def test_clean_relpath_never_escapes(raw: str) -> None:
    out = clean_relpath(raw)
    if out is not None:
        parts = out.split("/")
        assert all(p not in ("", ".", "..") for p in parts)
        assert "\0" not in out
        assert not out.startswith("/")


def test_errors_carry_errno_and_one_line() -> None:
    e = errors.NotFound("no such\nfile   here")
    assert isinstance(e, OSError)
    assert e.errno == errno.ENOENT
    assert str(e) == "no such file here"
    assert errors.Unreachable("x").errno == errno.EIO
    assert errors.ReadOnly("x").errno == errno.EROFS
    codes = {c.exit_code for c in (errors.UsageError, errors.AuthError, errors.NotFound,
                                   errors.Unreachable)}  # fmt: skip
    assert len(codes) == 4
