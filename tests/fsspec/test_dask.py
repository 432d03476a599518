"""dask distributed on domino://: two worker processes that read and write project files.

One cluster for the module (starting one costs seconds). The workers find the key where any
dask user's workers would: in the environment they inherit.
"""

from __future__ import annotations

from collections.abc import Iterator

import dask.dataframe as dd
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from dominofs.fsspecfs import DominoFileSystem
from tests.fsspec.conftest import Requests

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("domino_env")]


@pytest.fixture(scope="module")
def client(domino_env: None) -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=2,
            dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def frame(i: int) -> pd.DataFrame:
    return pd.DataFrame({"part": [i] * 200, "x": range(i * 200, i * 200 + 200)})


def test_read_csv_matches_pandas_and_workers_only_fetch_blobs(
    client: Client, dfs: DominoFileSystem, folder: str, asked: Requests
) -> None:
    for i in range(6):
        dfs.pipe(f"{folder}/data/{i}.csv", frame(i).to_csv(index=False).encode())
    ddf = dd.read_csv(f"domino://{folder}/data/*.csv", blocksize=600)
    assert ddf.npartitions > 6  # files are split into blocks, read by offset on the workers
    asked.take()
    got = ddf.compute().sort_values("x").reset_index(drop=True)
    during = asked.take()
    want = pd.concat([frame(i) for i in range(6)], ignore_index=True)
    assert got.equals(want)
    assert set(during) == {"GET blobs"}, during  # no commits request, no listing
    assert during["GET blobs"] >= ddf.npartitions


def test_to_parquet_is_one_upload_per_part(
    client: Client, dfs: DominoFileSystem, folder: str, asked: Requests
) -> None:
    data = pd.concat([frame(i) for i in range(4)], ignore_index=True)
    ddf = dd.from_pandas(data, npartitions=4)
    asked.take()
    ddf.to_parquet(f"domino://{folder}/out/")
    assert asked.take().get("PUT upload") == 4
    assert len(dfs.find(f"{folder}/out")) == 4  # written elsewhere: a miss asks again
    back = dd.read_parquet(f"domino://{folder}/out/").compute()
    assert back.sort_values("x").reset_index(drop=True).equals(data)
