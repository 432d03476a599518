"""Settings: where the server is, which key to use, where caches and state live.

Owns: the precedence flags > environment > config file (CONTRACT §1), size parsing, and the
refusal of key files others can read. Must not import requests or anything that talks to a
server. The key is kept out of repr() so it cannot leak through logs or tracebacks.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from .errors import ConfigError, UsageError

APP = "dominofs"
DEFAULT_CACHE_SIZE = 10 * 1024**3

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Parse '10GiB', '500MB', '1048576' into bytes.

    Raises:
        UsageError: not a size.
    """
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise UsageError(f"{text!r} is not a size: write for example 10GiB, 500MB or 1048576")
    return int(float(m.group(1)) * _UNITS[unit])


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """The config file: $XDG_CONFIG_HOME/dominofs/config.toml (~/.config/... by default)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".config"
    )
    return Path(base) / APP / "config.toml"


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP))


def default_state_dir() -> Path:
    return Path(platformdirs.user_state_dir(APP))


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700: caches and queues hold project data.

    Parents it creates are 0700 as well (their names alone tell which projects are used);
    parents that already exist are left as they are.
    """
    created: list[Path] = []
    parent = path
    while not parent.exists() and parent != parent.parent:
        created.append(parent)
        parent = parent.parent
    path.mkdir(parents=True, exist_ok=True)
    for directory in created:
        if directory != path:
            os.chmod(directory, 0o700)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def create_private_file(path: Path) -> Path:
    """Create `path` empty with mode 0600 if missing; an existing one loses group/other bits.

    For SQLite databases: SQLite gives its -wal and -shm files the database file's mode.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, mode & 0o700)
    finally:
        os.close(fd)
    return path


def fsync_dir(path: Path) -> None:
    """Make the names in folder `path` durable (what a power loss must not undo)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_private(path: Path, what: str) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{what} {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {path}"
        )


def read_key_file(path: Path) -> str:
    """Read an API key from a file only its owner can read.

    Raises:
        ConfigError: missing, empty, or readable by group or others.
    """
    try:
        _check_private(path, "key file")
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"key file {path} does not exist") from None
    except OSError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    if not key:
        raise ConfigError(f"key file {path} is empty")
    return key


def _read_config_file(path: Path) -> dict[str, object]:
    if not path.exists():
        return {}
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if "api_key" in data:
        _check_private(path, "config file")
    return data


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to reach a server. `api_key` never appears in repr()."""

    host: str
    api_key: str = field(repr=False)
    cache_dir: Path = field(default_factory=default_cache_dir)
    cache_size: int = DEFAULT_CACHE_SIZE
    state_dir: Path = field(default_factory=default_state_dir)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)


def load_settings(
    *,
    host: str | None = None,
    api_key_file: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_size: str | int | None = None,
    env: Mapping[str, str] | None = None,
    require_key: bool = True,
) -> Settings:
    """Resolve settings: flag, then environment, then the config file.

    Raises:
        ConfigError: no host, no key (when required), or an unsafe key file.
        UsageError: a malformed size.
    """
    env = os.environ if env is None else env
    file_data = _read_config_file(config_path(env))

    resolved_host = host or env.get("DOMINO_API_HOST") or _str(file_data.get("host"))
    if not resolved_host:
        raise ConfigError(
            "no Domino server: pass --host URL, set DOMINO_API_HOST, or run dominofs login"
        )
    resolved_host = resolved_host.rstrip("/")
    if not re.match(r"^https?://[^/\s]+", resolved_host):
        raise ConfigError(f"host {resolved_host!r} is not a URL: write http(s)://HOST[:PORT]")

    if api_key_file is not None:
        key = read_key_file(Path(api_key_file))
    else:
        key = env.get("DOMINO_USER_API_KEY") or _str(file_data.get("api_key")) or ""
    if require_key and not key:
        raise ConfigError(
            "no API key: pass --api-key-file PATH, set DOMINO_USER_API_KEY, or run dominofs login"
        )

    cdir = cache_dir or env.get("DOMINOFS_CACHE_DIR") or _str(file_data.get("cache_dir"))
    size = cache_size if cache_size is not None else file_data.get("cache_size")
    state = env.get("DOMINOFS_STATE_DIR") or _str(file_data.get("state_dir"))
    return Settings(
        host=resolved_host,
        api_key=key,
        cache_dir=Path(cdir) if cdir else default_cache_dir(),
        cache_size=parse_size(size) if isinstance(size, str | int) else DEFAULT_CACHE_SIZE,
        state_dir=Path(state) if state else default_state_dir(),
        connect_timeout=_seconds(
            env, "DOMINOFS_CONNECT_TIMEOUT", file_data, "connect_timeout", 5.0
        ),
        read_timeout=_seconds(env, "DOMINOFS_READ_TIMEOUT", file_data, "read_timeout", 30.0),
    )


def _seconds(
    env: Mapping[str, str], var: str, file_data: Mapping[str, object], name: str, default: float
) -> float:
    """A timeout in seconds from the environment, then the config file (for slow links, tests).

    Raises:
        UsageError: not a positive number.
    """
    raw = env.get(var) or file_data.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = -1.0
    if not 0 < value <= 3600:
        raise UsageError(f"{var} / {name} = {raw!r} is not a number of seconds in (0, 3600]")
    return value


def write_config(path: Path, *, host: str, api_key: str) -> None:
    """Write the config file with mode 0600 from the first byte (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"host = {_toml_str(host)}\napi_key = {_toml_str(api_key)}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
