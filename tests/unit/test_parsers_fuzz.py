"""Hypothesis fuzz of the client's parsers: hostile server answers never crash the client.

parse_listing and parse_run may only raise errors.DominoError, and every path parse_listing
returns is safe to join under a local folder: relative, no `.`/`..`/empty segment, no NUL, each
name at most 255 bytes, no duplicates, and no name that is both a file and a folder.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dominofs import errors
from dominofs.api import DominoClient, parse_listing, parse_run
from dominofs.models import RemoteFile, Run
from tests.client.hostile import Answer, hostile_server

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEGMENTS = [
    "a", "b", "data", "..", ".", "", " ", "\x00", "a\x00b", "x" * 255, "y" * 256, "é" * 128,
    "\ud800", "\udcff", "C:", "\\", "..\\..", "~", "$HOME", "\n", "%2e%2e", "a/../..",
]  # fmt: skip

segment = st.one_of(st.sampled_from(SEGMENTS), st.text(max_size=12))
paths = st.one_of(
    st.lists(segment, max_size=6).map("/".join),
    st.lists(segment, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s)),
    st.lists(segment, max_size=4).map(lambda s: "//".join(s) + "/"),
    st.text(max_size=40),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
    st.sampled_from([-1, 0, 1, 1 << 50, (1 << 50) + 1, 1 << 63, 1 << 200, "12", 1.5, True]),
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
keys = st.one_of(
    st.sampled_from(["a" * 40, "b" * 40, "0" * 40, "", "../x", "a/b", "k?x", "k#", "k%2F", " "]),
    st.text(max_size=45),
    scalars,
)
entries = st.one_of(
    st.fixed_dictionaries(
        {"path": paths, "size": scalars, "key": keys},
        optional={"lastModified": scalars, "url": json_values, "extra": json_values},
    ),
    json_values,
)
listings = st.one_of(
    st.lists(entries, max_size=12),
    st.lists(entries, max_size=12).map(lambda d: {"objectType": "list", "data": d}),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    json_values,
)


def assert_safe(files: list[RemoteFile]) -> None:
    seen: set[str] = set()
    for f in files:
        assert isinstance(f, RemoteFile)
        p = f.path
        assert isinstance(p, str)
        assert p
        assert not p.startswith("/")
        assert "\x00" not in p
        parts = p.split("/")
        assert all(part not in ("", ".", "..") for part in parts), p
        assert all(len(part.encode("utf-8", "surrogateescape")) <= 255 for part in parts), p
        root = "/tmp/dominofs-fuzz-root"
        assert os.path.normpath(os.path.join(root, p)).startswith(root + "/"), p
        assert p not in seen, p
        seen.add(p)
        assert isinstance(f.size, int)
        assert 0 <= f.size <= 1 << 50
        assert isinstance(f.key, str)
        assert f.key
        assert "/" not in f.key
        assert "\x00" not in f.key
        assert isinstance(f.mtime_ms, int)
        assert f.mtime_ms >= 0
    for p in seen:  # a name is a file or a folder, never both
        assert not any(other.startswith(p + "/") for other in seen), p
    assert [f.path for f in files] == sorted(seen)


@FUZZ
@given(listings)
@example([{"path": "\ud800", "size": 1, "key": "a" * 40}])
@example([{"path": "a", "size": 1, "key": "k"}, {"path": "a/b", "size": 1, "key": "k"}])
@example({"data": [{"path": "../../etc/passwd", "size": 1, "key": "k"}]})
def test_parse_listing_never_crashes_and_never_returns_an_unsafe_path(data: Any) -> None:
    try:
        files = parse_listing(data, host="http://fuzz", what="files")
    except errors.DominoError:
        return
    assert_safe(files)


RUN_FIELDS = ("number", "status", "title", "commitId", "outputCommitId", "queued", "started",
              "completed", "isCompleted")  # fmt: skip
runs = st.one_of(
    st.fixed_dictionaries(
        {"id": st.one_of(st.text(max_size=10), scalars)},
        optional={name: json_values for name in RUN_FIELDS},
    ),
    json_values,
)


@FUZZ
@given(runs)
@example({})
@example({"id": None})
@example([1, 2])
@example("not a run")
def test_parse_run_raises_only_domino_errors(data: Any) -> None:
    try:
        run = parse_run(data)
    except errors.DominoError:
        return
    assert isinstance(run, Run)
    assert isinstance(run.id, str)
    assert isinstance(run.status, str)
    for value in (run.number, run.queued_ms, run.started_ms, run.completed_ms):
        assert value is None or (isinstance(value, int) and not isinstance(value, bool))
    for text in (run.title, run.commit_id, run.output_commit_id):
        assert text is None or isinstance(text, str)


@pytest.mark.parametrize(
    "body",
    [b"[" * 200_000, b'{"a":' * 100_000, b"\xff\xfe not utf-8", b"", b"null", b"1e999999"],
    ids=["deep-list", "deep-object", "not-utf8", "empty", "null", "huge-float"],
)
def test_hostile_json_bodies_are_server_errors(body: bytes) -> None:
    with hostile_server([Answer(200, body)] * 3) as srv, DominoClient(srv.url, "k") as c:
        project = c.project("alice/demo")
        for call in (project.commits, lambda: project.list_files("a" * 40), project.list_runs):
            with pytest.raises(errors.DominoError):
                call()
