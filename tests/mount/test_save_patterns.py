"""More real save patterns through a real mount (issue 4): bulk copies, rsync, a large file,
emacs, gedit, LibreOffice, shell appends, truncate, mv and tar. Each ends with exactly the final
content on the server, the expected number of uploads, and no temporary name on the server."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from dominofs.api import DominoClient
from tests.conftest import ALICE_KEY
from tests.mount.conftest import Env, wait_for
from tests.mount.test_editors import check_once, doc_mount
from tests.mount.test_write import MountHarness

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(90)]

# Temporary names any of these tools could leave behind.
TEMP = re.compile(
    r"(^|/)(\.[^/]*\.[A-Za-z0-9]{6}|#[^/]*#|[^/]*~|\.goutputstream-[^/]*|\.~lock\.[^/]*#)$"
)


@pytest.fixture
def mnt(fenv: Env) -> MountHarness:
    return doc_mount(fenv)


def run(*argv: str, cwd: Path | None = None) -> None:
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True, timeout=60)


def server_has(h: MountHarness, expected: dict[str, bytes]) -> dict[str, bytes]:
    """Poll (≤ 30 s) until the server holds exactly `expected` (plus untouched files)."""

    def ok() -> dict[str, bytes] | None:
        files = h.server_files()
        return files if all(files.get(p) == c for p, c in expected.items()) else None

    files = wait_for(ok, what=f"server has {sorted(expected)}")
    h.settled()
    files = h.server_files()
    for p, c in expected.items():
        assert files.get(p) == c, p
    temps = [p for p in files if TEMP.search(p)]
    assert not temps, temps
    return files


def make_tree(root: Path, n: int) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for i in range(n):
        rel = f"f{i:02d}.txt" if i % 3 else f"sub/g{i:02d}.dat"
        data = f"file {i}\n".encode() * (i + 1)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        out[rel] = data
    return out


def test_cp_r_folder(mnt: MountHarness, tmp_path: Path) -> None:
    src = tmp_path / "src" / "data"
    tree = make_tree(src, 20)
    run("cp", "-r", str(src), str(mnt.root))
    files = server_has(mnt, {f"data/{p}": c for p, c in tree.items()})
    assert sorted(p for p in files if p.startswith("data/")) == sorted(f"data/{p}" for p in tree)
    assert mnt.server.requests_count("PUT upload") == 20
    assert (mnt.root / "data" / "f01.txt").read_bytes() == tree["f01.txt"]


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_a_folder(mnt: MountHarness, tmp_path: Path) -> None:
    src = tmp_path / "src" / "data"
    tree = make_tree(src, 12)
    run("rsync", "-a", str(src), str(mnt.root) + "/")
    files = server_has(mnt, {f"data/{p}": c for p, c in tree.items()})
    ours = sorted(p for p in files if p.startswith("data/"))
    assert ours == sorted(f"data/{p}" for p in tree)  # no .name.XXXXXX rsync temp files
    assert mnt.server.requests_count("PUT upload") == 12
    assert not [n for n in os.listdir(mnt.root / "data") if n.startswith(".")]


def test_large_file_in_1mib_chunks(mnt: MountHarness) -> None:
    chunk = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB
    sha = hashlib.sha1()
    with open(mnt.p("big.bin"), "wb") as fh:
        for i in range(200):
            block = i.to_bytes(4, "big") + chunk[4:]
            fh.write(block)
            sha.update(block)
    size = 200 << 20
    client = DominoClient(mnt.server.url, ALICE_KEY)
    try:
        remote = client.project("alice/demo")

        def uploaded() -> object:
            return next(
                (f for f in remote.list_files(remote.head_commit()) if f.path == "big.bin"), None
            )

        f = wait_for(uploaded, what="big.bin on the server")
        mnt.settled()
        assert f.size == size  # type: ignore[attr-defined]
        got = hashlib.sha1()
        for part in remote.iter_blob(f.key):  # type: ignore[attr-defined]
            got.update(part)
        assert got.hexdigest() == sha.hexdigest()
    finally:
        client.close()
    assert mnt.server.requests_count("PUT upload") == 1
    assert os.stat(mnt.p("big.bin")).st_size == size


def test_emacs_save_sequence(mnt: MountHarness) -> None:
    root = mnt.root
    # auto-save while editing
    with open(root / "#doc.txt#", "wb") as fh:
        fh.write(b"line1\nemacs-draft\n")
    # save: backup by rename, then write the new file, then drop the auto-save file
    os.rename(root / "doc.txt", root / "doc.txt~")
    fd = os.open(root / "doc.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"line1\nemacs\n")
    os.fsync(fd)
    os.close(fd)
    os.unlink(root / "#doc.txt#")
    check_once(mnt, "/doc.txt", b"line1\nemacs\n")
    assert (root / "doc.txt~").read_bytes() == b"line1\n"  # the backup stays, locally only
    assert "doc.txt~" not in mnt.server_files()


def test_gedit_goutputstream_rename(mnt: MountHarness) -> None:
    tmp = mnt.root / ".goutputstream-Q1W2E3"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"gedit\n")
    os.fsync(fd)
    os.close(fd)
    os.chmod(tmp, 0o644)
    os.rename(tmp, mnt.p("doc.txt"))
    check_once(mnt, "/doc.txt", b"gedit\n")


def test_libreoffice_lock_file_and_write(mnt: MountHarness) -> None:
    lock = mnt.root / ".~lock.report.odt#"
    lock.write_bytes(b",alice,host,01.01.2025 10:00,file:///home/alice/.config/libreoffice/4;")
    with open(mnt.p("report.odt"), "wb") as fh:
        fh.write(b"PK\x03\x04odt-v1")
    files = server_has(mnt, {"report.odt": b"PK\x03\x04odt-v1"})
    assert ".~lock.report.odt#" not in files
    assert lock.exists()
    lock.unlink()
    assert mnt.server.requests_count("PUT upload") == 1


def test_echo_append(mnt: MountHarness) -> None:
    run("sh", "-c", "echo appended >> doc.txt", cwd=mnt.root)
    check_once(mnt, "/doc.txt", b"line1\nappended\n")


def test_truncate_then_write(mnt: MountHarness) -> None:
    run("sh", "-c", "truncate -s 0 doc.txt && printf 'fresh\\n' >> doc.txt", cwd=mnt.root)
    files = server_has(mnt, {"doc.txt": b"fresh\n"})
    assert files["doc.txt"] == b"fresh\n"
    # Both steps fall inside one upload delay; a slow machine may send the empty file first.
    assert 1 <= mnt.server.requests_count("PUT upload") <= 2
    assert mnt.read("/doc.txt") == b"fresh\n"


def test_mv_finished_file_over_server_file(mnt: MountHarness, tmp_path: Path) -> None:
    done = tmp_path / "done.txt"
    done.write_bytes(b"finished elsewhere\n")
    run("mv", str(done), str(mnt.p("doc.txt")))  # across file systems: copy, then unlink
    check_once(mnt, "/doc.txt", b"finished elsewhere\n")
    assert not done.exists()


def test_mv_within_mount_over_server_file(mnt: MountHarness) -> None:
    mnt.write("/other.txt", b"other\n")
    mnt.settled()
    mnt.server.reset_stats()
    run("mv", str(mnt.p("other.txt")), str(mnt.p("doc.txt")))

    def moved() -> bool:
        files = mnt.server_files()
        return files.get("doc.txt") == b"other\n" and "other.txt" not in files

    wait_for(moved, what="other.txt moved over doc.txt")
    files = mnt.settled()
    assert files["doc.txt"] == b"other\n"
    assert "other.txt" not in files
    assert mnt.server.requests_count("PUT upload") == 1
    assert "other.txt" not in os.listdir(mnt.root)
    assert mnt.read("/doc.txt") == b"other\n"


def test_tar_x_archive(mnt: MountHarness, tmp_path: Path) -> None:
    src = tmp_path / "src"
    tree = make_tree(src / "pkg", 6)
    archive = tmp_path / "pkg.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(src / "pkg", arcname="pkg")
    run("tar", "xf", str(archive), "-C", str(mnt.root))
    files = server_has(mnt, {f"pkg/{p}": c for p, c in tree.items()})
    assert sorted(p for p in files if p.startswith("pkg/")) == sorted(f"pkg/{p}" for p in tree)
    assert mnt.server.requests_count("PUT upload") == 6
