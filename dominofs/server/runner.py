"""Run execution: the v1 run lifecycle, run records on disk, checkouts and output commits.

Owns projects/<id>/runs/ (<run>.json, <run>.setup.log, <run>.stdout.log) and scratch
checkouts under scratch/. A run is an asyncio task: Queued -> Preparing (materialise the commit
into a scratch dir) -> Running (a subprocess in its own process group, stdout and stderr into one
log) -> Finishing (files the run created, changed or deleted become a new commit) -> Succeeded,
Failed, Error or Stopped. completed, isCompleted, outputCommitId and postProcessedTimestamp are
set in one step for every terminal status (python-domino's runs_start_blocking waits for
outputCommitId). Runs left unfinished by a stopped server are marked Error on the next start.
Must not import anything from dominofs outside dominofs/server.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .blobs import hash_file, write_atomic
from .commits import Conflict, FileEntry, check_shape, now_ms
from .projects import Project
from .store import Store, new_object_id

log = logging.getLogger(__name__)

TERMINAL = frozenset({"Succeeded", "Failed", "Error", "Stopped"})
KILL_GRACE = 1.0
ALWAYS_IGNORED = (".git", "__pycache__", ".dominofs")


class BadRequest(Exception):
    """A run request the server cannot accept (400)."""


@dataclass
class Run:
    """One run: its public record plus what the task needs while it is alive."""

    record: dict[str, Any]
    project: Project
    setup: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return str(self.record["id"])


def run_record(project: Project, number: int, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """A new run record with every key the API text lists (null for what is not known yet)."""
    return {
        "id": new_object_id(),
        "projectId": project.id,
        "number": number,
        "startingUserId": user_id,
        "queued": now_ms(),
        "started": None,
        "completed": None,
        "status": "Queued",
        "commitId": body["commitId"],
        "executor": None,
        "outputCommitId": None,
        "title": body.get("title"),
        "isArchived": False,
        "postProcessedTimestamp": None,
        "diagnosticStatistics": None,
        "isCompleted": False,
        "hardwareTierId": body.get("tier") or "local",
        "notebookName": None,
        "command": body["command"],
        "isDirect": bool(body.get("isDirect")),
    }


def validate_request(body: Any) -> dict[str, Any]:
    """Check a POST /runs body; raises BadRequest with a message for the 400."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    command = body.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        raise BadRequest("'command' must be a non-empty list of strings")
    for name in ("title", "tier", "commitId"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise BadRequest(f"{name!r} must be a string or null")
    for name in ("isDirect", "publishApiEndpoint"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise BadRequest(f"{name!r} must be a boolean or null")
    return body


def _unquote(arg: str) -> str:
    # Domino's own example sends ["\"model.py\"", ...]; its CLI strips the quotes.
    if len(arg) >= 2 and arg[0] == arg[-1] == '"':
        return arg[1:-1]
    return arg


def build_argv(command: list[str], is_direct: bool, checkout: Path) -> list[str]:
    """The argv for a run; raises BadRequest (becomes status Error) when it cannot start."""
    if is_direct:
        return ["/bin/sh", "-c", " ".join(command)]
    args = [_unquote(c) for c in command]
    first = args[0]
    interpreters = {".py": sys.executable, ".sh": shutil.which("bash") or "/bin/sh"}
    suffix = os.path.splitext(first)[1]
    if suffix in (".py", ".sh", ".R"):
        if not (checkout / first).is_file():
            raise BadRequest(f"File not found in the project: {first}")
        if suffix == ".R":
            rscript = shutil.which("Rscript")
            if rscript is None:
                raise BadRequest("Rscript is not installed on this server, so .R runs cannot start")
            return [rscript, *args]
        return [interpreters[suffix], *args]
    return args


def parse_patterns(text: str) -> list[str]:
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def is_ignored(path: str, patterns: list[str]) -> bool:
    """A small gitignore subset: a/b globs match whole paths, bare globs any segment."""
    parts = path.split("/")
    if any(p in ALWAYS_IGNORED for p in parts[:-1]) or parts[-1] in ALWAYS_IGNORED:
        return True
    for pat in patterns:
        directory = pat.endswith("/")
        pat = pat.strip("/")
        if "/" in pat:
            depth = pat.count("/") + 1
            prefix = "/".join(parts[:depth])
            if fnmatch.fnmatchcase(prefix, pat) and (not directory or len(parts) > depth):
                return True
            continue
        candidates = parts[:-1] if directory else parts
        if any(fnmatch.fnmatchcase(seg, pat) for seg in candidates):
            return True
    return False


class Checkout:
    """A scratch copy of one commit, remembering what it put there to spot changes later."""

    def __init__(self, store: Store, project: Project, commit: str, root: Path) -> None:
        self.store = store
        self.project = project
        self.commit = commit
        self.root = root
        self.base: dict[str, tuple[str, int, int]] = {}  # path -> (key, size, mtime_ns)

    def materialise(self) -> int:
        """Copy every file of the commit (copies, not links: a run may write in place)."""
        files, paths = self.project.files(self.commit)
        for path in paths:
            entry = files[path]
            dest = self.root / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.store.blobs.path(entry.key), dest)
            st = dest.stat()
            self.base[path] = (entry.key, st.st_size, st.st_mtime_ns)
        return len(paths)

    def changes(self) -> dict[str, Path | None]:
        """Paths the run created or changed (-> local file) or deleted (-> None)."""
        patterns: list[str] = []
        ignore_file = self.root / ".dominoignore"
        if ignore_file.is_file():
            patterns = parse_patterns(ignore_file.read_text(encoding="utf-8", errors="replace"))
        seen: set[str] = set()
        out: dict[str, Path | None] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if d not in ALWAYS_IGNORED]
            for name in filenames:
                local = Path(dirpath) / name
                rel = local.relative_to(self.root).as_posix()
                seen.add(rel)
                if local.is_symlink() or not local.is_file():
                    continue
                if rel not in self.base and is_ignored(rel, patterns):
                    continue
                if self._changed(rel, local):
                    out[rel] = local
        for rel in self.base:
            if rel not in seen:
                out[rel] = None
        return out

    def _changed(self, rel: str, local: Path) -> bool:
        base = self.base.get(rel)
        if base is None:
            return True
        st = local.stat()
        if (st.st_size, st.st_mtime_ns) == base[1:]:
            return False
        return hash_file(local) != base[0]


