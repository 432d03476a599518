"""Where the local server's users and keys come from: a private file, the environment, argv.

Owns parsing `NAME:KEY` entries and the permission check on the users file. API keys do not
belong in argv (every local user can read it), so real keys come from `--users-file PATH` (one
`NAME:KEY` a line, mode 0600 or stricter) or `DOMINOFS_SERVE_USERS` ("NAME:KEY,NAME:KEY");
`--user NAME:KEY` stays for throwaway test keys. Never puts a key in an error message.
Must not import anything from dominofs outside dominofs/server.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

USERS_ENV = "DOMINOFS_SERVE_USERS"


def parse_user(text: str, *, where: str = "user") -> tuple[str, str]:
    """Split one `NAME:KEY` entry.

    Raises ValueError naming where it came from (never the key) when either half is missing.
    """
    name, sep, key = text.strip().partition(":")
    name, key = name.strip(), key.strip()
    if not sep or not name or not key:
        raise ValueError(f"{where}: expected NAME:KEY")
    return name, key


def read_users_file(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """The users of a `NAME:KEY`-per-line file; blank lines and `#` comments are skipped.

    Raises ValueError when the file cannot be read, is readable by group or others, or a line
    is malformed; the message is one line naming the file.
    """
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ValueError(
                    f"users file {p} is readable by others (mode {stat.S_IMODE(mode):o}); "
                    f"run: chmod 600 {p}"
                )
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"users file {p}: {reason}") from None
    users: list[tuple[str, str]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        users.append(parse_user(line, where=f"users file {p} line {number}"))
    return users


def users_from_env(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """The users of DOMINOFS_SERVE_USERS ("NAME:KEY,NAME:KEY"), or none when unset.

    Raises ValueError for a malformed entry.
    """
    value = (os.environ if environ is None else environ).get(USERS_ENV, "")
    return [
        parse_user(item, where=f"{USERS_ENV} entry {number}")
        for number, item in enumerate(value.split(","), 1)
        if item.strip()
    ]


def collect_users(
    *,
    cli_users: Sequence[tuple[str, str]] = (),
    users_files: Sequence[str | os.PathLike[str]] = (),
    environ: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """Every user from the users files, then the environment, then `--user` (later wins).

    Raises ValueError as read_users_file and users_from_env do.
    """
    users: list[tuple[str, str]] = []
    for path in users_files:
        users.extend(read_users_file(path))
    users.extend(users_from_env(environ))
    users.extend(cli_users)
    return users
