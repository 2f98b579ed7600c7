"""Indexes of the registry, so that reading it costs a bounded number of storage calls however long
its history grows.

    mnist/index/versions.json                      every committed version's summary: the overview's rows
    mnist/index/history.json                       the months that have a history shard
    mnist/index/history/<YYYYMM>.json              that month's events as stored, oldest first
    mnist/index/promotions/<run id>/<model>.json   the event in which a run promoted a model

Each is updated by compare-and-swap right after the object it indexes is written, so that
concurrent writers lose no entry. The objects stay the truth: an index object that is missing,
unparsable or of another format is rebuilt from them with a warning, and so is one seen to be stale
where that is cheap to see (a committed version missing from the versions index). A reader that may
not write still gets the rebuilt data. `rebuild_index` rebuilds everything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import quote

from mnist_pipeline.errors import MnistPipelineError
from mnist_pipeline.records import Record
from mnist_pipeline.registry.layout import HISTORY_PREFIX, INDEX_PREFIX, METADATA_FILE, MODELS_PREFIX
from mnist_pipeline.registry.records import HistoryEvent
from mnist_pipeline.storage import Storage, compare_and_swap

__all__ = [
    "INDEX_FORMAT",
    "MONTHS_KEY",
    "VERSIONS_KEY",
    "IndexedEvent",
    "Promoter",
    "VersionEntry",
    "event_name",
    "history_indexed",
    "index_event",
    "index_version",
    "month_of",
    "promotion_key",
    "read_months",
    "read_promotion",
    "read_shard",
    "read_versions",
    "rebuild_index",
    "rebuilt_history",
    "shard_key",
]

log = logging.getLogger(__name__)
INDEX_FORMAT = 1  # objects of another format are rebuilt, never half-read
VERSIONS_KEY = f"{INDEX_PREFIX}versions.json"
MONTHS_KEY = f"{INDEX_PREFIX}history.json"
_SHARD_PREFIX = f"{INDEX_PREFIX}history/"
_PROMOTIONS_PREFIX = f"{INDEX_PREFIX}promotions/"
_WORKERS = 8  # objects read or written at once while rebuilding: a rebuild is latency-bound
_Ref = tuple[str, str]  # (model, version)


@dataclass(frozen=True)
class Promoter(Record):
    """The history event that promoted a version, as the versions index remembers it."""

    key: str
    kind: str
    reason: str

    def precedes(self, other: Promoter | None) -> bool:
        """A version's verdict is the gate's before any manual one, the earliest of each."""
        return other is None or (self.kind != "gate", self.key) < (other.kind != "gate", other.key)


@dataclass(frozen=True)
class VersionEntry(Record):
    """One committed version, as the overview lists it."""

    model: str
    version: str
    accuracy: float | None = None
    loss: float | None = None
    trained_at: str | None = None
    promoted_by: Promoter | None = None

    @classmethod
    def of(cls, model: str, version: str, metadata: dict[str, Any]) -> VersionEntry:
        metrics = metadata.get("metrics") if isinstance(metadata.get("metrics"), dict) else {}
        trained_at = metadata.get("trained_at")
        return cls(
            model,
            version,
            _number(metrics.get("accuracy")),
            _number(metrics.get("loss")),
            None if trained_at is None else str(trained_at),
        )

    @property
    def ref(self) -> _Ref:
        return (self.model, self.version)

    def credited(self, promoter: Promoter | None) -> VersionEntry:
        """This entry, promoted by `promoter` unless an earlier decision already did."""
        return (
            replace(self, promoted_by=promoter) if promoter and promoter.precedes(self.promoted_by) else self
        )


@dataclass(frozen=True)
class IndexedEvent(Record):
    """A history event with the key of its object."""

    key: str
    event: HistoryEvent

    @property
    def name(self) -> str:
        return event_name(self.key)

    def promoter(self) -> Promoter:
        return Promoter(self.key, self.event.kind, self.event.verdict.reason)


class _IndexProblem(Exception):
    """Why an index object cannot be used as it is: it is rebuilt from the objects."""


class _MissingIndex(_IndexProblem):
    def __init__(self) -> None:
        super().__init__("is missing")


def event_name(key: str) -> str:
    """`mnist/history/20260131T120000123456Z-ab12cd34.json` -> `20260131T120000123456Z-ab12cd34`:
    sorted by time, compared with a page's `before` and `since`."""
    return key.rsplit("/", 1)[-1].removesuffix(".json")


