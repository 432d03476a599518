"""DominoFileSystem: fsspec's filesystem for domino://OWNER/PROJECT[@COMMIT]/PATH.

Owns: the fsspec surface (ls, info, find, glob, open, cat_file, get_file, pipe_file, put_file,
cp_file, rm, mkdir...), answering every listing question from the shared listings (listings.py)
so a glob of a 10,000-file commit costs one commits request and one files listing, the
storage options and credentials (CONTRACT §1: options, then environment, then the config
file), and what a pickle carries (host and options; the key only when it was passed inline).
Must not import the FUSE binding, the mount, the vfs or the outbox; every failure leaves it as
a builtin exception (oserrors.py).
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import shutil
from datetime import UTC, datetime
from typing import IO, Any

from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.spec import AbstractFileSystem, make_instance

from ..config import load_settings
from ..errors import ConfigError, DominoError
from ..models import RemoteFile
from . import blobs, files, listings
from .oserrors import builtin, translated
from .paths import PROTOCOL, BlobName, Location, Pin, parse, strip_protocol, travelled_pin

DEFAULT_HEAD_TTL = 5.0
# fsspec passes these to every filesystem; they mean nothing here.
_FSSPEC_OPTIONS = frozenset(
    {"use_listings_cache", "listings_expiry_time", "max_paths", "asynchronous", "loop"}
)


class DominoFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """Project files of a Domino server as an fsspec filesystem (protocol `domino`).

    Storage options: `host`, `api_key_file` (or the environment, or the config file; `api_key`
    inline works but travels in every pickle), `commit` (pin the whole filesystem), `head_ttl`
    (seconds a head pointer is trusted, default 5), `blob_cache` with `cache_dir` and
    `cache_size` (read through the mounts' on-disk blob cache), `connect_timeout`,
    `read_timeout`, `max_listing_files` (the listing cache's bound).
    """

    protocol = PROTOCOL
    root_marker = ""

    def __init__(
        self,
        *,
        host: str | None = None,
        api_key_file: str | os.PathLike[str] | None = None,
        api_key: str | None = None,
        commit: str | None = None,
        head_ttl: float = DEFAULT_HEAD_TTL,
        blob_cache: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_size: str | int | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        max_listing_files: int = listings.DEFAULT_MAX_FILES,
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - _FSSPEC_OPTIONS)
        if unknown:
            raise TypeError(f"domino:// has no storage option {', '.join(unknown)}")
        super().__init__(**options)
        try:
            settings = load_settings(
                host=host,
                api_key_file=api_key_file,
                cache_dir=cache_dir,
                cache_size=cache_size,
                require_key=api_key is None,
            )
        except ConfigError as exc:
            raise ValueError(
                f"domino://: {exc} (as storage options: host=URL, api_key_file=PATH)"
            ) from None
        except DominoError as exc:
            raise builtin(exc) from None
        if api_key is not None:
            settings = dataclasses.replace(settings, api_key=api_key)
        if connect_timeout is not None:
            settings = dataclasses.replace(settings, connect_timeout=float(connect_timeout))
        if read_timeout is not None:
            settings = dataclasses.replace(settings, read_timeout=float(read_timeout))
        if commit is not None:
            parse(f"o/p@{commit}")  # the same check as a commit in a path
        if not head_ttl >= 0:
            raise ValueError(f"head_ttl must be a number of seconds >= 0, not {head_ttl!r}")
        self._settings = settings
        self.host = settings.host
        self.commit = commit
        self.head_ttl = float(head_ttl)
        self.blob_cache = bool(blob_cache)
        self.max_listing_files = int(max_listing_files)

    def __repr__(self) -> str:
        pinned = f", commit={self.commit!r}" if self.commit else ""
        return f"DominoFileSystem(host={self.host!r}{pinned})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Host as resolved here, so a worker reaches the same server; the key only if it came
        # inline (it is in the options then). A key from the environment or a file is read
        # again where the filesystem lands.
        options = {**self.storage_options, "host": self.host}
        return make_instance, (type(self), (), options)

    @property
    def fsid(self) -> str:
        return f"{PROTOCOL}:{self.host}"

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return strip_protocol(os.fspath(path) if isinstance(path, os.PathLike) else path)

    @classmethod
    def _parent(cls, path: str) -> str:
        path = cls._strip_protocol(path)
        return path.rsplit("/", 1)[0] if "/" in path else ""

    # -- what the shared state answers -------------------------------------------------------

    @property
    def _shared(self) -> listings.Shared:
        shared = self.__dict__.get("_shared_state")
        if shared is None or shared.pid != os.getpid():  # an instance inherited by a fork
            shared = listings.shared_for(self._settings, max_files=self.max_listing_files)
            self.__dict__["_shared_state"] = shared
        return shared

    def _loc(self, path: str) -> Location:
        return parse(path, commit=self.commit)

    def _view(self, loc: Location, refresh: bool = False) -> listings.View:
        with translated():
            return self._shared.view(loc.project, loc.commit, ttl=self.head_ttl, refresh=refresh)

    def _seen(self, loc: Location, refresh: bool = False) -> listings.View:
        """A listing that shows `loc` if the server has it: a miss at head asks for the head
        again, since another process (a dask worker) may have just written the file."""
        view = self._view(loc, refresh)
        if loc.commit is None and not refresh and not _shows(view, loc.path):
            view = self._view(loc, refresh=True)
        return view

    def _cached_info(self, loc: Location, view: listings.View, rel: str) -> dict[str, Any]:
        """The entry of file `rel` of `view`, named under `loc`'s root (a copy: callers may
        change it)."""
        key = (loc.root, rel)
        entry = view.entries.get(key)
        if entry is None:
            file = view.file(rel)
            assert file is not None
            entry = view.entries[key] = self._file_info(loc.name(rel), file, view.commit_of(rel))
        return dict(entry)

    def _file_info(self, name: str, file: RemoteFile, commit: str | None) -> dict[str, Any]:
        when = datetime.fromtimestamp(file.mtime_ms / 1000, tz=UTC) if file.mtime_ms else None
        return {
            "name": BlobName.of(name, Pin(self.host, commit, file)),
            "size": file.size,
            "type": "file",
            "mtime": when,
            "key": file.key,
            "commit": commit,
        }

    @staticmethod
    def _dir_info(name: str, commit: str | None) -> dict[str, Any]:
        return {"name": name, "size": 0, "type": "directory", "commit": commit}

    def _entry(self, loc: Location, view: listings.View, rel: str) -> dict[str, Any] | None:
        if view.file(rel) is not None:
            return self._cached_info(loc, view, rel)
        if view.is_dir(rel):
            return self._dir_info(loc.name(rel), view.commit)
        return None

    def _blob(self, path: str) -> tuple[Location, RemoteFile, dict[str, Any]]:
        """The blob `path` names now (or named where it was listed, for a travelled name).

        Raises:
            FileNotFoundError, IsADirectoryError.
        """
        loc = self._loc(path)
        pin = travelled_pin(path, self.host)
        if pin is not None:
            return loc, pin.file, self._file_info(loc.name(), pin.file, pin.commit)
        view = self._seen(loc)
        file = view.file(loc.path)
        if file is None:
            if view.is_dir(loc.path):
                raise IsADirectoryError(errno.EISDIR, f"{loc.url} is a folder")
            raise FileNotFoundError(errno.ENOENT, f"{loc.url}: no such file")
        return loc, file, self._file_info(loc.name(), file, view.commit_of(loc.path))

    # -- listing ---------------------------------------------------------------------------

    def info(self, path: str, refresh: bool = False, **kwargs: Any) -> dict[str, Any]:
        """name, size, type, mtime (datetime), key (the blob key) and commit of `path`.

        Raises:
            FileNotFoundError: nothing there.
        """
        pin = travelled_pin(path, self.host)
        if pin is not None and not refresh:
            return self._file_info(self._loc(path).name(), pin.file, pin.commit)
        loc = self._loc(path)
        entry = self._entry(loc, self._seen(loc, refresh), loc.path)
        if entry is None:
            raise FileNotFoundError(errno.ENOENT, f"{loc.url}: no such file or folder")
        return entry

    def ls(self, path: str, detail: bool = True, refresh: bool = False, **kwargs: Any) -> Any:
        loc = self._loc(path)
        view = self._seen(loc, refresh)
        names = view.children(loc.path)
        if names is None:
            entry = self._entry(loc, view, loc.path)
            if entry is None:
                raise FileNotFoundError(errno.ENOENT, f"{loc.url}: no such file or folder")
            entries = [entry]
        else:
            prefix = f"{loc.path}/" if loc.path else ""
            entries = [e for n in names if (e := self._entry(loc, view, prefix + n))]
        return entries if detail else [e["name"] for e in entries]

    def find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        refresh: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Every file below `path` (and folder, with `withdirs`), from one listing."""
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        loc = self._loc(path)
        view = self._seen(loc, refresh)
        out: dict[str, dict[str, Any]] = {}
        if view.file(loc.path) is not None:
            entry = self._cached_info(loc, view, loc.path)
            out[entry["name"]] = entry
        elif view.is_dir(loc.path):
            if withdirs and loc.path:
                out[loc.name()] = self._dir_info(loc.name(), view.commit)
            top = f"{loc.path}/" if loc.path else ""
            folder = None  # the folder of the previous file: files come sorted, by folder
            for rel in view.files_under(loc.path):
                below = rel[len(top) :]
                depth = below.count("/") + 1
                if withdirs and depth > 1 and below.rsplit("/", 1)[0] != folder:
                    folder = below.rsplit("/", 1)[0]
                    self._add_dirs(out, loc, view, top, folder, maxdepth)
                if maxdepth is None or depth <= maxdepth:
                    entry = self._cached_info(loc, view, rel)
                    out[entry["name"]] = entry
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def _add_dirs(
        self,
        out: dict[str, dict[str, Any]],
        loc: Location,
        view: listings.View,
        top: str,
        folder: str,
        maxdepth: int | None,
    ) -> None:
        """`folder` (below the search root `top`) and the folders between them."""
        parts = folder.split("/")
        for depth in range(1, len(parts) + 1):
            if maxdepth is not None and depth > maxdepth:
                return
            name = loc.name(top + "/".join(parts[:depth]))
            if name not in out:
                out[name] = self._dir_info(name, view.commit)

    def ukey(self, path: str) -> str:
        """The blob key of a file: it changes exactly when the bytes do."""
        info = self.info(path)
        return str(info["key"]) if info["type"] == "file" else super().ukey(path)

    def checksum(self, path: str) -> int:
        key = self.ukey(path)
        try:
            return int(key, 16)
        except ValueError:
            return int(super().checksum(path))

    def modified(self, path: str) -> datetime:
        when = self.info(path).get("mtime")
        if when is None:
            raise NotImplementedError(f"{PROTOCOL}://{strip_protocol(path)}: no time is known")
        return when  # type: ignore[no-any-return]

    def invalidate_cache(self, path: str | None = None) -> None:
        """Ask for the head again on next use (of path's project, or of every project).
        Commit listings stay: they cannot change."""
        project = None
        if path:
            try:
                project = self._loc(path).project
            except (FileNotFoundError, ValueError):
                project = None
        self._shared.expire(project)
        super().invalidate_cache(path)

    # -- reading ---------------------------------------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        cache_type: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if mode in ("wb", "xb"):
            return self._open_write(path, exclusive=mode == "xb", autocommit=autocommit)
        if mode != "rb":
            raise NotImplementedError(
                f"{PROTOCOL}:// opens files with rb, wb or xb, not {mode}: the API replaces "
                "whole files"
            )
        kwargs.pop("size", None)  # the size is the pinned blob's
        loc, file, details = self._blob(path)
        pc = self._shared.project(loc.project)
        on_close = None
        if self.blob_cache:
            with translated():
                reader = blobs.cached_blobs(self._settings).open(pc, file)
            on_close = reader.close
            cache_type = cache_type or "none"  # the bytes are on local disk already

            def fetch(start: int, end: int) -> bytes:
                with translated():
                    return reader.read(min(end, file.size) - start, start)
        else:

            def fetch(start: int, end: int) -> bytes:
                with translated():
                    return blobs.read_range(pc, file, start, end)

        return files.ReadFile(
            self,
            details["name"],
            details=details,
            fetch=fetch,
            block_size=block_size,
            cache_type=cache_type,
            cache_options=cache_options,
            on_close=on_close,
            **kwargs,
        )

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """The bytes of `path` (or [start, end), negative counting from the end): one request."""
        loc, file, _ = self._blob(path)
        size = file.size
        lo = 0 if start is None else (max(0, size + start) if start < 0 else start)
        hi = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
        if lo >= hi:
            return b""
        pc = self._shared.project(loc.project)
        with translated():
            if self.blob_cache:
                reader = blobs.cached_blobs(self._settings).open(pc, file)
                try:
                    return reader.read(hi - lo, lo)
                finally:
                    reader.close()
            return blobs.read_range(pc, file, lo, hi)

    def get_file(
        self,
        rpath: str,
        lpath: Any,
        callback: Any = DEFAULT_CALLBACK,
        outfile: Any = None,
        **kwargs: Any,
    ) -> None:
        """Download a file, streamed to `lpath` (a folder becomes a local folder)."""
        if outfile is None and hasattr(lpath, "write"):
            outfile = lpath
        if outfile is None and self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return
        loc, file, _ = self._blob(rpath)
        pc = self._shared.project(loc.project)
        callback.set_size(file.size)
        out = outfile
        if out is None:
            os.makedirs(os.path.dirname(os.path.abspath(lpath)), exist_ok=True)
            out = open(lpath, "wb")  # noqa: SIM115 (closed below, only if opened here)
        try:
            with translated():
                for chunk in pc.iter_blob(file.key) if file.size else ():
                    out.write(chunk)
                    callback.relative_update(len(chunk))
        finally:
            if outfile is None:
                out.close()

    # -- writing ---------------------------------------------------------------------------

    def _writable(self, path: str, *, exclusive: bool = False) -> Location:
        """Where a write of `path` goes, checked against the listing before any byte is sent.

        Raises:
            PermissionError: a pinned commit. IsADirectoryError, NotADirectoryError: a folder
            is in the way. FileExistsError: `exclusive` and the file exists at head.
        """
        loc = self._loc(path)
        if loc.commit is not None:
            raise PermissionError(
                errno.EROFS, f"{loc.url}: commit {loc.commit} is read only; write at head"
            )
        if not loc.path:
            raise IsADirectoryError(errno.EISDIR, f"{loc.url} is the project's root")
        view = self._view(loc, refresh=exclusive)
        if exclusive and view.file(loc.path) is not None:
            raise FileExistsError(errno.EEXIST, f"{loc.url} exists")
        if view.is_dir(loc.path):
            raise IsADirectoryError(errno.EISDIR, f"{loc.url} is a folder")
        parent = loc.path.rsplit("/", 1)[0] if "/" in loc.path else ""
        while parent:
            if view.file(parent) is not None:
                raise NotADirectoryError(errno.ENOTDIR, f"{loc.url}: {parent} is a file")
            parent = parent.rsplit("/", 1)[0] if "/" in parent else ""
        return loc

    def _upload(self, loc: Location, body: IO[bytes] | Any, size: int, exclusive: bool) -> None:
        """One PUT of `body`; the listing learns the answer without asking again."""
        if exclusive:
            self._writable(loc.name(), exclusive=True)  # the file may have appeared since
        with translated():
            result = self._shared.project(loc.project).upload(loc.path, body, size=size)
        self._shared.changed(
            loc.project,
            loc.path,
            RemoteFile(path=loc.path, size=result.size, mtime_ms=result.mtime_ms, key=result.key),
        )

    def _send(self, loc: Location, body: IO[bytes] | Any, size: int, exclusive: bool) -> None:
        """Upload now, or, inside `with fs.transaction`, when the transaction commits."""
        if not self._intrans:
            self._upload(loc, body, size, exclusive)
            return
        # fsspec's open() hands the file to the transaction, which commits or discards it.
        with self.open(loc.name(), "xb" if exclusive else "wb") as f:
            shutil.copyfileobj(body, f, blobs.COPY_CHUNK)

    def _open_write(self, path: str, *, exclusive: bool, autocommit: bool) -> files.WriteFile:
        loc = self._writable(path, exclusive=exclusive)

        def upload(body: IO[bytes], size: int) -> None:
            self._upload(loc, body, size, exclusive)

        return files.WriteFile(self, loc.name(), upload=upload, autocommit=autocommit)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        """Write `value` as the file (mode="create": FileExistsError if it exists at head)."""
        # mode="create" is checked once, by the upload, just before the bytes are sent.
        loc = self._writable(path)
        self._send(loc, io.BytesIO(value), len(value), mode == "create")

    def put_file(
        self,
        lpath: Any,
        rpath: str,
        callback: Any = DEFAULT_CALLBACK,
        mode: str = "overwrite",
        **kwargs: Any,
    ) -> None:
        """Upload a local file, streamed from disk (a local folder makes nothing: folders
        exist through their files)."""
        if os.path.isdir(lpath):
            return
        loc = self._writable(rpath)
        with open(lpath, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            callback.set_size(size)
            self._send(loc, f, size, mode == "create")
            callback.relative_update(size)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Copy a file, streamed from its blob into the upload (a folder copies nothing)."""
        if travelled_pin(path1, self.host) is None and self.isdir(path1):
            return
        src, file, _ = self._blob(path1)
        dst = self._writable(path2)
        source = blobs.BlobSource(self._shared.project(src.project), file)
        try:
            self._send(dst, source, file.size, False)
        finally:
            source.close()

    def rm_file(self, path: str) -> None:
        """Delete a file (a new commit without it).

        Raises:
            PermissionError: a pinned commit, or a server without DELETE (the v1 API has none).
        """
        loc = self._loc(path)
        if loc.commit is not None:
            raise PermissionError(errno.EROFS, f"{loc.url}: commit {loc.commit} is read only")
        view = self._seen(loc)
        if view.file(loc.path) is None:
            if view.is_dir(loc.path):
                raise IsADirectoryError(errno.EISDIR, f"{loc.url} is a folder: rm(recursive=True)")
            raise FileNotFoundError(errno.ENOENT, f"{loc.url}: no such file")
        with translated():
            deleted = self._shared.project(loc.project).delete(loc.path)
        if not deleted:
            raise PermissionError(
                errno.EPERM,
                f"{loc.url}: the server at {self.host} cannot delete files (DELETE is not part "
                "of Domino's v1 API); delete it in Domino's web UI",
            )
        self._shared.changed(loc.project, loc.path, None)

    _rm = rm_file

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete files; with `recursive`, folders with everything in them (one DELETE a file)."""
        names = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        # Told apart before the first deletion: a folder is gone once its last file is.
        kinds = {name: self.info(name)["type"] for name in names}
        folders = [name for name, kind in kinds.items() if kind != "file"]
        if folders and not recursive:
            raise IsADirectoryError(errno.EISDIR, f"{PROTOCOL}://{folders[0]} is a folder")
        for name in reversed(names):
            if kinds[name] == "file":
                self.rm_file(name)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Nothing to do: folders exist through their files, as in the API."""
        loc = self._loc(path)
        if loc.commit is not None and not self._view(loc).is_dir(loc.path):
            raise PermissionError(errno.EROFS, f"{loc.url}: commit {loc.commit} is read only")

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        loc = self._loc(path)
        if not exist_ok and loc.path and self._view(loc).is_dir(loc.path):
            raise FileExistsError(errno.EEXIST, f"{loc.url} exists")
        self.mkdir(path)

    def rmdir(self, path: str) -> None:
        """Remove an empty folder: there is none (a folder without files does not exist)."""
        loc = self._loc(path)
        if self._view(loc).files_under(loc.path):
            raise OSError(errno.ENOTEMPTY, f"{loc.url} is not empty")


def _shows(view: listings.View, rel: str) -> bool:
    return view.file(rel) is not None or view.is_dir(rel)
