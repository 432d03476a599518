"""pandas and pyarrow on domino:// against the real local server."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from dominofs.fsspecfs import DominoFileSystem
from tests.conftest import LocalServer

pytestmark = pytest.mark.usefixtures("domino_env")


def test_pandas_by_url_in_a_fresh_interpreter(fsrv: LocalServer, dfs: DominoFileSystem, folder):
    frame = pd.DataFrame({"id": range(50), "name": [f"n{i}" for i in range(50)]})
    frame.to_csv(f"domino://{folder}/train.csv", index=False)
    assert dfs.cat(f"{folder}/train.csv").startswith(b"id,name\n0,n0\n")
    assert pd.read_csv(f"domino://{folder}/train.csv").equals(frame)
    frame.to_parquet(f"domino://{folder}/train.parquet")
    assert pd.read_parquet(f"domino://{folder}/train.parquet").equals(frame)
    # Nothing imported by hand: the entry point brings domino:// in.
    code = f"import pandas as pd; print(pd.read_csv('domino://{folder}/train.csv').shape)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (out.returncode, out.stdout.strip()) == (0, "(50, 2)"), out.stderr


@pytest.mark.slow
def test_one_column_of_a_parquet_file_reads_a_fifth_of_it_at_most(
    fsrv: LocalServer, dfs: DominoFileSystem, folder: str
) -> None:
    rng = np.random.default_rng(16)
    rows = 650_000  # 10 columns of float64: 52 MB, incompressible
    table = pa.table({f"c{i}": rng.random(rows) for i in range(10)})
    with dfs.open(f"{folder}/wide.parquet", "wb") as f:
        pq.write_table(table, f, compression="none")
    size = dfs.size(f"{folder}/wide.parquet")
    assert size > 50_000_000
    fsrv.reset_stats()
    got = pq.read_table(f"{folder}/wide.parquet", filesystem=dfs, columns=["c3"])
    sent = fsrv.stats()["bytes_sent"]
    assert isinstance(sent, int)
    assert got.column("c3").equals(table.column("c3"))
    assert sent < 0.2 * size, f"{sent} of {size} bytes"


def test_a_dataset_of_many_files_with_mtime(dfs: DominoFileSystem, folder: str) -> None:
    parts = []
    for i in range(12):
        part = pd.DataFrame({"part": [i] * 5, "x": np.arange(5) * i})
        parts.append(part)
        with dfs.open(f"{folder}/ds/part-{i:02d}.parquet", "wb") as f:
            part.to_parquet(f, index=False)
    arrow_fs = pafs.PyFileSystem(pafs.FSSpecHandler(dfs))
    infos = arrow_fs.get_file_info(pafs.FileSelector(f"{folder}/ds", recursive=True))
    assert len(infos) == 12
    assert all(i.type == pafs.FileType.File and i.mtime is not None for i in infos)
    read = ds.dataset(f"{folder}/ds", filesystem=dfs, format="parquet").to_table().to_pandas()
    want = pd.concat(parts, ignore_index=True)
    assert read.sort_values(["part", "x"]).reset_index(drop=True).equals(want)


def test_pandas_reads_a_pinned_commit(fsrv: LocalServer, dfs: DominoFileSystem, folder: str):
    pd.DataFrame({"v": [1, 2]}).to_csv(f"domino://{folder}/v.csv", index=False)
    head = dfs.info(f"{folder}/v.csv", refresh=True)["commit"]
    pd.DataFrame({"v": [3]}).to_csv(f"domino://{folder}/v.csv", index=False)
    project, rest = folder.rsplit("/", 1)
    old = pd.read_csv(f"domino://{project}@{head}/{rest}/v.csv")
    assert old["v"].tolist() == [1, 2]
    assert pd.read_csv(f"domino://{folder}/v.csv")["v"].tolist() == [3]
    with pytest.raises(PermissionError, match="read only"):
        pd.DataFrame({"v": [9]}).to_csv(f"domino://{project}@{head}/{rest}/v.csv")
    assert os.environ["DOMINO_API_HOST"] == fsrv.url