def month_of(key: str) -> str:
    return event_name(key)[:6]


def shard_key(month: str) -> str:
    return f"{_SHARD_PREFIX}{month}.json"


def promotion_key(run_id: str, model: str) -> str:
    # Run ids carry ':' and '+'; escaped whole (dots too), no run id can become another path.
    return f"{_PROMOTIONS_PREFIX}{_escaped(run_id)}/{_escaped(model)}.json"


def _escaped(text: str) -> str:
    return quote(text, safe="").replace(".", "%2E")


def _is_month(text: str) -> bool:
    return len(text) == 6 and text.isdigit()


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# Reading, with a rebuild from the objects when an index object cannot be trusted.


def read_versions(storage: Storage, expect: _Ref | None = None) -> list[VersionEntry]:
    """Every committed version, by model then version; rebuilt when the index is missing, corrupt
    or lacks `expect`, a version known to be committed (the champion's, say)."""
    try:
        entries = _parse_versions(_fetch(storage, VERSIONS_KEY))
        if expect is not None and expect not in entries:
            raise _IndexProblem(f"is stale: it lacks {expect[0]}/{expect[1]}")
    except _IndexProblem as problem:
        entries = _versions_from_objects(storage)
        _report(storage, VERSIONS_KEY, problem, len(entries), expected=0)
        if entries:
            with _best_effort(storage, VERSIONS_KEY):
                _store_versions(storage, entries)
    return [entries[ref] for ref in sorted(entries)]


def read_months(storage: Storage) -> list[str]:
    """The months with history, oldest first; a missing or corrupt list rebuilds the history index."""
    try:
        return _parse_months(_fetch(storage, MONTHS_KEY))
    except _IndexProblem as problem:
        events = rebuilt_history(storage, problem, expected=0)
        return sorted({month_of(i.key) for i in events if _is_month(month_of(i.key))})


def read_shard(storage: Storage, month: str) -> list[IndexedEvent]:
    """One month's events, oldest first; a missing or corrupt shard is rebuilt from that month's objects."""
    key = shard_key(month)
    try:
        return _parse_shard(_fetch(storage, key))
    except _IndexProblem as problem:
        events = _stored_events(storage, month)
        _report(storage, key, problem, len(events), expected=0)
        if events:
            with _best_effort(storage, key):
                _store_shard(storage, month, events)
        return events


def read_promotion(storage: Storage, run_id: str, model: str) -> IndexedEvent | None:
    """The latest event in which `run_id` promoted `model`, by its index key: one read."""
    key = promotion_key(run_id, model)
    try:
        return _parse_promotion(_fetch(storage, key))
    except _MissingIndex:
        return None  # the run promoted nothing, or the history index lags: see `find_promotion`
    except _IndexProblem as problem:
        events = rebuilt_history(storage, problem, expected=0, key=key)
        return _latest_promotion(events, run_id, model)


def history_indexed(storage: Storage) -> bool:
    """Whether the history index exists (registries written before it have none)."""
    return storage.exists(MONTHS_KEY)


def rebuilt_history(
    storage: Storage, problem: Exception | str | None = None, expected: int = 0, key: str = MONTHS_KEY
) -> list[IndexedEvent]:
    """Every event, from the objects, oldest first; the history index is rebuilt from them (a reader
    that may not write still gets them). `problem`: why (None: the index is missing); `expected`:
    how many events a registry may hold whose index is missing for want of a first event."""
    events = _stored_events(storage)
    _report(storage, key, _MissingIndex() if problem is None else problem, len(events), expected)
    if events:
        with _best_effort(storage, MONTHS_KEY):
            _store_history(storage, events)
    return events


def rebuild_index(storage: Storage) -> dict[str, int]:
    """Rebuild every index object from the versions and history objects; returns what it indexed."""
    events = _stored_events(storage)
    entries = _versions_from_objects(storage, events)
    _store_versions(storage, entries)
    months, promotions = _store_history(storage, events)
    summary = {"versions": len(entries), "events": len(events), "months": months, "promotions": promotions}
    log.info("rebuilt the registry index of %s: %s", storage.root_uri, summary)
    return summary


