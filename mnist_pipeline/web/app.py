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

The overview also shows what the incoming runs did with new labelled data (`load_incoming`): how
many entries were accepted, set aside and quarantined, by reason, and the newest of those set
aside or quarantined with their reasons, from one summary object in the artifacts store
(`MNIST_ARTIFACTS_URI`); an artifacts store that cannot be read says so there, not with a 503.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from mnist_pipeline.config import settings
from mnist_pipeline.data.incoming_summary import read_summary
from mnist_pipeline.errors import MnistPipelineError, RegistryError
from mnist_pipeline.evaluation.model_card import MODEL_CARD_FILE
from mnist_pipeline.evaluation.reports import REPORT_DIR
from mnist_pipeline.registry.aliases import CHAMPION
from mnist_pipeline.registry.client import DEFAULT_PAGE_SIZE, Registry
from mnist_pipeline.registry.gate import Verdict
from mnist_pipeline.registry.history import since_name
from mnist_pipeline.registry.promotion import APPROVAL_PENDING
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent, VersionEntry
from mnist_pipeline.registry.state import RegistryState, parse_event_name
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.storage import open_storage
from mnist_pipeline.web.charts import accuracy_chart
from mnist_pipeline.web.comparison import compare_with_champion
from mnist_pipeline.web.page_cache import PageCache, etag_of
from mnist_pipeline.web.runs import RunDecision, RunDecisionMissingError, load_run_decision, with_answer
from mnist_pipeline.web.templates import render

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

log = logging.getLogger(__name__)
URL_PREFIX = "/model-registry"
_FIGURE_TITLES = {
    "confusion_matrix.png": "Confusion matrix",
    "learning_curves.png": "Learning curves",
    "misclassified.png": "Most confidently misclassified test digits",
    "per_class.png": "Per-class precision and recall",
    "gradcam.png": "Grad-CAM: where the network looked",
}
_MEDIA_TYPES = {".png": "image/png", ".md": "text/markdown; charset=utf-8"}
_Result = TypeVar("_Result")
_NO_VERDICT = Verdict(False, "no promoting decision recorded")
# History shards one overview reads at most: with monthly shards, a page of 50 events needs one or
# two; a sparse history shows fewer and links to the rest.
_OVERVIEW_SHARDS = 6
_INCOMING_SHOWN = 50  # newest set-aside and quarantined entries listed on the overview
_EVENT_NAME = re.compile(r"\d{8}T\d{12}Z-\d{12}-\d+")  # a page's `older` cursor, after its newest page
_MONTH = re.compile(r"\d{6}")  # the cursor of a page cut short at a month's shard
_PAGES = PageCache()
_OPENED: dict[tuple[str, str], Registry] = {}
_OPENING = threading.Lock()
_REGISTRIES_KEPT = 16


class HistoryCursorError(MnistPipelineError):
    """A `before` that names no page of history: the overview answers 400 with this message."""


class RegistryUnavailableError(MnistPipelineError):
    """The registry could not be read in time: the page answers 503 with this message."""


class VersionNotFoundError(RegistryError):
    """No completely published version (or file) by that name: the page answers 404."""


def open_registry() -> Registry:
    """Read at every request, so the page follows `MNIST_REGISTRY_URI` without a restart; the
    client of each registry (and storage emulator) is opened once, as opening a GCS client costs
    more than the one probe a cached page makes."""
    key = (settings().registry_uri, os.environ.get("STORAGE_EMULATOR_HOST", ""))
    with _OPENING:
        if key not in _OPENED:
            if len(_OPENED) >= _REGISTRIES_KEPT:
                _OPENED.clear()
            _OPENED[key] = Registry(open_storage(key[0]))
        return _OPENED[key]


def load_run(dag_id: str, run_id: str) -> RunDecision:
    """The promotion decision `run_id` recorded in the artifacts store (`MNIST_ARTIFACTS_URI`), with
    the registry's answer when it waited for a person."""
    decision = load_run_decision(open_storage(settings().artifacts_uri), dag_id, run_id)
    return with_answer(decision, open_registry())


def history_cursor(before: str | None) -> str | None:
    """The history page `before` asks for: none (empty: the newest page), a page's `older` cursor,
    or an ISO 8601 time (the events before it); anything else is a `HistoryCursorError`."""
    if not before:
        return None
    if _EVENT_NAME.fullmatch(before) or _MONTH.fullmatch(before):
        return before
    try:
        return since_name(before)
    except RegistryError:
        raise HistoryCursorError(
            f"before={before!r} names no page of history: expected an 'older events' link's cursor "
            "(such as 20260131T120000123456Z-000000000042-0, or a month as 202601) or an ISO 8601 "
            "time such as 2026-01-31T12:00:00Z"
        ) from None


