"""Pages of the registry's history: every gate decision, approval, promotion, rollback and alias
move, newest first, read from the month shards the log's state lists (`views`): a page costs one
shard per month it spans, however long the history.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mnist_pipeline.errors import RegistryError
from mnist_pipeline.registry.records import HistoryEvent, IndexedEvent
from mnist_pipeline.registry.state import RegistryState, compact_time

if TYPE_CHECKING:
    from mnist_pipeline.registry.client import HistoryPage, Registry

__all__ = ["list_events", "page_of_history", "since_name"]

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def page_of_history(
    registry: Registry,
    state: RegistryState,
    limit: int,
    since: str | None,
    before: str | None,
    max_shards: int | None,
) -> HistoryPage:
    """See `Registry.history_page`. `max_shards` caps the shards read; a page cut short says where
    the next one starts."""
    from mnist_pipeline.registry.client import HistoryPage

    if limit < 1 or (max_shards is not None and max_shards < 1):
        raise RegistryError(
            f"a page of history reads at least 1 event and 1 shard, not {limit} and {max_shards}"
        )
    floor = since_name(since) if since else ""
    unread = [
        m for m in sorted(state.months, reverse=True) if m >= floor[:6] and (before is None or m < before)
    ]
    found: list[IndexedEvent] = []
    shards, month = 0, ""
    while unread and len(found) < limit and (max_shards is None or shards < max_shards):
        month, shards = unread.pop(0), shards + 1
        newest_first = [
            i for i in reversed(registry.shard(state, month)) if before is None or i.name < before
        ]
        kept = [indexed for indexed in newest_first if indexed.name >= floor]
        if len(kept) < len(newest_first):
            unread.clear()  # every remaining event is older than `since`
        found.extend(kept)
    if len(found) > limit:
        page = found[:limit]
        return HistoryPage([i.event for i in page], page[-1].name, tuple(i.name for i in page))
    older = (found[-1].name if found else month) if unread else None
    return HistoryPage([i.event for i in found], older, tuple(i.name for i in found))


def list_events(registry: Registry) -> list[HistoryEvent]:
    """Every event, oldest first: one read per commit that holds one (for tools and tests; pages
    read shards)."""
    state = registry.state()
    return [indexed.event for month in sorted(state.months) for indexed in registry.shard(state, month)]


def since_name(since: str) -> str:
    """An ISO 8601 time as the start of an event name; a time without a zone is UTC."""
    try:
        moment = datetime.fromisoformat(since)
    except ValueError:
        raise RegistryError(f"{since!r} is not an ISO 8601 time, e.g. 2026-01-31T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return compact_time(moment.astimezone(UTC).strftime(_TIME_FORMAT))
