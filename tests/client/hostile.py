"""A real HTTP server on loopback that misbehaves on purpose, for the client's fault tests.

It answers from a script: each request pops the next planned answer (status, headers, body),
so a test can say "503 with Retry-After, then 200" and count what the client really sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    status: int = 200
    body: bytes | Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering
    stall: float = 0.0  # seconds to wait before answering
    missing: int = 0  # announce this many bytes more than the body has, then hang up
    hang_up: bool = False  # answer as if keeping the connection alive, then close it
    pause: tuple[int, float] = (0, 0.0)  # send this many body bytes, then wait this long
    chunked: bool = False  # Transfer-Encoding: chunked instead of a Content-Length


@dataclass
class Hostile:
    url: str
    plan: list[Answer]
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    hung_up: threading.Event = field(default_factory=threading.Event)
    connections: int = 0


@contextmanager
def hostile_server(plan: list[Answer]) -> Iterator[Hostile]:
    state = Hostile(url="", plan=list(plan))
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            state.connections += 1

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.seen.append((self.command, self.path, dict(self.headers), body))
            ans = state.plan.pop(0) if state.plan else Answer(500, {"message": "plan ran out"})
            if ans.stall:
                stop.wait(ans.stall)
            if ans.drop:
                self.close_connection = True
                self.connection.shutdown(2)
                return
            raw = ans.body if isinstance(ans.body, bytes) else json.dumps(ans.body).encode()
            self.send_response(ans.status)
            for k, v in ans.headers.items():
                self.send_header(k, v)
            if ans.chunked:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(raw), 1000):
                    part = raw[i : i + 1000]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
                return
            self.send_header("Content-Length", str(len(raw) + ans.missing))
            self.end_headers()
            first, wait = ans.pause
            if wait:
                self.wfile.write(raw[:first])
                self.wfile.flush()
                stop.wait(wait)
                raw = raw[first:]
            self.wfile.write(raw)
            if ans.missing or ans.hang_up:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
            if ans.hang_up:
                state.hung_up.set()

        do_GET = do_PUT = do_POST = do_DELETE = _answer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    t = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        yield state
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()
        t.join(5)