def cached_overview(
    link: Callable[[VersionRef], str], home: str, before: str | None, if_none_match: str = ""
) -> tuple[str, str | None]:
    """The overview's ETag and page (None when `if_none_match` holds that ETag already): rendered
    once per head of the registry's log, history cursor, mount path and incoming summary."""
    registry = open_registry()
    state = _PAGES.state(registry)
    incoming = load_incoming()
    key = (registry.storage.root_uri, state.number, home, before, incoming.get("updated"), incoming["error"])
    etag = etag_of(key)
    if etag in (tag.strip() for tag in if_none_match.split(",")):
        return etag, None

    def draw() -> str:
        return render("overview", **load_overview(registry, link, before, state) | {"incoming": incoming})

    return etag, _PAGES.page(key, draw)


def load_incoming() -> dict[str, Any]:
    """What the overview shows of the incoming runs: counts by outcome and by reason, and the newest
    entries set aside or quarantined. One read of the artifacts store's summary."""
    try:
        summary = read_summary(open_storage(settings().artifacts_uri))
    except Exception as exc:  # the page is the registry's: an unreadable summary must not take it down
        log.exception("model registry page: the incoming summary could not be read")
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {
        "error": None,
        "counts": summary["counts"],
        "categories": sorted(summary["categories"].items(), key=lambda item: (-item[1], item[0])),
        "recent": summary["recent"][:_INCOMING_SHOWN],
        "updated": summary["updated"],
    }


def run_context(decision: RunDecision, link: Callable[[VersionRef], str]) -> dict[str, Any]:
    """What the run page shows of a decision that published nothing."""
    event, previous = decision.event, decision.event.previous_champion
    return {
        "run_id": event.run_id,
        "outcome": decision.outcome,
        "event": event.to_dict(),
        "reason": event.reason,
        "why_not_promoted": decision.why_not_promoted,
        "slices": [piece.to_dict() for piece in event.verdict.slices],
        # Stored as a fraction of the digit's images; shown in percentage points, as the gate words it.
        "recall_drops": [(digit, drop * 100) for digit, drop in sorted(event.verdict.recall_drops.items())],
        "candidates": [_candidate_row(row) for row in decision.candidates],
        "champion_link": link(VersionRef(previous.model, previous.version)) if previous else None,
    }


def _candidate_row(row: dict[str, Any]) -> dict[str, Any]:
    fields = ("model", "accuracy", "loss", "new_data_accuracy", "epochs_run")
    return {name: row.get(name) for name in fields}


def load_overview(
    registry: Registry,
    link: Callable[[VersionRef], str],
    before: str | None = None,
    state: RegistryState | None = None,
) -> dict[str, Any]:
    """Champion, aliases, versions (newest first) and a page of history (newest first, older than
    `before`), as the overview shows them, as of `state` (by default the newest)."""
    state = state or registry.state()  # one state for every part of the page: they agree
    aliases = registry.aliases(state)
    champion = aliases.get(CHAMPION)
    champion_ref = _ref_of(champion)
    entries = registry.version_entries(state)
    page = registry.history_page(DEFAULT_PAGE_SIZE, before=before, max_shards=_OVERVIEW_SHARDS, state=state)
    badges = _alias_badges(aliases)
    rows = [_version_row(entry, champion_ref, badges, link) for entry in entries]
    answers = _answers(registry, state, page.events)
    rows.sort(key=lambda row: row["version"], reverse=True)  # version names start with their time
    shown = champion.to_dict() | {"link": link(champion_ref)} if champion and champion_ref else None
    return {
        "registry_uri": registry.storage.root_uri,
        "champion": shown,
        "aliases": [_alias_row(alias, pointer, link) for alias, pointer in aliases.items()],
        "versions": rows,
        "history": [_history_row(event, answers) for event in page.events],
        # Drawn from the page just read, with the answers to its pending decisions.
        "accuracy_chart": accuracy_chart(page.events, {key: str(e.approval) for key, e in answers.items()}),
        "history_before": before,
        "older_history": page.older,
    }


