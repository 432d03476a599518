"""fsspec's own shared suite for implementations (fsspec.tests.abstract), against the real server.

Folders exist only through their files here (as in the API), so `supports_empty_directories` is
False: the suite then puts a `dummy` file in a folder it wants to exist.
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Callable
from pathlib import Path

import fsspec.tests.abstract as abstract
import pytest

from dominofs.fsspecfs import DominoFileSystem
from tests.conftest import LocalServer


class DominoFixtures(abstract.AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, fsrv: LocalServer, key_file: Path) -> DominoFileSystem:
        return DominoFileSystem(host=fsrv.url, api_key_file=str(key_file))

    @pytest.fixture
    def fs_join(self) -> Callable[..., str]:
        return posixpath.join

    @pytest.fixture
    def fs_path(self) -> str:
        return f"alice/demo/suite-{uuid.uuid4().hex[:10]}"

    @pytest.fixture
    def supports_empty_directories(self) -> bool:
        return False


class TestDominoCopy(abstract.AbstractCopyTests, DominoFixtures):  # type: ignore[misc]
    pass


class TestDominoGet(abstract.AbstractGetTests, DominoFixtures):  # type: ignore[misc]
    pass


class TestDominoPut(abstract.AbstractPutTests, DominoFixtures):  # type: ignore[misc]
    pass


class TestDominoPipe(abstract.AbstractPipeTests, DominoFixtures):  # type: ignore[misc]
    pass


class TestDominoOpen(abstract.AbstractOpenTests, DominoFixtures):  # type: ignore[misc]
    pass
