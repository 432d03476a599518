"""The client's memory of where listed keys are: newest wins, old keys kept, bounded."""

from __future__ import annotations

import threading

from dominofs.locations import Locations
from dominofs.models import RemoteFile


def listing(prefix: str, n: int, *, key: str = "") -> list[RemoteFile]:
    return [RemoteFile(f"d/{prefix}{i}", i, 0, f"{key or prefix}{i:038d}") for i in range(n)]


def test_a_key_is_found_where_it_was_last_listed() -> None:
    where = Locations()
    where.learn("c1", [RemoteFile("a.txt", 1, 0, "k1"), RemoteFile("b.txt", 1, 0, "k2")])
    where.learn("c2", [RemoteFile("renamed.txt", 1, 0, "k1")])
    assert where.find("k1") == ("c2", "renamed.txt")
    assert where.find("k2") == ("c1", "b.txt")  # only in the older commit: still readable there
    assert where.find("k3") is None


def test_old_commits_are_forgotten_first_and_never_below_the_largest_listing() -> None:
    where = Locations(spare=100)
    where.learn("full", listing("f", 1000))
    for i in range(300):
        where.learn(f"c{i}", listing(f"n{i}-", 10))  # churn: ten new keys per commit
        where.learn(f"p{i}", listing("f", 5))  # a prefix listing re-points five old keys
        assert len(where) <= 2 * (1000 + 100)
    # Every key of the project's whole listing is still known, whatever commit it points at.
    assert all(where.find(f.key) is not None for f in listing("f", 1000))
    assert where.find(listing("n299-", 1)[0].key) == ("c299", "d/n299-0")
    assert where.find(listing("n0-", 1)[0].key) is None  # the oldest churn went first
    kept = sum(where.find(listing(f"n{i}-", 1)[0].key) is not None for i in range(300))
    assert kept >= 10  # at least `spare` keys of churn outlive their commit's newer listings


def test_learning_and_finding_from_many_threads() -> None:
    where = Locations()
    files = listing("t", 2000)
    wrong: list[RemoteFile] = []

    def learn(commit: str) -> None:
        where.learn(commit, files)

    def find() -> None:
        for f in files:
            found = where.find(f.key)
            if found is not None and found[1] != f.path:
                wrong.append(f)

    threads = [threading.Thread(target=learn, args=(f"c{i}",)) for i in range(8)]
    threads += [threading.Thread(target=find) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    assert len(where) == 2000
    assert {found[0] for f in files if (found := where.find(f.key))} <= {f"c{i}" for i in range(8)}
