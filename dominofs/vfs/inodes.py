"""The inode table: the project's tree overlaid by the local layer, as one namespace.

Owns: looking a path up (a layer inode, a file or folder of the remote tree, a symlink carried
by a `NAME.dominolink` file with `--links`, or nothing), the names in a folder, every stat the
mount reports (inode numbers stable across remounts, owners, modes, ns times, link counts:
folders 2 + subfolders), the stat cache, and the primitives that change the namespace (name an
inode, drop a name, copy a remote node up into the layer, whiteouts) keeping the folder index,
the stat cache and the layer's batch in step. Must not call the server, the cache's download
machinery or the outbox: the VFS above decides, this module keeps the books.

Inode numbers: 1 is the root; inodes made here count up from 2; a node of the remote tree that
the layer does not hold has a number hashed from its path (stable across remounts), unless an
inode of the layer claimed that number (a remote file renamed here keeps its number), in which
case the next hash in a fixed chain is used.

Locking: the caller (the VFS) holds its lock around every mutation. Readers may call `lookup`,
`stat` and `list` without it: every structure is updated by single assignments, and `gen`
tells a reader whether a stat it computed may be cached.
"""

from __future__ import annotations

import hashlib
import stat as _stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..ignore import IgnoreRules
from ..layer import ROOT_INO, Inode, Layer, Loaded
from ..links import LINK_SUFFIX, MAX_TARGET, link_file
from ..models import RemoteFile
from ..tree import Tree

StatDict = dict[str, int]

REMOTE_BASE = 1 << 40  # inode numbers from here up are hashed from paths
_SPAN = (1 << 63) - REMOTE_BASE
NAME_MAX = 255

# What lookup finds.
NODE = "node"  # an inode of the layer
FILE = "file"  # a file of the remote tree
DIR = "dir"  # a folder of the remote tree (or the root without a layer)
LINK = "link"  # a symlink a remote NAME.dominolink carries (with --links)
NONE = "none"


@dataclass(frozen=True)
class Defaults:
    """What the mount shows for what the server cannot hold (owner, group, modes)."""

    uid: int
    gid: int
    file_mode: int  # permission bits of a remote file
    dir_mode: int  # permission bits of a remote folder


def remote_hash(path: str) -> int:
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return REMOTE_BASE + int.from_bytes(digest, "big") % _SPAN


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


class Children:
    """The names directly in each folder, for the paths the layer names (so listing a folder
    does not scan every inode)."""

    __slots__ = ("_by_folder",)

    def __init__(self) -> None:
        self._by_folder: dict[str, set[str]] = {}

    def add(self, path: str) -> None:
        folder, _, name = path.rpartition("/")
        self._by_folder.setdefault(folder or "/", set()).add(name)

    def remove(self, path: str) -> None:
        folder, _, name = path.rpartition("/")
        folder = folder or "/"
        names = self._by_folder.get(folder)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_folder[folder]

    def names(self, folder: str) -> Iterable[str]:
        return self._by_folder.get(folder, ())

    def has(self, folder: str) -> bool:
        return folder in self._by_folder


