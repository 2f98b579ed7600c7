"""The registry's history: one object per gate decision, promotion or rollback, never rewritten.

Each event is indexed right after its object is written (`index`): pages of the newest events and
a run's promotion are then read in a few storage calls whatever the history's length.
`list_events` still reads every object.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from mnist_pipeline.errors import RegistryError
from mnist_pipeline.registry.index import (
    IndexedEvent,
    history_indexed,
    index_event,
    read_months,
    read_promotion,
    read_shard,
    rebuilt_history,
)
from mnist_pipeline.registry.layout import CHAMPION_KEY, HISTORY_PREFIX
from mnist_pipeline.registry.records import HistoryEvent
from mnist_pipeline.storage import Storage

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "HISTORY_PREFIX",
    "HistoryPage",
    "event_key",
    "find_promotion",
    "history_page",
    "list_events",
    "read_event",
    "record_event",
    "since_name",
    "stamp",
    "write_event",
]

DEFAULT_PAGE_SIZE = 50
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True)
class HistoryPage:
    """Events newest first, and the `before` that reads the page after it (None: nothing older)."""

    events: list[HistoryEvent]
    older: str | None = None


def stamp(event: HistoryEvent) -> HistoryEvent:
    """`event` with its UTC time, to the microsecond (events of one second stay ordered)."""
    return replace(event, time=datetime.now(UTC).strftime(_TIME_FORMAT))


def event_key(event: HistoryEvent, prefix: str = HISTORY_PREFIX) -> str:
    """A new key under `prefix` for a stamped event: its time first, so that keys sort as events
    happened."""
    return f"{prefix}{_compact(event.time)}-{uuid.uuid4().hex[:8]}.json"


def record_event(storage: Storage, event: HistoryEvent) -> HistoryEvent:
    """Append `event` (stamped with its time) as a new object, then index it; an existing object is
    never replaced."""
    key, stamped = write_event(storage, event, HISTORY_PREFIX)
    index_event(storage, key, stamped)
    return stamped


def write_event(storage: Storage, event: HistoryEvent, prefix: str) -> tuple[str, HistoryEvent]:
    """Write `event`, stamped with its time, as a new object under `prefix` (no index); returns its
    key and the stamped event. An existing object is never replaced."""
    stamped = stamp(event)
    key = event_key(stamped, prefix)
    payload = json.dumps(stamped.to_dict(), indent=2, sort_keys=True).encode()
    if not storage.write_if_generation(key, payload, "0"):
        raise RegistryError(f"history event {storage.uri(key)} already exists; refusing to overwrite it")
    return key, stamped


def list_events(storage: Storage) -> list[HistoryEvent]:
    """Every event, oldest first (keys start with their UTC time): one read per event."""
    return [
        HistoryEvent.from_dict(storage.read_json(key), storage.uri(key))
        for key in storage.list_keys(HISTORY_PREFIX)
        if key.endswith(".json")
    ]


def read_event(storage: Storage, key: str) -> HistoryEvent:
    return HistoryEvent.from_dict(storage.read_json(key), storage.uri(key))


def find_promotion(storage: Storage, run_id: str, model: str) -> HistoryEvent | None:
    """The event in which `run_id` promoted `model`, if it did: a retried task must not promote twice.

    One read when it did; three when it did not (its index key, the history index's mark, the
    champion). Without a history index, or when the champion names this run although the index
    knows no promotion by it (a crash between the event and its index), the objects decide.
    """
    found = read_promotion(storage, run_id, model)
    if found is not None:
        return found.event
    why = None  # no history index: a new registry, or one written before the index
    if history_indexed(storage):
        if not _champion_is_by(storage, run_id, model):
            return None
        why = f"lacks the promotion of {model} by run {run_id}, which the champion names"
    events = rebuilt_history(storage, why)
    latest = next((i for i in reversed(events) if i.event.is_promotion_of(run_id, model)), None)
    return latest.event if latest else None


def _champion_is_by(storage: Storage, run_id: str, model: str) -> bool:
    data = storage.read_versioned(CHAMPION_KEY)[0]
    try:
        pointer = json.loads(data) if data is not None else {}
    except ValueError:
        return False  # a malformed pointer is reported where it is moved
    return isinstance(pointer, dict) and (pointer.get("run_id"), pointer.get("model")) == (run_id, model)


def history_page(
    storage: Storage,
    limit: int = DEFAULT_PAGE_SIZE,
    since: str | None = None,
    before: str | None = None,
    max_shards: int | None = None,
) -> HistoryPage:
    """The newest `limit` events older than `before` (a page's `older`) and not older than `since`
    (an ISO 8601 time), newest first, from the history index: the months list, then one shard per
    month until the page is full. `max_shards` caps the shards read; a page cut short says where
    the next one starts."""
    if limit < 1 or (max_shards is not None and max_shards < 1):
        raise RegistryError(
            f"a page of history reads at least 1 event and 1 shard, not {limit} and {max_shards}"
        )
    floor = since_name(since) if since else ""
    unread = [m for m in reversed(read_months(storage)) if m >= floor[:6] and (before is None or m < before)]
    found: list[IndexedEvent] = []
    shards = 0
    while unread and len(found) < limit and (max_shards is None or shards < max_shards):
        month, shards = unread.pop(0), shards + 1
        newest_first = [i for i in reversed(read_shard(storage, month)) if before is None or i.name < before]
        kept = [indexed for indexed in newest_first if indexed.name >= floor]
        if len(kept) < len(newest_first):
            unread.clear()  # every remaining event is older than `since`
        found.extend(kept)
    if len(found) > limit:
        return HistoryPage([i.event for i in found[:limit]], found[limit - 1].name)
    older = (found[-1].name if found else month) if unread else None
    return HistoryPage([i.event for i in found], older)


def since_name(since: str) -> str:
    """An ISO 8601 time as the start of an event name; a time without a zone is UTC."""
    try:
        moment = datetime.fromisoformat(since)
    except ValueError:
        raise RegistryError(f"{since!r} is not an ISO 8601 time, e.g. 2026-01-31T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _compact(moment.astimezone(UTC).strftime(_TIME_FORMAT))


def _compact(time: str) -> str:
    return time.replace("-", "").replace(":", "").replace(".", "")
