"""How the app answers a request that fails: Airflow's login for a browser without a session, a
short page (or JSON) for anything else, never a stack trace or the server's own folders."""

from __future__ import annotations

import logging
import re
from pathlib import PurePosixPath

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.web.overview import HistoryCursorError
from mnist_pipeline.web.reading import settings_of
from mnist_pipeline.web.runs import RunDecisionMissingError
from mnist_pipeline.web.version_page import VersionNotFoundError

__all__ = ["http_error", "registry_error"]

log = logging.getLogger(__name__)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    if not _wants_html(request):
        return JSONResponse({"detail": message}, status_code=status)
    from html import escape

    body = f"<!doctype html><title>{escape(title)}</title><h1>{escape(title)}</h1><p>{escape(message)}</p>"
    return HTMLResponse(body, status_code=status)


async def http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 401 and _wants_html(request):  # no session: Airflow's login, then back here
        from airflow.api_fastapi.app import get_auth_manager

        # The path, never the Host header's origin: a forged Host must not become where login leads.
        back = "/" + request.url.path.lstrip("/") + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(get_auth_manager().get_url_login(next_url=back), status_code=303)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def registry_error(request: Request, exc: Exception) -> Response:
    message = _without_paths(str(exc), settings_of(request))
    if isinstance(exc, VersionNotFoundError | RunDecisionMissingError):
        return _error_page(request, 404, "Not found", message)
    if isinstance(exc, HistoryCursorError):
        return _error_page(request, 400, "Bad request", message)
    log.warning("model registry page: %s", exc)
    return _error_page(request, 503, "Model registry unavailable", f"model registry unavailable: {message}")


def _without_paths(message: str, settings: PipelineSettings) -> str:
    """`message` with the server's folders of local stores named by their role: where the server
    keeps its files is none of the reader's business (the log keeps the full message)."""
    for role, uri in (("<registry>", settings.registry_uri), ("<artifacts>", settings.artifacts_uri)):
        if "://" not in uri:
            folder = str(PurePosixPath(uri))
            message = message.replace(folder, role)
    return re.sub(r"(?<![\w.:/])/(?:[\w.@+~-]+/)+[\w.@+~-]*", "<server path>", message)
