"""The published API endpoint of each project: its release and its long-lived worker process.

Owns projects/<id>/endpoint.json (the release and whether it is published), the worker's log
projects/<id>/endpoint.log and its checkout under scratch/. The worker (endpoint_worker.py, a
plain script) loads the bound file once and answers calls as JSON lines over stdin/stdout;
calls to one project are serialised. A worker that dies is started again on the next call.
Must not import anything from dominofs outside dominofs/server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import shutil
import string
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .blobs import write_atomic
from .commits import now_ms
from .projects import Project
from .runner import Checkout
from .store import Store

log = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).with_name("endpoint_worker.py")
CALL_TIMEOUT = 60.0
START_TIMEOUT = 60.0
LINE_LIMIT = 1 << 26  # results can be large JSON lines


class EndpointError(Exception):
    """A failed call: status and message for the JSON error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class CallResult:
    body: dict[str, Any]
    deserialization_ms: float
    user_ms: float
    serialization_ms: float


@dataclass
class Endpoint:
    """One project's endpoint: the persisted state plus its live worker."""

    project: Project
    state: dict[str, Any] = field(default_factory=lambda: {"isPublished": False, "release": None})
    proc: asyncio.subprocess.Process | None = None
    scratch: Path | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def path(self) -> Path:
        return self.project.dir / "endpoint.json"

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.state).encode("utf-8"))


def request_id() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(16))


class Endpoints:
    """Publish, call, inspect and unpublish each project's endpoint."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_project: dict[str, Endpoint] = {}

    def get(self, project: Project) -> Endpoint:
        ep = self._by_project.get(project.id)
        if ep is None:
            ep = Endpoint(project)
            if ep.path.exists():
                ep.state = json.loads(ep.path.read_text(encoding="utf-8"))
            self._by_project[project.id] = ep
        return ep

    async def publish(self, project: Project, commit: str, file: str, function: str) -> Endpoint:
        """Bind a release (the commit and file are already validated) and drop the old worker."""
        ep = self.get(project)
        async with ep.lock:
            await self._stop_worker(ep)
            old = ep.state.get("release") or {}
            version = int(old.get("version") or 0) + 1
            ep.state = {
                "isPublished": True,
                "release": {
                    "commitId": commit,
                    "file": file,
                    "function": function,
                    "version": version,
                },
                "publishedAt": now_ms(),
            }
            ep.save()
        return ep

    async def unpublish(self, project: Project) -> Endpoint:
        ep = self.get(project)
        async with ep.lock:
            await self._stop_worker(ep)
            ep.state = {"isPublished": False, "release": None}
            ep.save()
        return ep

    async def call(self, project: Project, parameters: list[Any], decode_ms: float) -> CallResult:
        """Run the bound function with parameters in the worker. Raises EndpointError."""
        ep = self.get(project)
        async with ep.lock:
            release = ep.state.get("release")
            if not ep.state.get("isPublished") or not release:
                raise EndpointError(404, f"no endpoint is published for {project.full_name}")
            proc = await self._ensure_worker(ep, release)
            reply = await self._exchange(ep, proc, {"parameters": parameters})
        if not reply.get("ok"):
            raise EndpointError(500, str(reply.get("error", "the endpoint function failed")))
        started = time.perf_counter()
        body = {"release": release, "requestId": request_id(), "result": reply.get("result")}
        return CallResult(
            body, decode_ms, float(reply.get("userMs", 0.0)), (time.perf_counter() - started) * 1000
        )

    async def _exchange(
        self, ep: Endpoint, proc: asyncio.subprocess.Process, message: dict[str, Any]
    ) -> dict[str, Any]:
        """One request line out, one reply line back. Caller holds ep.lock."""
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.write((json.dumps(message) + "\n").encode("utf-8"))
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), CALL_TIMEOUT)
        except (TimeoutError, ConnectionError) as exc:
            await self._stop_worker(ep)
            raise EndpointError(500, f"the endpoint worker did not answer: {exc!r}") from None
        if not line:
            await self._stop_worker(ep)
            raise EndpointError(500, "the endpoint worker exited; it restarts on the next call")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def _ensure_worker(
        self, ep: Endpoint, release: dict[str, Any]
    ) -> asyncio.subprocess.Process:
        """The live worker, started (checkout + load) if there is none. Caller holds ep.lock."""
        if ep.proc is not None and ep.proc.returncode is None:
            return ep.proc
        await self._stop_worker(ep)
        loop = asyncio.get_running_loop()
        scratch = Path(
            tempfile.mkdtemp(prefix=f"endpoint-{ep.project.id}-", dir=self.store.root / "scratch")
        )
        ep.scratch = scratch
        checkout = Checkout(self.store, ep.project, release["commitId"], scratch)
        await loop.run_in_executor(None, checkout.materialise)
        with open(ep.project.dir / "endpoint.log", "ab") as errlog:
            ep.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER_SCRIPT),
                release["file"],
                release["function"],
                cwd=scratch,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=errlog,
                limit=LINE_LIMIT,
            )
        assert ep.proc.stdout is not None
        try:
            line = await asyncio.wait_for(ep.proc.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            line = b""
        ready: dict[str, Any] = json.loads(line) if line else {"error": "worker did not start"}
        if not ready.get("ready"):
            await self._stop_worker(ep)
            raise EndpointError(500, f"the endpoint could not load: {ready.get('error')}")
        return ep.proc

    async def _stop_worker(self, ep: Endpoint) -> None:
        proc, ep.proc = ep.proc, None
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if ep.scratch is not None:
            shutil.rmtree(ep.scratch, ignore_errors=True)
            ep.scratch = None

    async def shutdown(self) -> None:
        for ep in self._by_project.values():
            await self._stop_worker(ep)
