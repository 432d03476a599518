"""Symlinks in the synced folder (CONTRACT §5): never followed; with --links carried as
NAME.dominolink files holding their target and made again from them; without it, left out and
counted in status."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from dominofs.api import ProjectClient
from dominofs.links import link_of
from tests.conftest import LocalServer
from tests.sync.conftest import FAST, SyncProc, remote_bytes, remote_files, run_cli, wait_for

BASE = {"README.md", ".dominoignore"}  # what a new project holds


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def upload(remote: ProjectClient, path: str, data: bytes) -> None:
    remote.upload(path, io.BytesIO(data), size=len(data))


def relink(path: Path, target: str) -> None:
    """Point the symlink `path` elsewhere as `ln -sfn` does: a new link renamed over it."""
    tmp = path.with_name(path.name + ".new-link")
    os.symlink(target, tmp)
    os.replace(tmp, path)


def in_step(sp: SyncProc, remote: ProjectClient) -> bool:
    """The service has applied the server's head (and has nothing left to send)."""
    return sp.idle() and sp.status().get("head") == remote.commits()[0]


@pytest.mark.slow
def test_without_links_symlinks_are_counted_never_followed_and_never_uploaded(
    make_sync: Callable[..., SyncProc], remote: ProjectClient, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    write(outside / "secret.txt", b"not the project's")
    write(outside / "f.txt", b"not the project's either")
    sp = make_sync()
    root = sp.root
    write(root / "data" / "a.txt", b"a")
    write(root / "d" / "f.txt", b"in the tree")
    write(root / "was_file", b"a file first")
    os.symlink("data/a.txt", root / "rel")
    os.symlink(outside / "secret.txt", root / "abs")
    os.symlink("data", root / "dirlink")  # to a folder: never walked into
    sp.start()
    sp.wait_idle()
    status = sp.status()
    assert status["links"] is False
    assert status["skipped_symlinks"] == ["abs", "dirlink", "rel"]
    assert status["skipped_symlinks_count"] == 3
    assert set(remote_files(remote)) == BASE | {"data/a.txt", "d/f.txt", "was_file"}

    os.rename(root / "d", root / "d.bak")  # a folder moves away and a link takes its place:
    os.symlink(outside, root / "d")  # its rescan must not walk into the link
    os.unlink(root / "rel")
    os.unlink(root / "was_file")  # a file replaced by a symlink is deleted, the link skipped
    os.symlink("data/a.txt", root / "was_file")
    wait_for(lambda: "d.bak/f.txt" in remote_files(remote), what="the moved folder")
    wait_for(lambda: "d/f.txt" not in remote_files(remote), what="its old path deleted")
    wait_for(lambda: "was_file" not in remote_files(remote), what="the replaced file deleted")
    skipped = ["abs", "d", "dirlink", "was_file"]
    wait_for(lambda: sp.status().get("skipped_symlinks") == skipped, what="d and was_file")
    upload(remote, "remote.dominolink", b"data/a.txt")  # without --links: a plain file
    wait_for(lambda: (root / "remote.dominolink").is_file(), what="the plain file")
    sp.wait_idle()
    assert set(remote_files(remote)) == BASE | {"data/a.txt", "d.bak/f.txt", "remote.dominolink"}
    assert not (root / "remote.dominolink").is_symlink()
    assert not os.path.lexists(root / "remote")

    r = run_cli(sp.env, "status", "--json")
    [item] = json.loads(r.stdout)
    assert item["skipped_symlinks_count"] == 4
    r = run_cli(sp.env, "status")
    assert "4 symlinks skipped (not uploaded; dominofs sync --links carries them)" in r.stdout
    assert sp.terminate() == 0


@pytest.mark.slow
def test_links_go_up_as_link_files_change_and_come_back_in_a_fresh_pull(
    make_sync: Callable[..., SyncProc],
    server: LocalServer,
    remote: ProjectClient,
    tmp_path: Path,
) -> None:
    sp = make_sync()
    sp.args = ["--links"]
    root = sp.root
    write(root / "data" / "a.txt", b"the target's bytes: never uploaded as a link")
    write(root / "gone.txt", b"deleted while the service is down")
    write(root / "file2link", b"a file first, then a link")
    links = {
        "rel": "data/a.txt",
        "abs": "/an/absolute/target",  # dangling too
        "dangling": "no/such/file",
        "dirlink": "data",  # to a folder: the link travels, the folder is not walked twice
        "sub/up": "../data/a.txt",
    }
    for name, target in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / name)
    sp.start()
    sp.wait_idle()
    carried = {f"{name}.dominolink" for name in links}
    assert set(remote_files(remote)) == BASE | {"data/a.txt", "gone.txt", "file2link"} | carried
    for name, target in links.items():
        assert remote_bytes(remote, f"{name}.dominolink") == target.encode()
    assert sp.status()["skipped_symlinks_count"] == 0

    relink(root / "rel", "data/b.txt")  # a local change and a local delete propagate
    os.unlink(root / "abs")
    os.unlink(root / "file2link")  # and a file replaced by a link
    os.symlink("data/a.txt", root / "file2link")
    wait_for(lambda: remote_bytes(remote, "rel.dominolink") == b"data/b.txt", what="changed")
    wait_for(lambda: "abs.dominolink" not in remote_files(remote), what="deleted")
    wait_for(lambda: "file2link" not in remote_files(remote), what="the file replaced")
    assert remote_bytes(remote, "file2link.dominolink") == b"data/a.txt"
    links["file2link"] = "data/a.txt"
    carried = {f"{name}.dominolink" for name in links} - {"abs.dominolink"}
    sp.wait_idle()
    assert sp.terminate() == 0

    sp.args = []  # --links off: the links are skipped, and their link files stay on the server
    os.unlink(root / "gone.txt")  # a deletion judged with whatever else looks deleted
    sp.start()
    wait_for(lambda: "gone.txt" not in remote_files(remote), what="the deletion judged")
    sp.wait_idle()
    assert sp.status()["skipped_symlinks"] == ["dangling", "dirlink", "file2link", "rel", "sub/up"]
    assert set(remote_files(remote)) == BASE | {"data/a.txt"} | carried
    assert sp.terminate() == 0

    puts = server.requests_count("PUT upload")
    fresh = tmp_path / "fresh"
    r = run_cli(sp.env, "sync", "alice/demo", str(fresh), *FAST, "--pull", "--once", "--links")
    assert r.returncode == 0, r.stderr
    del links["abs"]
    links["rel"] = "data/b.txt"
    for name, target in links.items():
        assert os.readlink(fresh / name) == target, name
        assert not os.path.lexists(fresh / f"{name}.dominolink")
    assert not os.path.lexists(fresh / "abs")
    assert (fresh / "data" / "a.txt").read_bytes() == (root / "data" / "a.txt").read_bytes()
    assert server.requests_count("PUT upload") == puts  # the links made are in step: none sent


