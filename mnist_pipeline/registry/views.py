"""Views of the registry's log: objects derived from the commits, for fast reads and for readers
outside the pipeline. None of them is ever trusted beyond what the log says.

- `mnist/index/state.json`: the state at commit N. A reader takes it and asks for commit N+1: when
  that exists (a writer died between its commit and this view), the reader folds the tail and
  rewrites the view. Unreadable: the newest checkpoint plus the tail, else the whole log.
- `mnist/champion.json`, `mnist/aliases/<alias>.json`: each pointer with the commit it reflects
  (`log_version`); a view is only ever replaced by one of a later commit.
- `mnist/index/history/<YYYYMM>.json`: a month's events. The state lists each month's event names;
  a shard that lacks some (or is unreadable) is completed from their commits and rewritten.
- checkpoints (`log`): the state at every 100th commit, written once.

Every write here is best effort: a reader that may not write still answers from the log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from typing import Any

from mnist_pipeline.errors import MnistPipelineError, RegistryError, StorageError
from mnist_pipeline.records import is_json_object
from mnist_pipeline.registry import log as commit_log
from mnist_pipeline.registry.layout import ALIASES_PREFIX, CHAMPION_KEY, SHARDS_PREFIX, STATE_KEY
from mnist_pipeline.registry.log import UnreadableObject, checkpoint_key, read_commit
from mnist_pipeline.registry.records import ChampionPointer, Cleared, Commit, HistoryEvent, IndexedEvent
from mnist_pipeline.registry.state import CHAMPION, AliasState, RegistryState, compact_time, parse_event_name
from mnist_pipeline.storage import Storage

__all__ = [
    "FLUSH_INTERVAL",
    "LOG_VERSION",
    "SHARD_FORMAT",
    "alias_view_key",
    "alias_view_payload",
    "best_effort",
    "flush_shards",
    "parse_pointer_view",
    "read_event",
    "read_shard",
    "read_state_view",
    "shard_key",
    "shard_payload",
    "write_alias_view",
    "write_views",
]

log = logging.getLogger(__name__)
LOG_VERSION = "log_version"  # the field of a pointer view that names the commit it reflects
FLUSH_INTERVAL = 32  # commits between writes of the recent events into their shards
SHARD_FORMAT = 2


def alias_view_key(alias: str) -> str:
    return CHAMPION_KEY if alias == CHAMPION else f"{ALIASES_PREFIX}{alias}.json"


def shard_key(month: str) -> str:
    return f"{SHARDS_PREFIX}{month}.json"


def _encode(payload: Any) -> bytes:
    return json.dumps(payload, indent=2, sort_keys=True).encode()


def alias_view_payload(state: AliasState) -> bytes:
    """An alias's view: its pointer, or the tombstone of its clearing, with the commit it reflects."""
    stored: dict[str, Any] = state.pointer.to_dict() if state.pointer else _tombstone(state.cleared)
    return _encode({**stored, LOG_VERSION: state.moved_by})


def _tombstone(cleared: Cleared | None) -> dict[str, Any]:
    return cleared.to_dict() if cleared else {}


# Reading views.


def read_state_view(storage: Storage) -> RegistryState:
    """The state view; `UnreadableObject` when it is corrupt, None-like empty state when absent."""
    data = storage.read_versioned(STATE_KEY)[0]
    if data is None:
        raise UnreadableObject(STATE_KEY, "is missing")
    try:
        return RegistryState.from_json(data, STATE_KEY)
    except RegistryError as exc:
        raise UnreadableObject(STATE_KEY, str(exc)) from None


def read_event(storage: Storage, name: str) -> HistoryEvent:
    """The history event `name` (`IndexedEvent.name`), from its commit."""
    number, index = parse_event_name(name)
    commit = read_commit(storage, number)
    events = commit.events() if commit is not None else []
    if index >= len(events):
        raise RegistryError(f"no history event {name!r} in the registry {storage.root_uri}")
    return events[index]


def read_shard(storage: Storage, state: RegistryState, month: str, flush: bool = False) -> list[IndexedEvent]:
    """A month's events, oldest first: the shard view, plus the newest events the state holds,
    plus any other the state lists, read from its commit (the shard is then rewritten; `flush`
    rewrites it whenever it lacks one). Events whose commit is unreadable are left out."""
    wanted = state.months.get(month, [])
    key = shard_key(month)
    known = _parsed_shard(storage, key)
    stored = {indexed.name for indexed in known or []}
    found = {indexed.name: indexed for indexed in known or [] if indexed.name in set(wanted)}
    found.update((i.name, i) for i in state.recent if i.month == month and i.name not in found)
    missing = [name for name in wanted if name not in found]
    found.update(_events_from_log(storage, missing, key))
    events = [found[name] for name in wanted if name in found]
    if known is None or missing or not stored <= set(wanted) or (flush and stored != set(found)):
        with best_effort(storage, key):
            storage.write_bytes(key, shard_payload(events, state.number))
    return events