class Namespace:
    """The mount's namespace (see the module docstring)."""

    def __init__(
        self,
        tree: Tree,
        layer: Layer | None,
        defaults: Defaults,
        *,
        started_ns: int,
        links: bool = False,
        ignore: IgnoreRules | None = None,
    ) -> None:
        self.tree = tree
        self.layer = layer
        self.defaults = defaults
        self.links = links
        self.ignore = ignore or IgnoreRules()
        self.started_ns = started_ns
        loaded = layer.load() if layer is not None else Loaded({}, {}, set(), True)
        self.fresh = loaded.fresh
        self.inodes: dict[int, Inode] = loaded.inodes
        self.names: dict[str, int] = loaded.names
        # path -> monotonic time the server's deletion was done (None: not yet)
        self.whiteouts: dict[str, float | None] = dict.fromkeys(loaded.whiteouts)
        self.children = Children()
        for p in self.names:
            if p != "/":
                self.children.add(p)
        self.stats: dict[str, StatDict] = {}
        self.gen = 0
        self.root_extra = 0  # folders the VFS adds to the root (.runs, .dominofs)
        self._nlinks: dict[str, tuple[Tree, int]] = {}  # folder -> (tree, its link count)
        self._ignored: dict[str, bool] = {}
        # Inodes written and not queued yet: an open writer, or a last close the queuer has
        # not taken yet (kept by the VFS).
        self.writing: dict[int, Inode] = {}
        # Inodes whose upload landed but no listing has shown yet (settled by the refresher).
        self.unsettled: dict[int, Inode] = {}
        self._next = (layer.max_ino(REMOTE_BASE) if layer is not None else ROOT_INO) + 1
        if layer is not None and "/" not in self.names:
            root = Inode(
                ROOT_INO, _stat.S_IFDIR | defaults.dir_mode, defaults.uid, defaults.gid,
                atime=started_ns, mtime=started_ns, ctime=started_ns,
            )  # fmt: skip
            self.inodes[ROOT_INO] = root
            self.name(root, "/")

    # -- looking up (no lock needed) ---------------------------------------------------------

    def lookup(self, path: str) -> tuple[str, Any]:
        """(NODE, Inode) | (FILE, RemoteFile) | (DIR, None) | (LINK, RemoteFile) | (NONE, None)."""
        ino = self.names.get(path)
        if ino is not None:
            return NODE, self.inodes[ino]
        if path == "/":
            return DIR, None
        if path in self.whiteouts:
            return NONE, None
        rel = path[1:]
        tree = self.tree
        f = tree.files.get(rel)
        if f is not None:
            if self.links and rel.endswith(LINK_SUFFIX) and self._carries(rel, tree):
                return NONE, None  # shown as the symlink it carries
            return FILE, f
        if tree.is_dir(rel):
            return DIR, None
        if self.links:
            lf = tree.files.get(rel + LINK_SUFFIX)
            if (
                lf is not None
                and 0 < lf.size <= MAX_TARGET
                and link_file(path) not in self.whiteouts
            ):
                return LINK, lf
        return NONE, None

    def _carries(self, rel: str, tree: Tree) -> bool:
        """True when the remote file `rel` (NAME.dominolink) is shown as the symlink NAME."""
        name = rel[: -len(LINK_SUFFIX)]
        f = tree.files.get(rel)
        if not name or name.endswith("/") or f is None or not 0 < f.size <= MAX_TARGET:
            return False
        return name not in tree.files and not tree.is_dir(name)

    def is_dir(self, path: str) -> bool:
        kind, obj = self.lookup(path)
        return kind == DIR or (kind == NODE and _stat.S_ISDIR(obj.mode))

    def remote_has(self, path: str) -> bool:
        """True when the current tree has something at `path` (a whiteout still hides it)."""
        rel = path[1:]
        tree = self.tree
        if rel in tree.files or tree.is_dir(rel):
            return True
        return self.links and (rel + LINK_SUFFIX) in tree.files

    def names_in(self, path: str) -> list[str]:
        """Names in the folder `path` (sorted, without . and ..)."""
        rel = path[1:]
        remote = self.tree.children(rel) or ()
        local = self.children.names(path)
        if not self.whiteouts and not self.links:
            if not local:
                return list(remote)
            return sorted({*remote, *local})
        names: set[str] = set(local)
        prefix = "/" if path == "/" else path + "/"
        lookup = self.lookup
        for n in remote:
            if n in names:
                continue
            p = prefix + n
            if lookup(p)[0] != NONE:
                names.add(n)
            elif (
                self.links and n.endswith(LINK_SUFFIX) and lookup(p[: -len(LINK_SUFFIX)])[0] == LINK
            ):
                names.add(n[: -len(LINK_SUFFIX)])
        return sorted(names)

    def remote_ino(self, path: str) -> int:
        h = remote_hash(path)
        while True:
            node = self.inodes.get(h)
            if node is None or path in node.names:
                return h
            h = remote_hash(f"{path}\0{h}")

    def is_local_only(self, path: str, mode: int) -> bool:
        """True when `path` holding a node of `mode` never goes to the server."""
        if _stat.S_ISREG(mode):
            return self.ignored(path)
        if _stat.S_ISLNK(mode):
            return not self.links or self.ignored(path)
        return not _stat.S_ISDIR(mode)

    def ignored(self, path: str) -> bool:
        """`.dominoignore` and the built-in rules (fixed while mounted), remembered per path:
        matching them was a tenth of a copy-in's CPU."""
        known = self._ignored.get(path)
        if known is None:
            if len(self._ignored) > 200_000:
                self._ignored = {}
            known = self._ignored[path] = self.ignore.is_ignored(path[1:])
        return known

    # -- stats -------------------------------------------------------------------------------

    def stat(self, path: str) -> StatDict | None:
        """The stat of `path` (None: nothing there), cached until the path changes."""
        st = self.stats.get(path)
        if st is not None:
            return st
        gen, tree = self.gen, self.tree
        kind, obj = self.lookup(path)
        if kind == NODE:
            st = self.node_stat(obj, path)
            if obj.writers:
                return st  # its size and times move with every write
        elif kind == FILE:
            st = self.file_stat(path, obj)
        elif kind == DIR:
            st = self._dir_stat(
                ROOT_INO if path == "/" else self.remote_ino(path),
                _stat.S_IFDIR | self.defaults.dir_mode,
                self.defaults.uid, self.defaults.gid,
                self.started_ns, self.started_ns, self.started_ns, path,
            )  # fmt: skip
        elif kind == LINK:
            st = self._stat(
                self.remote_ino(path), _stat.S_IFLNK | 0o777, 1, obj.size,
                self.defaults.uid, self.defaults.gid, *(obj.mtime_ms * 1_000_000,) * 3,
            )  # fmt: skip
        else:
            return None
        if tree is self.tree and gen == self.gen:  # not from a tree or layer just changed
            self.stats[path] = st
        return st

    def file_stat(self, path: str, f: RemoteFile) -> StatDict:
        t = f.mtime_ms * 1_000_000
        d = self.defaults
        return self._stat(
            self.remote_ino(path), _stat.S_IFREG | d.file_mode, 1, f.size, d.uid, d.gid, t, t, t
        )

    def version_stat(self, path: str, size: int, mtime_ns: int, node: Inode | None) -> StatDict:
        """The stat of one version of a file (what an open handle on it reads)."""
        if node is not None:
            st = self.node_stat(node)
            st["st_size"], st["st_blocks"], st["st_mtime"] = size, (size + 511) // 512, mtime_ns
            return st
        d = self.defaults
        t = mtime_ns
        return self._stat(
            self.remote_ino(path), _stat.S_IFREG | d.file_mode, 1, size, d.uid, d.gid, t, t, t
        )

    def node_stat(self, node: Inode, path: str | None = None) -> StatDict:
        mode = node.mode
        if _stat.S_ISDIR(mode):
            return self._dir_stat(
                node.ino, mode, node.uid, node.gid, node.atime, node.mtime, node.ctime,
                path if path is not None else (node.names[0] if node.names else None),
            )  # fmt: skip
        size = len(node.target or b"") if _stat.S_ISLNK(mode) else node.size
        st = self._stat(
            node.ino, mode, len(node.names), size, node.uid, node.gid,
            node.atime, node.mtime, node.ctime,
        )  # fmt: skip
        if node.rdev:
            st["st_rdev"] = node.rdev
        return st

    def _dir_stat(
        self, ino: int, mode: int, uid: int, gid: int, a: int, m: int, c: int, path: str | None
    ) -> StatDict:
        return self._stat(ino, mode, self._dir_nlink(path), 0, uid, gid, a, m, c)

    def _dir_nlink(self, path: str | None) -> int:
        """2 + the folder's subfolders, kept until a folder is named or dropped in it (a file
        made in it changes its times, not this: counting at every create made `cp -r` of many
        files into one folder quadratic)."""
        if path is None:
            return 2
        tree = self.tree
        kept = self._nlinks.get(path)
        if kept is not None and kept[0] is tree:
            return kept[1]
        gen = self.gen
        subdirs = self.root_extra if path == "/" else 0
        prefix = "/" if path == "/" else path + "/"
        for n in self.names_in(path):
            p = prefix + n
            ino_ = self.names.get(p)
            if ino_ is not None:
                child = self.inodes.get(ino_)
                subdirs += child is not None and _stat.S_ISDIR(child.mode)
            elif tree.is_dir(p[1:]):
                subdirs += 1
        if gen == self.gen:
            self._nlinks[path] = (tree, 2 + subdirs)
        return 2 + subdirs

    @staticmethod
    def _stat(
        ino: int, mode: int, nlink: int, size: int, uid: int, gid: int, a: int, m: int, c: int
    ) -> StatDict:
        return {
            "st_ino": ino,
            "st_mode": mode,
            "st_nlink": nlink,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_uid": uid,
            "st_gid": gid,
            "st_atime": a,
            "st_mtime": m,
            "st_ctime": c,
        }

    # -- changing (the caller holds the VFS lock) -------------------------------------------

    def new_ino(self) -> int:
        ino = self._next
        self._next += 1
        return ino

    def changed(self, *paths: str) -> None:
        """Forget the cached stats of `paths` (and of every other name of their inodes)."""
        self.gen += 1
        stats = self.stats
        for p in paths:
            stats.pop(p, None)
            ino = self.names.get(p)
            if ino is not None:
                for q in self.inodes[ino].names:
                    stats.pop(q, None)

    def forget_stats(self) -> None:
        self.gen += 1
        self.stats = {}

    def save(self, node: Inode) -> None:
        """`node` changed: it goes to disk at the next commit."""
        if self.layer is not None:
            self.layer.save(node)
        for p in node.names:
            self.stats.pop(p, None)
        self.gen += 1

    def name(self, node: Inode, path: str) -> None:
        """Give `node` the name `path` (which must be free in the layer)."""
        self.inodes[node.ino] = node
        self.names[path] = node.ino
        node.names.append(path)
        if _stat.S_ISDIR(node.mode):
            self._nlinks.pop(parent_of(path), None)
        if path != "/":
            self.children.add(path)
        if self.layer is not None:
            self.layer.name(path, node.ino)
            self.layer.save(node)
        self.changed(path, parent_of(path))

    def unname(self, path: str) -> Inode:
        """Drop the name `path`; the inode stays in the table while it has another name or is
        kept by the caller (an open handle). Returns it."""
        ino = self.names.pop(path)
        node = self.inodes[ino]
        node.names.remove(path)
        if _stat.S_ISDIR(node.mode):
            self._nlinks.pop(parent_of(path), None)
            self._nlinks.pop(path, None)
        node.bases.pop(path, None)
        node.pending.discard(path)
        self.children.remove(path)
        if self.layer is not None:
            self.layer.unname(path)
            self.layer.save(node)
        self.changed(path, parent_of(path), *node.names)
        return node

    def drop(self, node: Inode) -> None:
        """Forget an inode with no name left."""
        self.inodes.pop(node.ino, None)
        if self.layer is not None:
            self.layer.drop(node)

    def hide(self, path: str) -> None:
        self.whiteouts[path] = None
        self._nlinks.pop(parent_of(path), None)
        if self.layer is not None:
            self.layer.whiteout(path)
        self.changed(path, parent_of(path))

    def unhide(self, path: str) -> bool:
        if path not in self.whiteouts:
            return False
        del self.whiteouts[path]
        self._nlinks.pop(parent_of(path), None)
        if self.layer is not None:
            self.layer.whiteout(path, on=False)
        self.changed(path, parent_of(path))
        return True

    def copy_up(self, path: str) -> Inode:
        """The layer's inode for `path`, copying a remote node up first (same number, the
        defaults as its metadata). The path must exist.

        Raises:
            KeyError: nothing at `path`.
        """
        kind, obj = self.lookup(path)
        if kind == NODE:
            node: Inode = obj
            return node
        d = self.defaults
        if kind == DIR:
            t = self.started_ns
            node = Inode(
                ROOT_INO if path == "/" else self.remote_ino(path), _stat.S_IFDIR | d.dir_mode,
                d.uid, d.gid, atime=t, mtime=t, ctime=t,
            )  # fmt: skip
        elif kind in (FILE, LINK):
            f: RemoteFile = obj
            t = f.mtime_ms * 1_000_000
            mode = _stat.S_IFREG | d.file_mode if kind == FILE else _stat.S_IFLNK | 0o777
            node = Inode(
                self.remote_ino(path), mode, d.uid, d.gid, atime=t, mtime=t, ctime=t,
                size=f.size, key=f.key,
            )  # fmt: skip
            node.bases[path] = f.key
        else:
            raise KeyError(path)
        self.name(node, path)
        return node

    def touch_dir(self, path: str, now: int) -> None:
        """The folder `path` gained or lost a name: its mtime and ctime are now."""
        if self.layer is None:
            return
        node = self.copy_up(path)
        node.mtime = node.ctime = now
        self.save(node)

    def commit(self, *, durable: bool = False) -> None:
        if self.layer is not None:
            self.layer.commit(durable=durable)

    # -- what the layer holds ----------------------------------------------------------------

    def local_totals(self) -> tuple[int, int]:
        """(objects, bytes) the layer holds that never go to the server."""
        objects = size = 0
        for node in self.inodes.values():
            if _stat.S_ISDIR(node.mode):
                continue
            if node.names and all(self.is_local_only(p, node.mode) for p in node.names):
                objects += 1
                if _stat.S_ISREG(node.mode):
                    size += node.size
        return objects, size

    def subtree(self, path: str) -> list[str]:
        """Every path below the folder `path` in the namespace (folders before their contents)."""
        out: list[str] = []
        stack = [path]
        while stack:
            d = stack.pop()
            prefix = "/" if d == "/" else d + "/"
            for n in self.names_in(d):
                p = prefix + n
                out.append(p)
                if self.is_dir(p):
                    stack.append(p)
        return out


def name_too_long(path: str) -> bool:
    """True when the last component of `path` is over NAME_MAX bytes (the kernel passes such
    names through: the filesystem must refuse them)."""
    name = path.rpartition("/")[2]
    return len(name) > NAME_MAX // 4 and len(name.encode("utf-8", "surrogateescape")) > NAME_MAX