def _latest_promotion(events: list[IndexedEvent], run_id: str, model: str) -> IndexedEvent | None:
    return next((found for found in reversed(events) if found.event.is_promotion_of(run_id, model)), None)


def _report(storage: Storage, key: str, problem: Exception | str, found: int, expected: int) -> None:
    # A new registry has no index yet: creating it with its first objects is no news.
    quiet = isinstance(problem, _MissingIndex) and found <= expected
    log.log(
        logging.INFO if quiet else logging.WARNING,
        "registry index %s %s: rebuilding it from %d stored objects",
        storage.uri(key),
        problem,
        found,
    )


@contextmanager
def _best_effort(storage: Storage, key: str) -> Iterator[None]:
    """Storing a rebuilt index from a read: a reader without write access still answers."""
    try:
        yield
    except Exception as exc:  # any client's error: the rebuilt data is served all the same
        log.warning("could not store the rebuilt registry index %s: %s", storage.uri(key), exc)


# Writing: called right after the object an entry indexes is written.


def index_version(storage: Storage, model: str, version: str, metadata: dict[str, Any]) -> None:
    """Add a version just committed (its metadata.json written) to the versions index."""
    entry = VersionEntry.of(model, version, metadata)

    def decide(current: bytes | None) -> tuple[bytes | None, None]:
        entries, as_stored = _versions_or_rebuilt(storage, current)
        known = entries.get(entry.ref)
        if as_stored and known is not None and replace(known, promoted_by=None) == entry:
            return None, None
        entries[entry.ref] = entry.credited(known.promoted_by if known else None)
        return _encode_versions(entries), None

    compare_and_swap(storage, VERSIONS_KEY, decide)


def index_event(storage: Storage, key: str, event: HistoryEvent) -> None:
    """Index a history event just written as `key`: its month, its shard, the run's promotion and
    the version it promoted."""
    indexed = IndexedEvent(key, event)
    month = _add_month(storage, month_of(key))
    if month == "unindexed":  # no history index yet (a new registry, or one written before it)
        rebuilt_history(storage, expected=1)
    else:
        _add_to_shard(storage, indexed, new_month=month == "new")
        if event.promoted and event.run_id:
            _store_promotion(storage, indexed)
    if event.promoted and event.version:
        _credit_version(storage, indexed)


def _add_month(storage: Storage, month: str) -> Literal["unindexed", "new", "known"]:
    """Add `month` to the months list: "new" when this call added it, "known" when it was there,
    "unindexed" (writing nothing) when there is no usable list."""

    def decide(current: bytes | None) -> tuple[bytes | None, Literal["unindexed", "new", "known"]]:
        try:
            months = _parse_months(current)
        except _IndexProblem:
            return None, "unindexed"
        if month in months:
            return None, "known"
        return _encode({"months": sorted({*months, month})}), "new"

    return compare_and_swap(storage, MONTHS_KEY, decide)


def _add_to_shard(storage: Storage, indexed: IndexedEvent, new_month: bool) -> None:
    """Add the event to its month's shard. A month this event opened starts an empty shard; any
    other shard that is missing or corrupt is rebuilt from the month's objects."""
    month = month_of(indexed.key)
    key = shard_key(month)

    def decide(current: bytes | None) -> tuple[bytes | None, None]:
        try:
            events, as_stored = _parse_shard(current), True
        except _IndexProblem as problem:
            as_stored = False
            if new_month and isinstance(problem, _MissingIndex):
                events = []
            else:
                events = _stored_events(storage, month)
                _report(storage, key, problem, len(events), expected=1)
        if as_stored and any(known.key == indexed.key for known in events):
            return None, None
        return _encode_shard([*(known for known in events if known.key != indexed.key), indexed]), None

    compare_and_swap(storage, key, decide)


