"""The file modes a mount keeps for itself (the API has none), journaled on local disk.

Owns: one mount's modes file (JSON lines, `["path", mode]`, or `["path", null]` for "back to
the default"), reading it back (with the single-object `attrs.json` of older versions),
recording one change, and compacting the file.
Must not know FUSE, the VFS's nodes or HTTP: callers hand paths and mode bits.

Why a journal: the whole map was rewritten on every change, so `chmod -R` and a `cp` of files
whose mode is not 0644/0666 were quadratic (4,000 files of mode 0600: `cp` took 18.7 s,
against 3.1 s for 0644). A change now appends one line; the file is rewritten whole only when
it holds more than twice the lines it needs. Like the old file it is not fsynced: a mode is the
mount's own metadata, and a crash of the process loses no line already written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_SLACK = 1000  # lines a journal may hold beyond twice its live entries before it is compacted
LEGACY_NAME = "attrs.json"  # `{"path": {"mode": m}}`, rewritten whole (before the journal)


class ModeJournal:
    """Modes by path (mode bits only), mirrored in `modes` and journaled at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.modes: dict[str, int] = {}
        self._lines = 0  # lines in the file: compaction is due when they outnumber the modes
        self._fh: IO[str] | None = None
        self._load()

    def record(self, path: str, mode: int | None) -> None:
        """`path` now has `mode` (None: the default). A repeat of the current value is free."""
        if self.modes.get(path) == mode:
            return
        if mode is None:
            del self.modes[path]
        else:
            self.modes[path] = mode
        if self._lines > 2 * len(self.modes) + _SLACK:
            self.compact()
            return
        try:
            fh = self._fh if self._fh is not None else self._open()
            fh.write(json.dumps([path, mode]) + "\n")
            fh.flush()
            self._lines += 1
        except OSError as exc:
            log.warning("cannot save the mode of %s to %s: %s", path, self.path, exc.strerror)

    def compact(self) -> None:
        """Rewrite the file with one line per mode kept (and drop an older version's file)."""
        self.close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps([p, m]) + "\n" for p, m in self.modes.items())
            os.replace(tmp, self.path)
            self._lines = len(self.modes)
            legacy = self._legacy()
            if legacy is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(legacy)
        except OSError as exc:
            log.warning("cannot save file modes to %s: %s", self.path, exc.strerror)

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()

    def _open(self) -> IO[str]:
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open to append)
        return self._fh

    def _legacy(self) -> Path | None:
        legacy = self.path.with_name(LEGACY_NAME)
        return None if legacy == self.path else legacy

    def _load_legacy(self, legacy: Path) -> None:
        try:
            data = json.loads(legacy.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(data, dict):
            for p, a in data.items():
                if isinstance(a, dict) and isinstance(a.get("mode"), int):
                    self.modes[p] = a["mode"]

    def _load(self) -> None:
        legacy = self._legacy()
        if legacy is not None:
            self._load_legacy(legacy)
        try:
            with open(self.path, encoding="utf-8") as fh:
                lines = fh.readlines()
        except FileNotFoundError:
            lines = []
        except OSError as exc:
            log.warning("cannot read file modes from %s: %s", self.path, exc.strerror)
            lines = []
        for line in lines:
            try:
                p, m = json.loads(line)
            except (ValueError, TypeError):
                continue  # a torn last line from a crash mid-append
            if not isinstance(p, str):
                continue
            if isinstance(m, int):
                self.modes[p] = m
            else:
                self.modes.pop(p, None)
        self._lines = len(lines)
        if (legacy is not None and legacy.exists()) or (lines and not lines[-1].endswith("\n")):
            self.compact()  # one format from here on, and no torn line to append after
