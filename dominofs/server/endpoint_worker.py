"""The published endpoint's worker process: load one Python file once, then answer calls.

Run as a plain script (not part of the package import graph) by endpoint.py:
    python endpoint_worker.py FILE FUNCTION
Protocol, one JSON object per line: it first writes {"ready": true} or {"ready": false,
"error": ...}; then for each request line {"parameters": [...]} it writes {"ok": true,
"result": ..., "userMs": ...} or {"ok": false, "error": "..."}. User code's own prints go to
stderr so they cannot corrupt the protocol stream.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
import traceback
from typing import Any, TextIO


def _protocol_stream() -> TextIO:
    # Keep the real stdout for the protocol; point fd 1 and sys.stdout at stderr.
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto


def _send(proto: TextIO, obj: dict[str, Any]) -> None:
    proto.write(json.dumps(obj) + "\n")
    proto.flush()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def main() -> int:
    file, function = sys.argv[1], sys.argv[2]
    proto = _protocol_stream()
    sys.path.insert(0, os.getcwd())
    try:
        namespace = runpy.run_path(file, run_name="__domino_endpoint__")
        func = namespace.get(function)
        if not callable(func):
            raise LookupError(f"function {function!r} not found in {file}")
    except BaseException as exc:
        traceback.print_exc()
        _send(proto, {"ready": False, "error": _describe(exc)})
        return 1
    _send(proto, {"ready": True})
    for line in sys.stdin:
        try:
            params = json.loads(line)["parameters"]
            started = time.perf_counter()
            result = func(*params)
            user_ms = (time.perf_counter() - started) * 1000
            _send(proto, {"ok": True, "result": result, "userMs": user_ms})
        except BaseException as exc:
            traceback.print_exc()
            _send(proto, {"ok": False, "error": _describe(exc)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
