"""Fixtures for domino:// tests: one real local server per module, and filesystems on it.

`dfs` is a filesystem with explicit host and key file (no environment); `domino_env` sets the
environment a URL-only caller (pandas, dask) relies on, with a config home of its own so the
developer's own ~/.config/dominofs never takes part.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dominofs.fsspecfs import DominoFileSystem
from tests.conftest import ALICE_KEY, LocalServer
from tests.load.build import add_small_files, open_store, small_content, tree_path

MANY = 2_000  # files of alice/many, all in its second commit, 100 to a folder


@pytest.fixture(scope="module")
def fsrv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """alice/demo (new), alice/other (new) and alice/many (MANY files, built offline)."""
    data = tmp_path_factory.mktemp("fsspec") / "data"
    store = open_store(data)
    add_small_files(
        store,
        store.add_project("alice/many"),
        {tree_path(i): small_content(i) for i in range(MANY)},
    )
    server = LocalServer(data, ["--project", "alice/other"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fsspec-key") / "key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(ALICE_KEY + "\n")
    return path


@pytest.fixture(scope="module")
def domino_env(fsrv: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("fsspec-home")
    # fsspec keeps one instance per set of options: one made for another module's server
    # (the same no options, another environment) must not answer here.
    DominoFileSystem.clear_instance_cache()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOMINO_API_HOST", fsrv.url)
        mp.setenv("DOMINO_USER_API_KEY", ALICE_KEY)
        mp.setenv("XDG_CONFIG_HOME", str(home / "config"))
        mp.setenv("DOMINOFS_CACHE_DIR", str(home / "cache"))
        yield
    DominoFileSystem.clear_instance_cache()


@pytest.fixture
def dfs(fsrv: LocalServer, key_file: Path) -> DominoFileSystem:
    return DominoFileSystem(host=fsrv.url, api_key_file=str(key_file), skip_instance_cache=True)


class Requests:
    """What the server was asked for since the last `take()`, by route (GET files, ...)."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self._last = self._now()

    def _now(self) -> dict[str, int]:
        counts = self.server.stats()["requests"]
        assert isinstance(counts, dict)
        return {str(k): int(v) for k, v in counts.items() if not str(k).endswith(" stats")}

    def take(self) -> dict[str, int]:
        """Requests since the last take (the stats reads themselves not counted)."""
        now = self._now()
        out = {k: v - self._last.get(k, 0) for k, v in now.items() if v != self._last.get(k, 0)}
        self._last = now
        return out


@pytest.fixture
def asked(fsrv: LocalServer) -> Requests:
    return Requests(fsrv)


@pytest.fixture
def folder() -> str:
    """A project folder no other test uses."""
    return f"alice/demo/t-{uuid.uuid4().hex[:10]}"
