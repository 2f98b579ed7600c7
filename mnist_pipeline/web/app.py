"""The Model Registry page: a read-only FastAPI app that the Airflow plugin mounts in the api-server.

It shows the champion, a chart of the gate decisions' test accuracy over time (`web.charts`), every
alias and the version it points at (`registry.aliases`), every published version with its metrics,
gate verdict and alias badges, the promotion history a page at a time (newest first), and each
version's report figures, model card and comparison with the champion, read through
`Registry` at `MNIST_REGISTRY_URI` (the registry is the truth). The overview is rendered once per
head of the registry's log (`web.page_cache`): a request probes for a newer commit, and a browser
that holds the page's ETag gets 304 Not Modified. Versions, aliases and the newest history come
from the registry's state (`registry.state`, kept current from its commit log), older history from
one shard a month, so a page costs a handful of storage calls however many versions and events the
registry holds.

Every route sits behind Airflow's own authentication: the dependency Airflow's REST API uses
(`requires_access_view`), which reads the JWT from the `Authorization` header or the `_token`
cookie the Airflow UI sets at login. A browser without a session is sent to Airflow's login page.

A registry that cannot be read (a bucket that does not exist, an unreachable emulator, a
storage call that outlives `MNIST_REGISTRY_PAGE_TIMEOUT` seconds) answers 503 with the reason,
never a stack trace; the traceback goes to the api-server's log.

The app reads its settings once, when it is created (`create_app`, as the plugin loads), and keeps
them on `app.state.settings`: a bad value fails the app's creation, naming the variable, and no
request reads the environment again.

The overview also shows what the incoming runs did with new labelled data (`load_incoming`): how
many entries were accepted, set aside and quarantined, by reason, and the newest of those set
aside or quarantined with their reasons, from one summary object in the artifacts store
(`MNIST_ARTIFACTS_URI`); an artifacts store that cannot be read says so there, not with a 503.

The app is put together here (`create_app`); its parts live beside it: `routes` (the pages),
`overview`, `version_page` and `run_page` (what each page shows), `verdicts` (how decisions are
worded), `reading` (one client per registry, storage calls off the event loop under the timeout)
and `error_pages` (404, 400 and 503 answers, Airflow's login for a browser without a session).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.errors import MnistPipelineError
from mnist_pipeline.web.addresses import URL_PREFIX
from mnist_pipeline.web.error_pages import http_error, registry_error
from mnist_pipeline.web.overview import (
    HistoryCursorError,
    cached_overview,
    history_cursor,
    load_incoming,
    load_overview,
)
from mnist_pipeline.web.reading import RegistryUnavailableError, open_registry
from mnist_pipeline.web.routes import add_routes
from mnist_pipeline.web.run_page import load_run, run_context
from mnist_pipeline.web.version_page import VersionNotFoundError, load_version, read_version_file

# The page's loaders and errors are re-exported: callers import them from the app, as before.
__all__ = [
    "URL_PREFIX",
    "HistoryCursorError",
    "RegistryUnavailableError",
    "VersionNotFoundError",
    "airflow_access",
    "cached_overview",
    "create_app",
    "history_cursor",
    "load_incoming",
    "load_overview",
    "load_run",
    "load_version",
    "open_registry",
    "read_version_file",
    "run_context",
]


def airflow_access() -> Any:
    """Airflow's own check: an authenticated user allowed to see the Airflow UI."""
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view

    return requires_access_view(AccessView.WEBSITE)


def create_app(access: Callable[..., Any] | None = None, settings: PipelineSettings | None = None) -> FastAPI:
    """The app; `access` is the authorization dependency (Airflow's, unless another is given).
    `settings` are what every request reads; by default the environment's, read now: a bad value
    fails here, once, naming the variable."""
    settings = settings or PipelineSettings.from_env()
    app = FastAPI(
        title="Model Registry",
        dependencies=[Depends(access or airflow_access())],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    # Starlette types a handler as taking any exception; this one is registered for HTTPException only.
    app.add_exception_handler(HTTPException, http_error)  # pyright: ignore[reportArgumentType]
    app.add_exception_handler(MnistPipelineError, registry_error)
    add_routes(app)
    _add_headers(app)
    return app


def _add_headers(app: FastAPI) -> None:
    @app.middleware("http")
    async def no_sniffing(request: Request, call_next: Callable[[Request], Any]) -> Response:
        # A model card is Markdown from run parameters: never let a browser guess it is HTML.
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response