def _credit_version(storage: Storage, indexed: IndexedEvent) -> None:
    """Record the event as the promoter of its version, unless an earlier decision promoted it."""
    ref = (indexed.event.model, str(indexed.event.version))

    def decide(current: bytes | None) -> tuple[bytes | None, None]:
        entries, as_stored = _versions_or_rebuilt(storage, current)
        entry = entries.get(ref) or _entry_from_object(storage, ref)
        if entry is None:
            return None, None  # not a committed version: nothing to credit
        credited = entry.credited(indexed.promoter())
        if as_stored and entries.get(ref) == credited:
            return None, None
        entries[ref] = credited
        return _encode_versions(entries), None

    compare_and_swap(storage, VERSIONS_KEY, decide)


def _versions_or_rebuilt(storage: Storage, current: bytes | None) -> tuple[dict[_Ref, VersionEntry], bool]:
    """The versions index `current` holds and True, or one rebuilt from the objects and False."""
    try:
        return _parse_versions(current), True
    except _IndexProblem as problem:
        entries = _versions_from_objects(storage)
        _report(storage, VERSIONS_KEY, problem, len(entries), expected=1)
        return entries, False


def _entry_from_object(storage: Storage, ref: _Ref) -> VersionEntry | None:
    data = _fetch(storage, f"{MODELS_PREFIX}{ref[0]}/{ref[1]}/{METADATA_FILE}")
    return None if data is None else VersionEntry.of(*ref, _metadata(data))


# Storing rebuilt data: merged by compare-and-swap with whatever other writers stored meanwhile.


def _store_versions(storage: Storage, entries: dict[_Ref, VersionEntry]) -> None:
    def decide(current: bytes | None) -> tuple[bytes, None]:
        merged = dict(entries)
        for ref, known in _parsed_or_empty(_parse_versions, current, {}).items():
            merged[ref] = merged[ref].credited(known.promoted_by) if ref in merged else known
        return _encode_versions(merged), None

    compare_and_swap(storage, VERSIONS_KEY, decide)


def _store_history(storage: Storage, events: list[IndexedEvent]) -> tuple[int, int]:
    """Shards, then the months list (the mark that the history index exists), then promotions;
    returns how many months and promotions were stored."""
    by_month: dict[str, list[IndexedEvent]] = {}
    for indexed in events:
        if _is_month(month_of(indexed.key)):  # an object not named by `record_event` is not paged
            by_month.setdefault(month_of(indexed.key), []).append(indexed)
    _in_parallel(lambda item: _store_shard(storage, *item), by_month.items())

    def decide(current: bytes | None) -> tuple[bytes, None]:
        known = _parsed_or_empty(_parse_months, current, [])
        return _encode({"months": sorted({*known, *by_month})}), None

    compare_and_swap(storage, MONTHS_KEY, decide)
    latest = {(i.event.run_id, i.event.model): i for i in events if i.event.promoted and i.event.run_id}
    _in_parallel(lambda indexed: _store_promotion(storage, indexed), latest.values())
    return len(by_month), len(latest)


def _store_shard(storage: Storage, month: str, events: list[IndexedEvent]) -> None:
    def decide(current: bytes | None) -> tuple[bytes, None]:
        merged = {indexed.key: indexed for indexed in _parsed_or_empty(_parse_shard, current, [])}
        merged.update((indexed.key, indexed) for indexed in events)
        return _encode_shard(list(merged.values())), None

    compare_and_swap(storage, shard_key(month), decide)


def _store_promotion(storage: Storage, indexed: IndexedEvent) -> None:
    """The run's promotion of the model; the latest one when it promoted it more than once."""
    event = indexed.event

    def decide(current: bytes | None) -> tuple[bytes | None, None]:
        known = _parsed_or_empty(_parse_promotion, current, None)
        if known is not None and known.key >= indexed.key:
            return None, None
        return _encode({"promotion": indexed.to_dict()}), None

    compare_and_swap(storage, promotion_key(str(event.run_id), event.model), decide)


# From the objects: what every rebuild starts from.