class Runner:
    """Starts, tracks and persists runs for every project."""

    def __init__(self, store: Store, *, time_limit: float) -> None:
        self.store = store
        self.time_limit = time_limit
        self.runs: dict[str, dict[str, Run]] = {}  # project id -> run id -> run
        self.executor_name = f"local:{socket.gethostname()}"
        self._load()

    def _load(self) -> None:
        """Read runs back; a run the last server left unfinished is now an Error."""
        scratch = self.store.root / "scratch"
        for child in scratch.iterdir():
            shutil.rmtree(child, ignore_errors=True)
        for project in self.store.projects.values():
            runs = self.runs.setdefault(project.id, {})
            rdir = project.dir / "runs"
            rdir.mkdir(parents=True, exist_ok=True)
            for path in rdir.glob("*.json"):
                record = json.loads(path.read_text(encoding="utf-8"))
                run = Run(record, project)
                if record["status"] not in TERMINAL:
                    self._append_setup(run, "The server stopped before this run finished.")
                    self._finish(run, "Error", record["commitId"], None)
                runs[run.id] = run

    def _runs_of(self, project: Project) -> dict[str, Run]:
        return self.runs.setdefault(project.id, {})

    def list_runs(self, project: Project) -> list[dict[str, Any]]:
        """Every run of the project, most recently queued first."""
        runs = sorted(self._runs_of(project).values(), key=lambda r: -int(r.record["number"]))
        return [dict(r.record) for r in runs]

    def get(self, project: Project, run_id: str) -> Run | None:
        return self._runs_of(project).get(run_id)

    def start(self, project: Project, user_id: str, body: dict[str, Any]) -> Run:
        """Queue a run (validated body, commitId already resolved) and start its task."""
        runs = self._runs_of(project)
        number = max((int(r.record["number"]) for r in runs.values()), default=0) + 1
        run = Run(run_record(project, number, user_id, body), project)
        runs[run.id] = run
        self._persist(run)
        run.task = asyncio.get_running_loop().create_task(self._execute(run))
        return run

    def logs(self, run: Run) -> tuple[str, str]:
        base = run.project.dir / "runs" / run.id
        setup = "\n".join(run.setup) + "\n" if run.setup else ""
        setup_path = base.with_suffix(".setup.log")
        if not run.setup and setup_path.exists():
            setup = setup_path.read_text(encoding="utf-8", errors="replace")
        stdout_path = base.with_suffix(".stdout.log")
        stdout = ""
        if stdout_path.exists():
            stdout = stdout_path.read_text(encoding="utf-8", errors="replace")
        return setup, stdout

    async def shutdown(self) -> None:
        """Stop every live run (each ends as Error, consistent on disk)."""
        tasks = [r.task for runs in self.runs.values() for r in runs.values() if r.task]
        live = [t for t in tasks if not t.done()]
        for t in live:
            t.cancel()
        if live:
            await asyncio.gather(*live, return_exceptions=True)

    # -- one run ------------------------------------------------------------------------------

    def _persist(self, run: Run) -> None:
        path = run.project.dir / "runs" / f"{run.id}.json"
        write_atomic(path, json.dumps(run.record).encode("utf-8"))

    def _append_setup(self, run: Run, line: str) -> None:
        run.setup.append(line)
        with open(run.project.dir / "runs" / f"{run.id}.setup.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def _set_status(self, run: Run, status: str, **extra: Any) -> None:
        run.record["status"] = status
        run.record.update(extra)
        self._persist(run)

    def _finish(self, run: Run, status: str, output: str, stats: dict[str, Any] | None) -> None:
        """Every terminal field in one step, so no reader sees half a finished run."""
        when = now_ms()
        run.record.update(
            status=status,
            completed=when,
            isCompleted=True,
            outputCommitId=output,
            postProcessedTimestamp=when,
            diagnosticStatistics=stats,
        )
        self._persist(run)

    async def _execute(self, run: Run) -> None:
        loop = asyncio.get_running_loop()
        input_commit = str(run.record["commitId"])
        scratch = Path(tempfile.mkdtemp(prefix=f"run-{run.id}-", dir=self.store.root / "scratch"))
        checkout = Checkout(self.store, run.project, input_commit, scratch)
        proc: asyncio.subprocess.Process | None = None
        try:
            self._set_status(run, "Preparing")
            self._append_setup(run, f"Preparing checkout of commit {input_commit}")
            count = await loop.run_in_executor(None, checkout.materialise)
            self._append_setup(run, f"Checked out {count} files into a scratch directory")
            try:
                argv = build_argv(run.record["command"], run.record["isDirect"], scratch)
                proc = await self._spawn(run, argv, scratch)
            except (BadRequest, OSError) as exc:
                self._append_setup(run, f"Could not start the run: {exc}")
                self._finish(run, "Error", input_commit, None)
                return
            status = await self._wait(run, proc)
            self._set_status(run, "Finishing")
            self._append_setup(run, "Saving files the run created or changed")
            output = await self._commit_outputs(run, checkout)
            stats = await loop.run_in_executor(None, read_diagnostics, scratch)
            self._append_setup(run, f"Run finished: {status}")
            self._finish(run, status, output, stats)
        except asyncio.CancelledError:
            if proc is not None:
                kill_group(proc)
            self._append_setup(run, "The server stopped while this run was in progress.")
            self._finish(run, "Error", input_commit, None)
            raise
        except Exception:
            log.exception("run %s failed inside the server", run.id)
            self._append_setup(run, "Internal error in the local server (see its log).")
            self._finish(run, "Error", input_commit, None)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def _spawn(self, run: Run, argv: list[str], cwd: Path) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env.update(
            PYTHONUNBUFFERED="1",
            DOMINO_PROJECT_OWNER=run.project.owner,
            DOMINO_PROJECT_NAME=run.project.name,
            DOMINO_RUN_ID=run.id,
            DOMINO_WORKING_DIR=str(cwd),
        )
        self._append_setup(run, f"Starting: {' '.join(argv)}")
        with open(run.project.dir / "runs" / f"{run.id}.stdout.log", "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a stop kills children too
            )
        self._set_status(run, "Running", started=now_ms(), executor=self.executor_name)
        return proc

    async def _wait(self, run: Run, proc: asyncio.subprocess.Process) -> str:
        try:
            code = await asyncio.wait_for(proc.wait(), self.time_limit)
        except TimeoutError:
            kill_group(proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), KILL_GRACE)
            except TimeoutError:
                kill_group(proc)
                await proc.wait()
            self._append_setup(run, f"Stopped: the run exceeded the limit of {self.time_limit:g} s")
            return "Stopped"
        self._append_setup(run, f"Process exited with code {code}")
        return "Succeeded" if code == 0 else "Failed"

    async def _commit_outputs(self, run: Run, checkout: Checkout) -> str:
        loop = asyncio.get_running_loop()
        changes = await loop.run_in_executor(None, checkout.changes)
        if not changes:
            return checkout.commit
        project = run.project
        async with project.lock:
            return await loop.run_in_executor(None, self._write_outputs, run, changes)

    def _write_outputs(self, run: Run, changes: dict[str, Path | None]) -> str:
        """Store changed files and commit them on top of head. Caller holds project.lock."""
        project = run.project
        head_files = project.file_map(project.head)
        head_folders = project.folders(project.head)
        when = now_ms()
        entries: dict[str, FileEntry | None] = {}
        for rel, local in sorted(changes.items()):
            if local is None:
                if rel in head_files:
                    entries[rel] = None
                continue
            try:
                if rel not in head_files:
                    check_shape(head_files, head_folders, rel)
            except Conflict as exc:
                self._append_setup(run, f"Not saved: {exc}")
                continue
            key, size = self.store.blobs.ingest_file(local)
            entries[rel] = FileEntry(key, size, when)
        if not entries:
            return str(run.record["commitId"])
        saved = sum(1 for e in entries.values() if e is not None)
        message = f"Run #{run.record['number']}: {saved} saved, {len(entries) - saved} deleted"
        return project.write_commit(entries, message)


def kill_group(proc: asyncio.subprocess.Process, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def read_diagnostics(root: Path) -> dict[str, Any] | None:
    """dominostats.json {"name": value} -> the API's diagnosticStatistics, else None."""
    path = root / "dominostats.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {"isError": True, "data": []}
    if not isinstance(raw, dict):
        return {"isError": True, "data": []}
    return {"isError": False, "data": [{"key": str(k), "value": str(v)} for k, v in raw.items()]}