@pytest.mark.slow
def test_remote_link_files_become_symlinks_that_nothing_is_written_through(
    make_sync: Callable[..., SyncProc], remote: ProjectClient, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    sp = make_sync()
    sp.args = ["--links"]
    root = sp.root
    sp.start()
    sp.wait_idle()
    upload(remote, "out.dominolink", b"../outside")  # both lead out of DIR, and the
    upload(remote, "out/pwned.txt", b"must not land outside")  # server holds files "under"
    upload(remote, "abs.dominolink", str(outside).encode())  # them
    upload(remote, "abs/pwned.txt", b"must not land outside either")
    upload(remote, "plain.dominolink", b"no\0target")  # no valid target: a plain file
    wait_for(lambda: in_step(sp, remote), what="the remote changes applied")
    assert os.readlink(root / "out") == "../outside"
    assert os.readlink(root / "abs") == str(outside)
    assert list(outside.iterdir()) == []
    assert (root / "plain.dominolink").read_bytes() == b"no\0target"
    assert not os.path.lexists(root / "plain")
    assert "refusing" in sp.output()

    upload(remote, "out.dominolink", b"elsewhere")  # a remote change changes the symlink
    remote.delete("abs.dominolink")  # and a remote deletion deletes it
    wait_for(lambda: os.readlink(root / "out") == "elsewhere", what="the link changed")
    wait_for(lambda: not os.path.lexists(root / "abs"), what="the link deleted")
    sp.wait_idle()
    assert sp.terminate() == 0

    upload(remote, "out.dominolink", b"theirs")  # both sides change it while the service is down
    relink(root / "out", "ours")
    sp.start()
    wait_for(lambda: sp.status().get("conflicts"), what="a conflict in status")
    [conflict] = sp.status()["conflicts"]
    cpath = conflict["conflict_path"]
    assert cpath.startswith("out.conflict-")
    assert cpath.endswith(".dominolink")
    wait_for(lambda: os.readlink(root / "out") == "theirs", what="theirs made")
    copy = link_of(cpath)
    assert copy is not None
    assert os.readlink(root / copy) == "ours"
    assert remote_bytes(remote, cpath) == b"ours"
    assert remote_bytes(remote, "out.dominolink") == b"theirs"
    sp.wait_idle()
    assert list(outside.iterdir()) == []
    assert sp.terminate() == 0
