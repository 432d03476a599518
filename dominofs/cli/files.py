"""`dominofs ls | get | put`: a project's files from the command line."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import click

from ..api import ProjectClient
from ..errors import IntegrityError, NotFound, UsageError
from ..models import RemoteFile, clean_relpath
from .common import echo_json, is_tty, project_client, server_options

PROGRESS_MIN = 1 << 20


def _resolve_commit(pc: ProjectClient, commit: str | None) -> str:
    return commit or pc.head_commit()


def _norm(path: str) -> str:
    if path.strip("/") == "":
        return ""
    clean = clean_relpath(path)
    if clean is None:
        raise UsageError(f"{path!r} is not a project path")
    return clean


@click.command("ls")
@server_options
@click.argument("project")
@click.argument("path", default="")
@click.option("-l", "long", is_flag=True, help="Sizes and modification times.")
@click.option("-R", "recursive", is_flag=True, help="Every file below PATH.")
@click.option("--commit", default=None, help="List this commit instead of the newest.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def ls(
    ctx: click.Context,
    project: str,
    path: str,
    long: bool,
    recursive: bool,
    commit: str | None,
    as_json: bool,
) -> None:
    """List a project's files (OWNER/PROJECT [PATH])."""
    pc = project_client(ctx, project)
    prefix = _norm(path)
    files = pc.list_files(_resolve_commit(pc, commit), prefix)
    files = [f for f in files if f.path == prefix or not prefix or f.path.startswith(prefix + "/")]
    if not files and prefix:
        raise NotFound(f"{project}: {prefix}: no such file or folder")
    entries = _entries(files, prefix, recursive)
    if as_json:
        echo_json(entries)
        return
    for e in entries:
        name = e["path"] + ("/" if e["type"] == "dir" else "")
        if long:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["lastModified"] / 1000))
            click.echo(f"{e['size']:>12}  {when}  {name}")
        else:
            click.echo(name)


def _entries(files: list[RemoteFile], prefix: str, recursive: bool) -> list[dict[str, Any]]:
    if len(files) == 1 and files[0].path == prefix:
        f = files[0]
        return [_file_entry(f, f.path.rsplit("/", 1)[-1])]
    base = prefix + "/" if prefix else ""
    if recursive:
        return [_file_entry(f, f.path[len(base) :]) for f in files]
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        rest = f.path[len(base) :]
        head, sep, _ = rest.partition("/")
        if sep:
            d = out.setdefault(head, {"path": head, "type": "dir", "size": 0, "lastModified": 0})
            d["size"] += f.size
            d["lastModified"] = max(d["lastModified"], f.mtime_ms)
        else:
            out[head] = _file_entry(f, head)
    return [out[k] for k in sorted(out)]


def _file_entry(f: RemoteFile, name: str) -> dict[str, Any]:
    return {"path": name, "type": "file", "size": f.size, "lastModified": f.mtime_ms, "key": f.key}


@contextmanager
def _bar(total: int, label: str) -> Iterator[Any]:
    from tqdm import tqdm

    show = is_tty() and total > PROGRESS_MIN
    with tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not show
    ) as bar:
        yield bar


@click.command("get")
@server_options
@click.argument("project")
@click.argument("path")
@click.argument("dest", required=False, type=click.Path(path_type=Path))
@click.option("--commit", default=None, help="Download from this commit instead of the newest.")
@click.pass_context
def get(ctx: click.Context, project: str, path: str, dest: Path | None, commit: str | None) -> None:
    """Download a file or a folder (recursively) from a project."""
    pc = project_client(ctx, project)
    prefix = _norm(path)
    files = pc.list_files(_resolve_commit(pc, commit), prefix)
    files = [f for f in files if f.path == prefix or not prefix or f.path.startswith(prefix + "/")]
    if not files:
        raise NotFound(f"{project}: {prefix or '/'}: no such file or folder")
    if len(files) == 1 and files[0].path == prefix:
        target = dest or Path(prefix.rsplit("/", 1)[-1])
        if target.is_dir():
            target = target / prefix.rsplit("/", 1)[-1]
        _download(pc, files[0], target)
        return
    root = dest or Path(prefix.rsplit("/", 1)[-1] if prefix else project.split("/")[1])
    base = prefix + "/" if prefix else ""
    for f in files:
        rel = f.path[len(base) :]
        _download(pc, f, root / rel)
    click.echo(f"{len(files)} files into {root}", err=True)


def _download(pc: ProjectClient, f: RemoteFile, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        got = 0
        with os.fdopen(fd, "wb") as out, _bar(f.size, target.name) as bar:
            for chunk in pc.iter_blob(f.key):
                out.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if got != f.size:
            raise IntegrityError(f"{f.path}: got {got} bytes, the listing says {f.size}")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@click.command("put")
@server_options
@click.argument("project")
@click.argument("local", type=click.Path(exists=True, path_type=Path))
@click.argument("path", required=False)
@click.pass_context
def put(ctx: click.Context, project: str, local: Path, path: str | None) -> None:
    """Upload a file or a folder (recursively) to a project."""
    from ..ignore import IgnoreRules

    pc = project_client(ctx, project)
    target = _norm(path) if path is not None else ""
    if local.is_file():
        _upload(pc, local, target or local.name)
        return
    rules = IgnoreRules.for_root(local)
    base = target or ""
    count = 0
    for root, dirs, names in os.walk(local):
        rel_root = Path(root).relative_to(local).as_posix()
        rel_root = "" if rel_root == "." else rel_root
        dirs[:] = sorted(
            d for d in dirs if not rules.is_ignored(f"{rel_root}/{d}".lstrip("/"), is_dir=True)
        )
        for name in sorted(names):
            rel = f"{rel_root}/{name}".lstrip("/")
            if rules.is_ignored(rel) or not (Path(root) / name).is_file():
                continue
            _upload(pc, Path(root) / name, f"{base}/{rel}".lstrip("/"))
            count += 1
    click.echo(f"{count} files uploaded to {project}/{base}", err=True)


def _upload(pc: ProjectClient, local: Path, remote: str) -> None:
    size = local.stat().st_size
    with local.open("rb") as fh, _bar(size, local.name) as bar:
        reader: Any = _CountingReader(fh, bar) if size > PROGRESS_MIN else fh
        result = pc.upload(remote, reader, size=size)
    if result.size != size:
        raise IntegrityError(f"{remote}: sent {size} bytes, the server stored {result.size}")


class _CountingReader:
    """A file wrapper that moves a progress bar as requests reads it."""

    def __init__(self, fh: IO[bytes], bar: Any) -> None:
        self._fh, self._bar = fh, bar

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._bar.update(len(data))
        return data

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 0:
            self._bar.reset()
        return self._fh.seek(pos, whence)

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1 << 20):
            yield chunk


COMMANDS = [ls, get, put]
