"""Every everyday command and every error class, as a user runs them (subprocesses)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dominofs.api import DominoClient
from dominofs.cli import cli

from ..conftest import ALICE_KEY, LocalServer


def run(
    server_url: str, *args: str, key: str = ALICE_KEY, home: Path | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOMINO", "XDG_"))}
    env.update(DOMINO_API_HOST=server_url, DOMINO_USER_API_KEY=key)
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "dominofs", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def ok(server_url: str, *args: str, **kw: object) -> str:
    p = run(server_url, *args, **kw)  # type: ignore[arg-type]
    assert p.returncode == 0, p.stderr
    assert ALICE_KEY not in p.stdout + p.stderr
    return p.stdout


def test_put_ls_get_roundtrip(server: LocalServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub dir").mkdir(parents=True)
    (src / "a.csv").write_text("x,y\n1,2\n")
    (src / "sub dir" / "b.txt").write_bytes(os.urandom(2 * 1024 * 1024))
    (src / ".a.csv.swp").write_text("vim junk")  # an editor's file: never uploaded
    ok(server.url, "put", "alice/demo", str(src), "data")
    ok(server.url, "put", "alice/demo", str(src / "a.csv"))
    assert ok(server.url, "ls", "alice/demo").split() == [".dominoignore", "README.md", "a.csv",
                                                          "data/"]  # fmt: skip
    assert ok(server.url, "ls", "alice/demo", "data").split() == ["a.csv", "sub", "dir/"]
    listing = json.loads(ok(server.url, "ls", "alice/demo", "data", "-R", "--json"))
    assert {e["path"] for e in listing} == {"a.csv", "sub dir/b.txt"}
    assert "8" in ok(server.url, "ls", "-l", "alice/demo", "a.csv")
    out = tmp_path / "out"
    ok(server.url, "get", "alice/demo", "data", str(out))
    assert (out / "a.csv").read_text() == "x,y\n1,2\n"
    assert (out / "sub dir" / "b.txt").read_bytes() == (src / "sub dir" / "b.txt").read_bytes()
    ok(server.url, "get", "alice/demo", "a.csv", str(tmp_path))
    assert (tmp_path / "a.csv").read_text() == "x,y\n1,2\n"


def test_get_a_folder_without_the_blob_route(make_server: object, tmp_path: Path) -> None:
    srv: LocalServer = make_server("--no-v1-blobs")  # type: ignore[operator]
    files = {"data/a.csv": b"x,y\n1,2\n", "data/sub dir/b.bin": os.urandom(300_000)}
    with DominoClient(srv.url, ALICE_KEY) as client:
        for path, data in files.items():
            client.project("alice/demo").upload(path, io.BytesIO(data), size=len(data))
    srv.reset_stats()
    ok(srv.url, "get", "alice/demo", "data", str(tmp_path / "out"))
    for path, data in files.items():
        assert (tmp_path / "out" / path.removeprefix("data/")).read_bytes() == data
    # The first file finds the blob route gone; every file then comes by path, once.
    assert srv.requests_count("GET blobs") == 1
    assert srv.requests_count("GET content") == 2


@pytest.mark.slow
def test_runs_start_wait_list_show_log(server: LocalServer, tmp_path: Path) -> None:
    script = tmp_path / "hello.py"
    script.write_text("print('hello from the run')\n")
    ok(server.url, "put", "alice/demo", str(script))
    p = run(server.url, "runs", "start", "--wait", "--title", "greet", "alice/demo", "hello.py")
    assert p.returncode == 0, p.stderr
    run_id = p.stdout.strip()
    assert "Succeeded" in p.stderr
    assert "greet" in ok(server.url, "runs", "list", "alice/demo")
    shown = json.loads(ok(server.url, "runs", "show", "alice/demo", run_id))
    assert shown["status"] == "Succeeded"
    assert shown["isCompleted"] is True
    assert "hello from the run" in ok(server.url, "runs", "log", "alice/demo", run_id)
    failing = run(server.url, "runs", "start", "--wait", "--direct", "alice/demo", "exit", "3")
    assert failing.returncode == 8
    assert "Failed" in failing.stderr
    listed = json.loads(ok(server.url, "runs", "list", "--json", "alice/demo"))
    assert len(listed) == 2


@pytest.mark.slow
def test_call_and_search(server: LocalServer, tmp_path: Path) -> None:
    model = tmp_path / "model.py"
    model.write_text("def predict(x, y):\n    return x * y\n")
    ok(server.url, "put", "alice/demo", str(model))
    from dominofs.api import DominoClient

    pc = DominoClient(server.url, ALICE_KEY).project("alice/demo")
    pc.publish_endpoint(pc.head_commit(), "model.py", "predict")
    assert json.loads(ok(server.url, "call", "alice/demo", "6", "7")) == 42
    hits = json.loads(ok(server.url, "search", "model", "--area", "file", "--json"))
    assert any(h["path"].endswith("model.py") for h in hits)


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("ls", "not-a-project"), 2, "OWNER/PROJECT"),
        (("ls", "alice/nope"), 4, "not found"),
        (("get", "alice/demo", "missing.txt"), 4, "no such file"),
        (("call", "alice/demo", "{bad json"), 2, "not JSON"),
        (("put", "alice/demo", "/no/such/local/file"), 2, "does not exist"),
        (("runs", "show", "alice/demo", "0" * 24), 4, "not found"),
        (("search", "x", "--area", "nowhere"), 2, "nowhere"),
    ],
)
def test_errors_are_one_line_with_distinct_codes(
    server: LocalServer, args: tuple[str, ...], code: int, words: str
) -> None:
    p = run(server.url, *args)
    assert p.returncode == code, p.stderr
    assert words in p.stderr
    assert "Traceback" not in p.stderr
    assert ALICE_KEY not in p.stderr + p.stdout


def test_wrong_key_and_server_down(server: LocalServer) -> None:
    p = run(server.url, "ls", "alice/demo", key="wrong-key-123")
    assert p.returncode == 3
    assert "API key" in p.stderr
    assert "wrong-key-123" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    down = run("http://127.0.0.1:9", "ls", "alice/demo")
    assert down.returncode == 5
    assert "cannot reach" in down.stderr
    assert "Traceback" not in down.stderr


def test_debug_shows_traceback(server: LocalServer) -> None:
    p = run(server.url, "--debug", "ls", "alice/nope")
    assert p.returncode == 4
    assert "Traceback" in p.stderr
    assert ALICE_KEY not in p.stderr


def test_login_checks_and_saves_0600(server: LocalServer, tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    runner = CliRunner()
    bad = runner.invoke(cli, ["login", "--host", server.url], input="nope\n", env=env)
    assert bad.exit_code == 3
    assert not (tmp_path / "cfg" / "dominofs" / "config.toml").exists()
    good = runner.invoke(cli, ["login", "--host", server.url], input=f"{ALICE_KEY}\n", env=env)
    assert good.exit_code == 0, good.output
    cfg = tmp_path / "cfg" / "dominofs" / "config.toml"
    assert cfg.stat().st_mode & 0o777 == 0o600
    assert ALICE_KEY not in good.output
    p = subprocess.run(
        [sys.executable, "-m", "dominofs", "ls", "alice/demo"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "README.md" in p.stdout


def test_version_and_help() -> None:
    p = subprocess.run([sys.executable, "-m", "dominofs", "--version"], capture_output=True,
                       text=True, timeout=30)  # fmt: skip
    assert p.returncode == 0
    assert "dominofs" in p.stdout