def _events_from_log(storage: Storage, names: list[str], shard: str) -> dict[str, IndexedEvent]:
    """The events `names` from their commits, each commit read once; events whose commit is
    unreadable are left out, with a warning."""
    by_commit: dict[int, list[tuple[str, int]]] = {}
    for name in names:
        number, index = parse_event_name(name)
        by_commit.setdefault(number, []).append((name, index))
    found: dict[str, IndexedEvent] = {}
    for number, wanted in by_commit.items():
        try:
            commit = read_commit(storage, number)
        except (RegistryError, StorageError) as exc:
            log.warning("commit %d is unreadable (%s): its events are left out of %s", number, exc, shard)
            continue
        events = commit.events() if commit is not None else []
        found.update(
            (name, IndexedEvent(name, events[index])) for name, index in wanted if index < len(events)
        )
    return found


def shard_payload(events: list[IndexedEvent], number: int) -> bytes:
    payload = {"format": SHARD_FORMAT, LOG_VERSION: number, "events": [i.to_dict() for i in events]}
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def _parsed_shard(storage: Storage, key: str) -> list[IndexedEvent] | None:
    """The shard's events; [] when it does not exist yet, None when it is unreadable."""
    data = storage.read_versioned(key)[0]
    if data is None:
        return []
    try:
        payload = json.loads(data)
        if not is_json_object(payload) or payload.get("format") != SHARD_FORMAT:
            raise ValueError(f"not a history shard of format {SHARD_FORMAT}")
        return [IndexedEvent.from_dict(item, key) for item in payload["events"]]
    except (ValueError, KeyError, TypeError, MnistPipelineError) as exc:
        log.warning("history view %s is unreadable (%s): rebuilding it from the log", storage.uri(key), exc)
        return None


# Writing views after commits.


def write_views(
    storage: Storage, state: RegistryState, commits: list[Commit], every_alias: bool = False
) -> None:
    """Bring the views up to `state`, which `commits` just took them to: the pointers they moved
    (`every_alias`: all of them, after a rebuild), a checkpoint where one falls due, the shards
    where due, then the state view, last: until it shows commit N, readers fold the tail from the
    log and finish the views of a writer that died. Each write is best effort."""
    moved = state.aliases if every_alias else {move.alias for commit in commits for move in commit.moves}
    for alias in sorted(moved):
        write_alias_view(storage, alias, state.alias(alias))
    for commit in commits:
        if commit.number % commit_log.CHECKPOINT_INTERVAL == 0 and commit.number == state.number:
            with best_effort(storage, checkpoint_key(commit.number)):
                storage.create_if_absent(checkpoint_key(commit.number), state.to_json())
    if any(c.number % FLUSH_INTERVAL == 0 or len(c.events()) > 1 for c in commits):
        flush_shards(storage, state, commits)
    _replace_unless_newer(storage, STATE_KEY, state.to_json(), state.number, "number")


def flush_shards(storage: Storage, state: RegistryState, commits: Sequence[Commit] = ()) -> None:
    """Write the state's recent events, and every event of `commits` (a migration brings many),
    into their months' shards: every `FLUSH_INTERVAL` commits, fewer than the state keeps, so no
    event is ever only in a commit."""
    months = {indexed.month for indexed in state.recent}
    months |= {compact_time(event.time)[:6] for commit in commits for event in commit.events()}
    for month in sorted(months & set(state.months)):
        read_shard(storage, state, month, flush=True)


def write_alias_view(storage: Storage, alias: str, state: AliasState) -> None:
    """Replace an alias's view unless it already reflects this move or a later one."""
    payload = alias_view_payload(state)
    _replace_unless_newer(storage, alias_view_key(alias), payload, state.moved_by, LOG_VERSION)


def _replace_unless_newer(storage: Storage, key: str, payload: bytes, number: int, field: str) -> None:
    """Write `payload`, which shows commit `number`, unless the view already shows that commit or
    a later one (its `field`); a writer of an older commit never replaces a newer view."""
    with best_effort(storage, key):
        for _ in range(3):
            data, generation = storage.read_versioned(key)
            if _commit_shown(data, field) >= number:
                return
            if storage.write_if_generation(key, payload, generation):
                return


def _commit_shown(data: bytes | None, field: str) -> int:
    """The commit a view says it shows; -1 when absent or unreadable (it is replaced)."""
    try:
        shown = json.loads(data).get(field, -1) if data is not None else -1
    except (ValueError, AttributeError):
        return -1
    return shown if isinstance(shown, int) and not isinstance(shown, bool) else -1


@contextmanager
def best_effort(storage: Storage, key: str) -> Generator[None]:
    """A view's write: a reader without write access, or a storage blip, still leaves the log true."""
    try:
        yield
    except Exception as exc:  # any client's error: the view is rebuilt by the next reader or writer
        log.warning("could not write the registry view %s: %s", storage.uri(key), exc)


def parse_pointer_view(data: bytes, key: str) -> ChampionPointer | None:
    """A pointer view's target (None: a tombstone); `RegistryError` naming the object if malformed."""
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise RegistryError(f"{key} is not valid JSON ({exc})") from None
    if is_json_object(payload) and "cleared_at" in payload:
        return None
    if is_json_object(payload):
        payload = {k: v for k, v in payload.items() if k != LOG_VERSION}
    return ChampionPointer.from_dict(payload, key)
