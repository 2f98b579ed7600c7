"""The overview: champion, aliases, every published version, a page of history and the incoming runs.

Rendered once per head of the registry's log (`web.page_cache`). Versions, aliases and the newest
history come from the registry's state, older history from one shard a month, so a page costs a
handful of storage calls however many versions and events the registry holds. What the incoming
runs did comes from one summary object in the artifacts store; an artifacts store that cannot be
read says so on the page, not with a 503.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.data.incoming_summary import read_summary
from mnist_pipeline.errors import MnistPipelineError, RegistryError
from mnist_pipeline.registry.aliases import CHAMPION
from mnist_pipeline.registry.client import DEFAULT_PAGE_SIZE, Registry
from mnist_pipeline.registry.history import since_name
from mnist_pipeline.registry.records import ChampionPointer, VersionEntry
from mnist_pipeline.registry.state import RegistryState
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.storage import open_storage
from mnist_pipeline.web.charts import accuracy_chart
from mnist_pipeline.web.page_cache import PageCache, etag_of
from mnist_pipeline.web.reading import open_registry
from mnist_pipeline.web.templates import render
from mnist_pipeline.web.verdicts import history_row, pending_answers, ref_of, unpromoted

__all__ = ["HistoryCursorError", "cached_overview", "history_cursor", "load_incoming", "load_overview"]

log = logging.getLogger(__name__)
# History shards one overview reads at most: with monthly shards, a page of 50 events needs one or
# two; a sparse history shows fewer and links to the rest.
_OVERVIEW_SHARDS = 6
_INCOMING_SHOWN = 50  # newest set-aside and quarantined entries listed on the overview
_EVENT_NAME = re.compile(r"\d{8}T\d{12}Z-\d{12}-\d+")  # a page's `older` cursor, after its newest page
_MONTH = re.compile(r"\d{6}")  # the cursor of a page cut short at a month's shard
_PAGES = PageCache()


class HistoryCursorError(MnistPipelineError):
    """A `before` that names no page of history: the overview answers 400 with this message."""


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
    settings: PipelineSettings,
    link: Callable[[VersionRef], str],
    home: str,
    before: str | None,
    if_none_match: str = "",
) -> tuple[str, str | None]:
    """The overview's ETag and page (None when `if_none_match` holds that ETag already): rendered
    once per head of the registry's log, history cursor, mount path and incoming summary."""
    registry = open_registry(settings)
    state = _PAGES.state(registry)
    incoming = load_incoming(settings)
    key = (registry.storage.root_uri, state.number, home, before, incoming.get("updated"), incoming["error"])
    etag = etag_of(key)
    if etag in (tag.strip() for tag in if_none_match.split(",")):
        return etag, None

    def draw() -> str:
        return render("overview", **load_overview(registry, link, before, state) | {"incoming": incoming})

    return etag, _PAGES.page(key, draw)


def load_incoming(settings: PipelineSettings) -> dict[str, Any]:
    """What the overview shows of the incoming runs: counts by outcome and by reason, and the newest
    entries set aside or quarantined. One read of the artifacts store's summary."""
    try:
        summary = read_summary(open_storage(settings.artifacts_uri, settings))
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
    champion_ref = ref_of(champion)
    entries = registry.version_entries(state)
    page = registry.history_page(DEFAULT_PAGE_SIZE, before=before, max_shards=_OVERVIEW_SHARDS, state=state)
    badges = _alias_badges(aliases)
    rows = [_version_row(entry, champion_ref, badges, link) for entry in entries]
    answers = pending_answers(registry, state, page.events)
    rows.sort(key=lambda row: row["version"], reverse=True)  # version names start with their time
    shown = champion.to_dict() | {"link": link(champion_ref)} if champion and champion_ref else None
    return {
        "registry_uri": registry.storage.root_uri,
        "champion": shown,
        "aliases": [_alias_row(alias, pointer, link) for alias, pointer in aliases.items()],
        "versions": rows,
        "history": [history_row(event, answers) for event in page.events],
        # Drawn from the page just read, with the answers to its pending decisions.
        "accuracy_chart": accuracy_chart(page.events, {key: str(e.approval) for key, e in answers.items()}),
        "history_before": before,
        "older_history": page.older,
    }


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
        "verdict": entry.promoted_by.reason if entry.promoted_by else unpromoted(entry),
        "approval": entry.approval,
        "is_champion": ref == champion,
        "aliases": badges.get(ref, []),
        "link": link(ref),
    }


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
