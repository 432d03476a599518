"""GET /v1/search: projects, runs and files of the projects the caller owns.

Owns nothing on disk; reads the store (head commits, small text blobs) and the runner's run
records. Blocking (reads blobs): the app runs it in an executor. Comments do not exist here, so
area=comment always answers an empty list.
Must not import anything from dominofs outside dominofs/server.
"""

from __future__ import annotations

from typing import Any

from .projects import Project
from .runner import Runner
from .store import Store, User

AREAS = ("project", "run", "file", "comment")
MAX_TEXT = 64 * 1024
MAX_RESULTS = 200


def _hit(
    project: Project, user: User, area: str, id_: str, text: str, path: str | None, link: str
) -> dict[str, Any]:
    return {
        "id": id_,
        "projectId": project.id,
        "displayText": text,
        "ownerId": user.id,
        "path": path,
        "link": link,
        "area": area,
    }


def _projects(project: Project, user: User, q: str) -> list[dict[str, Any]]:
    if q in project.full_name.lower():
        link = f"/{project.full_name}"
        return [_hit(project, user, "project", project.id, project.full_name, None, link)]
    return []


def _runs(project: Project, user: User, runner: Runner, q: str) -> list[dict[str, Any]]:
    out = []
    for run in runner.list_runs(project):
        text = " ".join([str(run.get("title") or ""), *map(str, run.get("command") or [])])
        if q in text.lower():
            display = run.get("title") or " ".join(run.get("command") or [])
            link = f"/{project.full_name}/runs/{run['id']}"
            out.append(_hit(project, user, "run", run["id"], display, None, link))
    return out


def _text_contains(store: Store, key: str, size: int, q: str) -> bool:
    if size > MAX_TEXT:
        return False
    try:
        data = store.blobs.path(key).read_bytes()
        return q in data.decode("utf-8").lower()
    except (OSError, UnicodeDecodeError):
        return False


def _files(project: Project, user: User, store: Store, q: str) -> list[dict[str, Any]]:
    if not project.head:
        return []
    files, paths = project.files(project.head)
    out = []
    for path in paths:
        entry = files[path]
        if q in path.lower() or _text_contains(store, entry.key, entry.size, q):
            link = f"/{project.full_name}/browse/{path}"
            out.append(_hit(project, user, "file", entry.key, path, path, link))
    return out


def search(store: Store, runner: Runner, user: User, query: str, area: str) -> list[dict[str, Any]]:
    """Case-insensitive substring search in one area, newest projects' results first."""
    q = query.lower()
    results: list[dict[str, Any]] = []
    for project in store.projects_of(user.name):
        if area == "project":
            results += _projects(project, user, q)
        elif area == "run":
            results += _runs(project, user, runner, q)
        elif area == "file":
            results += _files(project, user, store, q)
        if len(results) >= MAX_RESULTS:
            break
    return results[:MAX_RESULTS]