def _stored_events(storage: Storage, month: str = "") -> list[IndexedEvent]:
    """Every event object (of `month`, when given), oldest first; a malformed one raises `RegistryError`."""
    # The whole history is listed even for one month: a local folder lists by folder, not by name.
    keys = [
        key
        for key in storage.list_keys(HISTORY_PREFIX)
        if key.endswith(".json") and event_name(key).startswith(month)
    ]
    payloads = _in_parallel(storage.read_json, keys)
    return [
        IndexedEvent(key, HistoryEvent.from_dict(payload, storage.uri(key)))
        for key, payload in zip(keys, payloads, strict=True)
    ]


def _versions_from_objects(
    storage: Storage, events: list[IndexedEvent] | None = None
) -> dict[_Ref, VersionEntry]:
    """Every committed version, credited with the events that promoted it (read when not given)."""
    marks = [key for key in storage.list_keys(MODELS_PREFIX) if _committed_ref(key) is not None]
    if not marks:
        return {}  # the history need not be read
    payloads = _in_parallel(storage.read_bytes, marks)
    entries = {}
    for key, data in zip(marks, payloads, strict=True):
        ref = _committed_ref(key)
        assert ref is not None  # filtered above
        entries[ref] = VersionEntry.of(*ref, _metadata(data))
    for indexed in _stored_events(storage) if events is None else events:
        ref = (indexed.event.model, str(indexed.event.version))
        if indexed.event.promoted and ref in entries:
            entries[ref] = entries[ref].credited(indexed.promoter())
    return entries


def _committed_ref(key: str) -> _Ref | None:
    parts = key.split("/")
    return (parts[2], parts[3]) if len(parts) == 5 and parts[4] == METADATA_FILE else None


def _metadata(data: bytes) -> dict[str, Any]:
    # The figures are for display: metadata that does not parse still lists its version.
    try:
        payload = json.loads(data)
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _in_parallel(work: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    items = list(items)
    if len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        return list(pool.map(work, items))


def _fetch(storage: Storage, key: str) -> bytes | None:
    """The object's bytes, None when absent: one call either way."""
    return storage.read_versioned(key)[0]


# Index objects as bytes, and back; anything unexpected is an `_IndexProblem`.


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps({"format": INDEX_FORMAT, **payload}, sort_keys=True, separators=(",", ":")).encode()


def _encode_versions(entries: dict[_Ref, VersionEntry]) -> bytes:
    return _encode({"versions": [entries[ref].to_dict() for ref in sorted(entries)]})


def _encode_shard(events: list[IndexedEvent]) -> bytes:
    return _encode({"events": [indexed.to_dict() for indexed in sorted(events, key=lambda i: i.key)]})


def _field(data: bytes | None, name: str, kind: type) -> Any:
    if data is None:
        raise _MissingIndex()
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise _IndexProblem(f"is not valid JSON ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != INDEX_FORMAT:
        raise _IndexProblem(f"is not an index of format {INDEX_FORMAT}")
    if not isinstance(payload.get(name), kind):
        raise _IndexProblem(f"lacks its {name!r}")
    return payload[name]


def _records(items: list[Any], record: type[Record], what: str) -> list[Any]:
    try:
        return [record.from_dict(item, f"{what}[{i}]") for i, item in enumerate(items)]
    except MnistPipelineError as exc:
        raise _IndexProblem(f"holds a malformed entry ({exc})") from None


def _parse_versions(data: bytes | None) -> dict[_Ref, VersionEntry]:
    entries = _records(_field(data, "versions", list), VersionEntry, "versions")
    return {entry.ref: entry for entry in entries}


def _parse_months(data: bytes | None) -> list[str]:
    months = _field(data, "months", list)
    if not all(isinstance(month, str) and _is_month(month) for month in months):
        raise _IndexProblem("holds a malformed month")
    return sorted(months)


def _parse_shard(data: bytes | None) -> list[IndexedEvent]:
    return sorted(_records(_field(data, "events", list), IndexedEvent, "events"), key=lambda i: i.key)


def _parse_promotion(data: bytes | None) -> IndexedEvent:
    (indexed,) = _records([_field(data, "promotion", dict)], IndexedEvent, "promotion")
    return indexed


def _parsed_or_empty(parse: Callable[[bytes | None], Any], data: bytes | None, empty: Any) -> Any:
    """What a merge keeps of an index object: its entries, or nothing when it is unusable."""
    try:
        return parse(data)
    except _IndexProblem:
        return empty
