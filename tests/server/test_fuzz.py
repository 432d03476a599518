"""Hypothesis fuzz of routes: random targets, methods, keys and bodies never give a 5xx, and
every error is JSON {"message": ...}."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import ALICE, BOB, Srv

TOKENS = [
    "v1", "projects", "alice", "fuzz", "bob", "private", "files", "blobs", "runs", "run",
    "stdout", "commits", "endpoint", "state", "publishRelease", "search", "head", "version",
    "_stats", "reset", "v4", "gateway", "api", "content", "findProjectByOwnerAndName",
    "..", ".", "%00", "%2F", "%ZZ", "%C3%A9", "%FF", "", "0" * 40, "0" * 24, "a+b", "%2e%2e",
]  # fmt: skip

segment = st.one_of(
    st.sampled_from(TOKENS),
    st.text(min_size=1, max_size=8).map(lambda t: quote(t, safe="")),
)
targets = st.one_of(
    st.lists(segment, max_size=7).map(lambda segs: "/" + "/".join(segs)),
    st.lists(segment, max_size=4).map(lambda segs: "/v1/projects/alice/fuzz/" + "/".join(segs)),
)
queries = st.one_of(
    st.just(""),
    st.dictionaries(
        st.sampled_from(["query", "area", "previewNumberOfLines", "ownerName", "projectName"]),
        st.text(max_size=6),
        max_size=3,
    ).map(lambda d: "?" + "&".join(f"{k}={quote(v)}" for k, v in d.items())),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"command": json_values, "isDirect": json_values, "commitId": json_values}
    ).map(lambda v: json.dumps(v).encode()),
)


@pytest.fixture(scope="module")
def fuzz_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Srv]:
    # A short run time limit: a fuzzed POST /runs may start any command at all.
    server = Srv(
        tmp_path_factory.mktemp("fuzz"), ["--project", "alice/fuzz", "--run-time-limit", "2"]
    )
    server.start()
    yield server
    assert server.stop() == 0


@settings(max_examples=100, deadline=None)
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
    target=targets,
    query=queries,
    body=bodies,
    key=st.sampled_from([ALICE, BOB, "wrong", None]),
)
def test_routes_never_5xx_and_errors_are_json(
    fuzz_srv: Srv, method: str, target: str, query: str, body: bytes | None, key: str | None
) -> None:
    parts = urlsplit(fuzz_srv.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    headers = {"X-Domino-Api-Key": key} if key else {}
    try:
        conn.request(method, target + query, body=body, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    assert resp.status < 500, (resp.status, payload)
    if resp.status >= 400 and method != "HEAD":
        assert resp.getheader("Content-Type", "").startswith("application/json")
        assert isinstance(json.loads(payload)["message"], str)
