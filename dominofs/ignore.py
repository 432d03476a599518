"""Which paths are never uploaded: `.dominoignore` rules and editors' temporary files.

Owns: the built-in list of editors' and tools' temporary names (vim, emacs, JetBrains, gedit,
LibreOffice, MS Office, sed -i, VS Code, Jupyter, libfuse), the always-private folders
(`.dominofs/`, `.git/`), and gitignore-syntax matching of a project's `.dominoignore` (via
pathspec).
Used by both the mount and the sync service. Must not touch the filesystem except to read an
ignore file, and must not import anything above models/errors/config.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import pathspec

log = logging.getLogger(__name__)

IGNORE_FILE = ".dominoignore"
STATE_DIR_NAME = ".dominofs"
ALWAYS_IGNORED_DIRS = frozenset({STATE_DIR_NAME, ".git"})

# One regex per tool, on the last path segment only.
_TEMP_NAME = re.compile(
    r"""^(?:
        \..*\.sw[a-px]          # vim/nano swap files: .name.swp, .swo, .swx, ...
      | .*~                     # vim/emacs/nano backups: name~
      | \#.*\#                  # emacs auto-save: #name#
      | \.\#.*                  # emacs lock (a dangling symlink): .#name
      | .*___jb_(?:tmp|old|bak)___   # JetBrains safe write
      | \.goutputstream-.*      # gedit / GIO atomic save
      | \.~lock\..*\#           # LibreOffice lock: .~lock.name#
      | ~\$.*                   # MS Office owner file: ~$name.docx
      | \.~.*                   # Jupyter's copy before an in-place save: .~name
      | sed[A-Za-z0-9]{6}       # sed -i: sedXXXXXX, renamed over the target
      | .*\.vsctmp              # VS Code's own atomic writes
      | \.fuse_hidden[0-9a-f]+  # libfuse's name for a file unlinked while open
    )$""",
    re.VERBOSE | re.DOTALL,
)

_VIM_PROBE_FIRST = 4913
_VIM_PROBE_STEP = 123


def is_editor_temp(name: str) -> bool:
    """True if `name` (one path segment) is an editor's or tool's temporary file."""
    if _TEMP_NAME.match(name):
        return True
    # vim probes whether it can keep the owner by creating 4913, then 5036, 5159, ...
    if name.isdigit() and len(name) <= 6:
        n = int(name)
        return n >= _VIM_PROBE_FIRST and (n - _VIM_PROBE_FIRST) % _VIM_PROBE_STEP == 0
    return False


class IgnoreRules:
    """The rules in force for one tree: built-ins plus `.dominoignore` patterns.

    Paths are project-relative with `/` separators; a directory may end with `/`.
    """

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = [p for p in (line.rstrip("\r\n") for line in patterns) if p.strip()]
        self._spec = pathspec.GitIgnoreSpec.from_lines(self.patterns)

    @classmethod
    def from_file(cls, path: Path) -> IgnoreRules:
        """Rules from an ignore file; a missing or unreadable file means no patterns."""
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            log.warning("cannot read %s (%s); using only the built-in rules", path, exc.strerror)
            return cls()
        return cls(text.splitlines())

    @classmethod
    def for_root(cls, root: Path) -> IgnoreRules:
        """Rules for a local tree: its top-level `.dominoignore`."""
        return cls.from_file(root / IGNORE_FILE)

    def is_ignored(self, relpath: str, *, is_dir: bool = False) -> bool:
        """True if `relpath` must never be uploaded (nor downloaded by the sync service)."""
        rel = relpath.strip("/")
        if not rel:
            return False
        parts = rel.split("/")
        if any(p in ALWAYS_IGNORED_DIRS for p in parts[:-1]) or (parts[-1] in ALWAYS_IGNORED_DIRS):
            return True
        if any(is_editor_temp(p) for p in parts):
            return True
        if not self.patterns:
            return False
        return bool(self._spec.match_file(rel + "/" if is_dir else rel))


def is_always_ignored(relpath: str) -> bool:
    """True for paths that no rule can re-include: `.dominofs/`, `.git/`, editors' files."""
    return IgnoreRules().is_ignored(relpath)
