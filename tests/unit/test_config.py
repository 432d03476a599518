"""Settings precedence (flag > env > file), key-file safety, sizes."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from dominofs.config import config_path, load_settings, parse_size, read_key_file, write_config
from dominofs.errors import ConfigError, UsageError


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg"), **extra}


def test_flag_beats_env_beats_file(tmp_path: Path) -> None:
    env = _env(tmp_path)
    write_config(config_path(env), host="http://file:1", api_key="file-key")
    assert load_settings(env=env).host == "http://file:1"
    assert load_settings(env=env).api_key == "file-key"
    env.update(DOMINO_API_HOST="http://env:2", DOMINO_USER_API_KEY="env-key")
    s = load_settings(env=env)
    assert (s.host, s.api_key) == ("http://env:2", "env-key")
    key_file = tmp_path / "key"
    key_file.write_text("flag-key\n")
    key_file.chmod(0o600)
    s = load_settings(host="http://flag:3/", api_key_file=key_file, env=env)
    assert (s.host, s.api_key) == ("http://flag:3", "flag-key")


def test_config_file_is_written_0600(tmp_path: Path) -> None:
    path = config_path(_env(tmp_path))
    write_config(path, host="http://h:1", api_key='we"ird\\key')
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_settings(env=_env(tmp_path)).api_key == 'we"ird\\key'


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("secret-value")
    key_file.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        read_key_file(key_file)
    assert "secret-value" not in str(info.value)


def test_config_file_with_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    env = _env(tmp_path)
    write_config(config_path(env), host="http://h:1", api_key="k")
    config_path(env).chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_settings(env=env)


def test_missing_host_and_key_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DOMINO_API_HOST"):
        load_settings(env=_env(tmp_path))
    with pytest.raises(ConfigError, match="DOMINO_USER_API_KEY"):
        load_settings(env=_env(tmp_path, DOMINO_API_HOST="http://h:1"))
    with pytest.raises(ConfigError, match="not a URL"):
        load_settings(env=_env(tmp_path, DOMINO_API_HOST="h:1", DOMINO_USER_API_KEY="k"))


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        read_key_file(tmp_path / "nope")
    assert info.value.errno == errno.EINVAL


def test_repr_never_shows_the_key(tmp_path: Path) -> None:
    s = load_settings(env=_env(tmp_path, DOMINO_API_HOST="http://h:1", DOMINO_USER_API_KEY="zz9"))
    assert "zz9" not in repr(s)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10GiB", 10 * 1024**3), ("500MB", 500 * 1000**2), ("1048576", 1048576), ("1.5k", 1500)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "10XB", "-5", "1e9"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_allow_other_needs_user_allow_other_unless_root(tmp_path: Path) -> None:
    from dominofs.errors import UsageError
    from dominofs.mount import check_allow_other

    conf = tmp_path / "fuse.conf"
    conf.write_text("# mount_max = 1000\n#user_allow_other\n")
    with pytest.raises(UsageError, match=r"user_allow_other in .*fuse\.conf"):
        check_allow_other(conf, euid=1000)
    check_allow_other(conf, euid=0)
    conf.write_text("user_allow_other  # let others in\n")
    check_allow_other(conf, euid=1000)
