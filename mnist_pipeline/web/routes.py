"""The page routes: the overview, a version's page and its files, and a run's page.

Each handler runs its storage calls off the event loop under the page timeout (`web.reading`);
the links it renders follow the path the app is mounted at for the request.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.web.overview import cached_overview, history_cursor
from mnist_pipeline.web.reading import off_the_loop, open_registry, settings_of
from mnist_pipeline.web.run_page import load_run, run_context
from mnist_pipeline.web.templates import render
from mnist_pipeline.web.version_page import load_version, parse_ref, read_version_file

__all__ = ["add_routes", "overview", "run_page", "version_file", "version_page"]


def add_routes(app: FastAPI) -> None:
    """Every page of the app, by the names its links are built from."""
    app.add_api_route("/", overview, methods=["GET"], response_class=HTMLResponse, name="overview")
    app.add_api_route(
        "/versions/{model}/{version}",
        version_page,
        methods=["GET"],
        response_class=HTMLResponse,
        name="version_page",
    )
    app.add_api_route(
        "/runs/{dag_id}/{run_id:path}",
        run_page,
        methods=["GET"],
        response_class=HTMLResponse,
        name="run_page",
    )
    app.add_api_route(
        "/versions/{model}/{version}/files/{name:path}", version_file, methods=["GET"], name="version_file"
    )


async def overview(request: Request, before: str | None = None) -> Response:
    """`before`: the history page's `older` cursor, for events older than those shown."""
    cursor, home = history_cursor(before), request.url_for("overview").path
    asked = request.headers.get("if-none-match", "")
    settings = settings_of(request)
    etag, html = await off_the_loop(
        settings, lambda: cached_overview(settings, _links(request), home, cursor, asked)
    )
    # Always revalidated: the page is current only until the next commit.
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if html is None:
        return Response(status_code=304, headers=headers)
    return HTMLResponse(html, headers=headers)


async def version_page(request: Request, model: str, version: str) -> HTMLResponse:
    ref = parse_ref(model, version)

    def file_link(name: str) -> str:
        return request.url_for("version_file", model=model, version=version, name=name).path

    settings, links = settings_of(request), _links(request)
    context = await off_the_loop(
        settings, lambda: load_version(open_registry(settings), ref, file_link, links)
    )
    context["overview_link"] = request.url_for("overview").path
    return HTMLResponse(render("version", **context))


async def run_page(request: Request, dag_id: str, run_id: str) -> Response:
    """A run's decision; a run that published a version opens that version's page."""
    settings = settings_of(request)
    decision = await off_the_loop(settings, lambda: load_run(settings, dag_id, run_id))
    published = decision.published_version
    if published:
        target = request.url_for("version_page", model=published[0], version=published[1]).path
        return RedirectResponse(target, status_code=303)
    context = run_context(decision, _links(request)) | {"dag_id": dag_id, "approval": decision.approval}
    context["overview_link"] = request.url_for("overview").path
    return HTMLResponse(render("run", **context))


async def version_file(request: Request, model: str, version: str, name: str) -> Response:
    ref = parse_ref(model, version)
    settings = settings_of(request)
    data, media_type = await off_the_loop(
        settings, lambda: read_version_file(open_registry(settings), ref, name)
    )
    # A published version never changes: its files may be cached for good.
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=31536000"})


def _links(request: Request) -> Callable[[VersionRef], str]:
    """Links to versions' pages, as the app is mounted for `request`."""

    def link(ref: VersionRef) -> str:
        return request.url_for("version_page", model=ref.model, version=ref.version).path

    return link
