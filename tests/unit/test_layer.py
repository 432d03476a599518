"""The local layer's bytes files: emptied ones are reused, never while anything else links them."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dominofs.layer import Layer


def write(layer: Layer, data: bytes) -> str:
    name, fd = layer.new_work()
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return name


def test_an_uploaded_small_file_is_emptied_and_reused(tmp_path: Path) -> None:
    layer = Layer(tmp_path / "layer")
    name = write(layer, b"old bytes")
    inode = layer.path_of(name).stat().st_ino
    layer.recycle_later(name, 9)
    assert layer.path_of(name).read_bytes() == b"old bytes"  # kept until the batch is written
    layer.commit()
    again, fd = layer.new_work()
    try:
        assert again == name
        assert os.fstat(fd).st_ino == inode
        assert os.fstat(fd).st_size == 0
        assert os.pread(fd, 100, 0) == b""
    finally:
        os.close(fd)
    layer.close()


def test_a_file_linked_elsewhere_is_never_emptied(tmp_path: Path) -> None:
    # The outbox's staged copy and the cache's adoption are hard links to the same inode.
    layer = Layer(tmp_path / "layer")
    name = write(layer, b"still being sent")
    staged = tmp_path / "staged"
    os.link(layer.path_of(name), staged)
    layer.recycle_later(name, 16)
    layer.commit()
    made = []
    for _ in range(4):
        other, fd = layer.new_work()
        os.close(fd)
        made.append(other)
    assert name not in made
    assert staged.read_bytes() == b"still being sent"
    assert not layer.path_of(name).exists()  # given up on after a few looks: its name went
    layer.close()


def test_large_files_are_removed_not_kept(tmp_path: Path) -> None:
    layer = Layer(tmp_path / "layer")
    name = write(layer, b"x" * (1 << 20))
    layer.recycle_later(name, 1 << 20)
    layer.commit()
    assert not layer.path_of(name).exists()
    layer.close()


def test_spares_and_kept_files_do_not_outlive_the_mount(tmp_path: Path) -> None:
    layer = Layer(tmp_path / "layer")
    layer.prepare(8)
    kept = write(layer, b"abc")
    layer.recycle_later(kept, 3)
    layer.commit()
    assert len(list(layer.data_dir.glob("*/*"))) == 8  # one spare was used for `kept`
    layer.close()
    assert list(layer.data_dir.glob("*/*")) == []


def test_a_restart_keeps_small_unnamed_files_for_reuse_and_removes_large_ones(
    tmp_path: Path,
) -> None:
    layer = Layer(tmp_path / "layer")
    named = write(layer, b"named")
    small = write(layer, b"left by a crash")
    large = write(layer, b"y" * (1 << 20))
    layer._db.close()  # a crash: nothing tidied
    layer = Layer(tmp_path / "layer")
    assert layer.sweep([named]) == 2
    assert not layer.path_of(large).exists()
    assert layer.path_of(named).read_bytes() == b"named"
    reused, fd = layer.new_work()
    os.close(fd)
    assert reused == small
    assert layer.path_of(small).read_bytes() == b""
    layer.close()


def test_spares_are_made_again_once_new_files_took_half(tmp_path: Path) -> None:
    layer = Layer(tmp_path / "layer")
    keeper = threading.Thread(target=layer.keep_spares, args=(8,), daemon=True)
    keeper.start()
    wait_until(lambda: len(list(layer.data_dir.glob("*/*"))) == 8)
    spares = set(layer.data_dir.glob("*/*"))
    taken = [write(layer, b"new") for _ in range(5)]
    assert {layer.path_of(n) for n in taken} <= spares  # no new inode for these
    wait_until(lambda: len(list(layer.data_dir.glob("*/*"))) == 5 + 8)
    layer.close()
    keeper.join(5)
    assert not keeper.is_alive()
    assert sorted(layer.data_dir.glob("*/*")) == sorted(layer.path_of(n) for n in taken)


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_kept_files_are_emptied_off_the_writers_path(tmp_path: Path) -> None:
    # Truncating marks an ext4 inode for a flush at its next close: the keeper thread empties
    # kept files (and takes that close), so a new file's writer never pays for it.
    layer = Layer(tmp_path / "layer")
    keeper = threading.Thread(target=layer.keep_spares, args=(2,), daemon=True)
    keeper.start()
    wait_until(lambda: len(list(layer.data_dir.glob("*/*"))) == 2)
    name = write(layer, b"uploaded already")
    layer.recycle_later(name, 16)
    layer.commit()
    wait_until(lambda: layer.path_of(name).stat().st_size == 0)  # no new_work asked for it
    taken = {write(layer, b"next") for _ in range(3)}
    assert name in taken
    layer.close()
    keeper.join(5)
    assert not keeper.is_alive()


def test_spares_that_cannot_be_made_are_left_to_new_work(tmp_path: Path) -> None:
    layer = Layer(tmp_path / "layer")
    for shard in layer.data_dir.iterdir():
        shard.rmdir()
    layer.prepare(4)  # logs, raises nothing
    assert list(layer.data_dir.iterdir()) == []
    for shard in range(16):
        (layer.data_dir / f"{shard:x}").mkdir()
    assert layer.path_of(write(layer, b"made here")).read_bytes() == b"made here"
    layer.close()