def load_version(
    registry: Registry,
    ref: VersionRef,
    file_link: Callable[[str], str],
    version_link: Callable[[VersionRef], str] | None = None,
) -> dict[str, Any]:
    """One version: metadata, metrics, verdict, its report figures, its model card as HTML, and how
    it compares with the champion (with the one it replaced, when it is the champion).
    `version_link`: another version's page; by default relative to this version's page."""
    state = registry.state()  # once for the whole page
    metadata = _published_metadata(registry, ref, state)
    files = metadata.get("files_sha256", {})
    figures = [
        {"title": title, "link": file_link(f"{REPORT_DIR}/{name}")}
        for name, title in _FIGURE_TITLES.items()
        if f"{REPORT_DIR}/{name}" in files
    ]
    card = registry.verified_file(ref, MODEL_CARD_FILE).decode() if MODEL_CARD_FILE in files else None
    promoting = _promoting_event(registry, ref, state)
    entry = state.versions.get((ref.model, ref.version))
    verdict = promoting.verdict if promoting else Verdict(False, _unpromoted(entry)) if entry else _NO_VERDICT
    champion = registry.champion(state)
    return {
        "model": ref.model,
        "version": ref.version,
        "metadata": metadata,
        "metrics": metadata.get("metrics", {}),
        "verdict": verdict.reason,
        "slices": [piece.to_dict() for piece in verdict.slices],
        "data_flags": metadata.get("data_flags", []),
        "is_champion": _ref_of(champion) == ref,
        "approval": entry.approval if entry else None,
        "comparison": compare_with_champion(
            registry, (ref, metadata), champion, promoting, version_link or _sibling_link
        ),
        "figures": figures,
        "model_card_html": _markdown_html(card) if card else "<p>No model card was published.</p>",
    }


def read_version_file(registry: Registry, ref: VersionRef, name: str) -> tuple[bytes, str]:
    """A report figure or the model card, sha256-verified; anything else of the version is not served."""
    served = name == MODEL_CARD_FILE or name.startswith(f"{REPORT_DIR}/")
    media_type = _MEDIA_TYPES.get(PurePosixPath(name).suffix)
    if not served or media_type is None or name not in _published_metadata(registry, ref)["files_sha256"]:
        raise VersionNotFoundError(f"version {ref} has no report file {name!r}")
    return registry.verified_file(ref, name), media_type


def _published_metadata(
    registry: Registry, ref: VersionRef, state: RegistryState | None = None
) -> dict[str, Any]:
    if not registry.is_published(ref, state):
        raise VersionNotFoundError(f"no published version {ref} in registry {registry.storage.root_uri}")
    return registry.metadata(ref)


def _version_row(
    entry: VersionEntry,
    champion: VersionRef | None,
    badges: dict[VersionRef, list[str]],
    link: Callable[[VersionRef], str],
) -> dict[str, Any]:
    ref = VersionRef(entry.model, entry.version)
    return {
        "model": ref.model,
        "version": ref.version,
        "accuracy": entry.accuracy,
        "loss": entry.loss,
        "trained_at": entry.trained_at,
        # The reason of the decision that promoted it: the gate's, before any manual one.
        "verdict": entry.promoted_by.reason if entry.promoted_by else _unpromoted(entry),
        "approval": entry.approval,
        "is_champion": ref == champion,
        "aliases": badges.get(ref, []),
        "link": link(ref),
    }


def _unpromoted(entry: VersionEntry) -> str:
    """Why a published version was never promoted, as far as the log says."""
    return {
        APPROVAL_PENDING: "waiting for approval: not promoted yet",
        "rejected": "rejected by a person: not promoted",
        "timed-out": "approval timed out: not promoted",
    }.get(entry.approval or "", _NO_VERDICT.reason)


def _alias_badges(aliases: dict[str, ChampionPointer]) -> dict[VersionRef, list[str]]:
    """The aliases other than the champion (whose badge and row style are its own) by the version
    they point at."""
    badges: dict[VersionRef, list[str]] = {}
    for alias, pointer in aliases.items():
        if alias != CHAMPION:
            badges.setdefault(VersionRef(pointer.model, pointer.version), []).append(alias)
    return badges


def _alias_row(alias: str, pointer: ChampionPointer, link: Callable[[VersionRef], str]) -> dict[str, Any]:
    ref = VersionRef(pointer.model, pointer.version)
    return {
        "alias": alias,
        "model": ref.model,
        "version": ref.version,
        "link": link(ref),
        "set_at": pointer.moved_at,
        "by": pointer.mover,
        "reason": pointer.verdict,
    }


def _promoting_event(registry: Registry, ref: VersionRef, state: RegistryState) -> HistoryEvent | None:
    """The decision that promoted the version (the gate's, before any manual one), None when none
    is recorded: the versions index names its event, which is read for the slices' figures."""
    entry = state.versions.get((ref.model, ref.version))
    if entry is None or entry.promoted_by is None:
        return None
    return registry.event(entry.promoted_by.key)


def _sibling_link(ref: VersionRef) -> str:
    # Relative to a version's own page, /versions/<model>/<version>: callers without a request.
    return f"../{ref.model}/{ref.version}"


def _history_row(event: HistoryEvent, answers: dict[tuple[str, str], HistoryEvent]) -> dict[str, Any]:
    status, css = _event_status(event, answers.get((event.run_id or "", event.model)))
    accuracy = (event.metrics or {}).get("accuracy")
    shown = {"accuracy": accuracy, "reason": event.reason, "status": status, "status_class": css}
    return event.to_dict() | shown


def _event_status(event: HistoryEvent, answer: HistoryEvent | None) -> tuple[str, str]:
    """What the event came to, as the history's "promoted" column says it, and its style: a
    decision that asked a person is neither promoted nor kept until the answer says so."""
    if event.kind == "approval":
        return _answer_status(event)
    if event.approval == APPROVAL_PENDING and not event.dry_run:
        if answer is None:
            return "waiting for approval", "pending"
        said, css = _answer_status(answer)
        return f"asked for approval: {said}", css
    return ("yes", "yes") if event.promoted else ("no", "no")


def _answer_status(answer: HistoryEvent) -> tuple[str, str]:
    who = answer.approver or "nobody"
    if answer.approval == "approved":
        return f"yes: approved by {who}", "yes"
    if answer.approval == "timed-out":
        return "no: approval timed out", "no"
    return f"no: rejected by {who}", "no"


def _answers(
    registry: Registry, state: RegistryState, events: list[HistoryEvent]
) -> dict[tuple[str, str], HistoryEvent]:
    """The answer to each pending decision among `events`, by run and model: from `events` or the
    state's newest events when they hold it, else from its commit (one read each)."""
    recent = {parse_event_name(i.name)[0]: i.event for i in state.recent}
    found = {(e.run_id or "", e.model): e for e in events if e.kind == "approval"}
    for event in events:
        key = (event.run_id or "", event.model)
        if event.approval != APPROVAL_PENDING or not event.run_id or key in found:
            continue
        number = state.answer_of(event.run_id, event.model)
        answer = recent.get(number) if number else None
        if number and answer is None:
            commit = registry.read_commit(number)
            answer = commit.event if commit else None
        if answer is not None:
            found[key] = answer
    return found


def _ref_of(pointer: ChampionPointer | None) -> VersionRef | None:
    return VersionRef(pointer.model, pointer.version) if pointer else None


def _markdown_html(text: str) -> str:
    # Raw HTML in the card is escaped, never passed through: the card quotes run parameters.
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


async def _off_the_loop(work: Callable[[], _Result]) -> _Result:
    """Run blocking storage calls in a thread, abandoned (not awaited) once the page timeout passes."""
    import anyio

    seconds = settings().registry_page_timeout
    try:
        with anyio.fail_after(seconds):
            return await anyio.to_thread.run_sync(_explained(work), abandon_on_cancel=True)
    except TimeoutError:
        raise RegistryUnavailableError(f"the model registry did not answer within {seconds:g} s") from None


def _explained(work: Callable[[], _Result]) -> Callable[[], _Result]:
    """`work`, with a failure nobody anticipated (a client library's own error) turned into a
    `RegistryUnavailableError` that names it; its traceback goes to the log, not to the page."""

    def run() -> _Result:
        try:
            return work()
        except MnistPipelineError:
            raise
        except Exception as exc:
            log.exception("model registry page: reading the registry failed")
            raise RegistryUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    return run


def airflow_access() -> Any:
    """Airflow's own check: an authenticated user allowed to see the Airflow UI."""
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view

    return requires_access_view(AccessView.WEBSITE)


def create_app(access: Callable[..., Any] | None = None) -> FastAPI:
    """The app; `access` is the authorization dependency (Airflow's, unless another is given)."""
    app = FastAPI(
        title="Model Registry",
        dependencies=[Depends(access or airflow_access())],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(MnistPipelineError, _registry_error)
    _add_routes(app)
    _add_headers(app)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse, name="overview")
    async def overview(request: Request, before: str | None = None) -> Response:
        """`before`: the history page's `older` cursor, for events older than those shown."""
        cursor, home = history_cursor(before), request.url_for("overview").path
        asked = request.headers.get("if-none-match", "")
        etag, html = await _off_the_loop(lambda: cached_overview(_links(request), home, cursor, asked))
        # Always revalidated: the page is current only until the next commit.
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if html is None:
            return Response(status_code=304, headers=headers)
        return HTMLResponse(html, headers=headers)

    @app.get("/versions/{model}/{version}", response_class=HTMLResponse, name="version_page")
    async def version_page(request: Request, model: str, version: str) -> HTMLResponse:
        ref = _parse_ref(model, version)

        def file_link(name: str) -> str:
            return request.url_for("version_file", model=model, version=version, name=name).path

        context = await _off_the_loop(lambda: load_version(open_registry(), ref, file_link, _links(request)))
        context["overview_link"] = request.url_for("overview").path
        return HTMLResponse(render("version", **context))

    @app.get("/runs/{dag_id}/{run_id:path}", response_class=HTMLResponse, name="run_page")
    async def run_page(request: Request, dag_id: str, run_id: str) -> Response:
        """A run's decision; a run that published a version opens that version's page."""
        decision = await _off_the_loop(lambda: load_run(dag_id, run_id))
        published = decision.published_version
        if published:
            target = request.url_for("version_page", model=published[0], version=published[1]).path
            return RedirectResponse(target, status_code=303)

        def link(ref: VersionRef) -> str:
            return request.url_for("version_page", model=ref.model, version=ref.version).path

        context = run_context(decision, link) | {"dag_id": dag_id, "approval": decision.approval}
        context["overview_link"] = request.url_for("overview").path
        return HTMLResponse(render("run", **context))

    @app.get("/versions/{model}/{version}/files/{name:path}", name="version_file")
    async def version_file(model: str, version: str, name: str) -> Response:
        ref = _parse_ref(model, version)
        data, media_type = await _off_the_loop(lambda: read_version_file(open_registry(), ref, name))
        # A published version never changes: its files may be cached for good.
        return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=31536000"})


def _add_headers(app: FastAPI) -> None:
    @app.middleware("http")
    async def no_sniffing(request: Request, call_next: Callable[[Request], Any]) -> Response:
        # A model card is Markdown from run parameters: never let a browser guess it is HTML.
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def _links(request: Request) -> Callable[[VersionRef], str]:
    """Links to versions' pages, as the app is mounted for `request`."""

    def link(ref: VersionRef) -> str:
        return request.url_for("version_page", model=ref.model, version=ref.version).path

    return link


def _parse_ref(model: str, version: str) -> VersionRef:
    try:
        return VersionRef(model, version)
    except RegistryError as exc:
        raise VersionNotFoundError(str(exc)) from None


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    if not _wants_html(request):
        return JSONResponse({"detail": message}, status_code=status)
    from html import escape

    body = f"<!doctype html><title>{escape(title)}</title><h1>{escape(title)}</h1><p>{escape(message)}</p>"
    return HTMLResponse(body, status_code=status)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 401 and _wants_html(request):  # no session: Airflow's login, then back here
        from airflow.api_fastapi.app import get_auth_manager

        # The path, never the Host header's origin: a forged Host must not become where login leads.
        back = "/" + request.url.path.lstrip("/") + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(get_auth_manager().get_url_login(next_url=back), status_code=303)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _registry_error(request: Request, exc: Exception) -> Response:
    message = _without_paths(str(exc))
    if isinstance(exc, VersionNotFoundError | RunDecisionMissingError):
        return _error_page(request, 404, "Not found", message)
    if isinstance(exc, HistoryCursorError):
        return _error_page(request, 400, "Bad request", message)
    log.warning("model registry page: %s", exc)
    return _error_page(request, 503, "Model registry unavailable", f"model registry unavailable: {message}")


def _without_paths(message: str) -> str:
    """`message` with the server's folders of local stores named by their role: where the server
    keeps its files is none of the reader's business (the log keeps the full message)."""
    config = settings()
    for role, uri in (("<registry>", config.registry_uri), ("<artifacts>", config.artifacts_uri)):
        if "://" not in uri:
            folder = str(PurePosixPath(uri))
            message = message.replace(folder, role)
    return re.sub(r"(?<![\w.:/])/(?:[\w.@+~-]+/)+[\w.@+~-]*", "<server path>", message)
