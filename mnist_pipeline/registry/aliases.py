"""Named aliases: movable names for a published version (`champion`, `candidate`, `staging`,
`shadow`...), as MLflow and Vertex AI name theirs.

`champion` is one alias among them, kept where it always was: `mnist/champion.json`, moved by the
gate, by a manual promotion and by a rollback (`operations`), its events in the main history. Every
other alias is a pointer of its own, `mnist/aliases/<alias>.json` (a `ChampionPointer`, the reason
in its `verdict`), with its events in `mnist/alias-history/<alias>/` (`layout`). Each pointer is
moved by compare-and-swap, so that concurrent writers lose no move and each records its event, and
remembers the targets before it, for rollback.

Clearing an alias writes a tombstone in place of its pointer rather than deleting it: storage offers
no conditional delete, and an unconditional one could remove the pointer another writer has just
set. The tombstone remembers the target it cleared, so that a rollback brings it back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mnist_pipeline.errors import RegistryError
from mnist_pipeline.records import Record
from mnist_pipeline.registry.gate import Verdict
from mnist_pipeline.registry.history import DEFAULT_PAGE_SIZE, history_page, read_event, write_event
from mnist_pipeline.registry.layout import ALIAS_HISTORY_PREFIX, ALIASES_PREFIX, CHAMPION_KEY
from mnist_pipeline.registry.operations import promote_version, rollback
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent, VersionSummary
from mnist_pipeline.registry.store import ModelRegistry, VersionRef
from mnist_pipeline.runs import utc_now
from mnist_pipeline.storage import Storage, compare_and_swap

__all__ = [
    "CANDIDATE",
    "CHAMPION",
    "alias_history",
    "alias_key",
    "clear_alias",
    "list_aliases",
    "move_alias",
    "read_alias",
    "rollback_alias",
    "set_alias",
    "validate_alias",
]

CHAMPION = "champion"
CANDIDATE = "candidate"
_Result = TypeVar("_Result")
# Aliases become object names and URL-friendly labels: lowercase, so that `Staging` and `staging`
# can never be two aliases.
_ALIAS_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,39}")
_ALIAS_RULE = "a lowercase letter, then up to 39 lowercase letters, digits or '-' (^[a-z][a-z0-9-]{0,39}$)"
_TOMBSTONE_MARK = "cleared_at"  # the field only a tombstone has


@dataclass(frozen=True)
class _Cleared(Record):
    """What a cleared alias leaves in place of its pointer: when, by whom, why, and what it cleared."""

    cleared_at: str
    reason: str
    cleared_by: str | None = None
    previous: ChampionPointer | None = None


@dataclass(frozen=True)
class _AliasState:
    """An alias's stored object, read: its pointer, or the tombstone of its clearing, or neither."""

    pointer: ChampionPointer | None = None
    cleared: _Cleared | None = None

    @property
    def last_target(self) -> ChampionPointer | None:
        """What a new pointer remembers: the current target, else the one cleared."""
        return self.pointer or (self.cleared.previous if self.cleared else None)

    @property
    def earlier_target(self) -> ChampionPointer | None:
        """Where a rollback goes: the target before the current one, or the one cleared."""
        return self.pointer.previous if self.pointer else self.last_target


_Stored = ChampionPointer | _Cleared
_Rollback = tuple[ChampionPointer, ChampionPointer | None]  # the target restored, the one it replaced


def validate_alias(name: str) -> str:
    """`name` if it may name an alias; otherwise a `RegistryError` naming it and the rule."""
    if not isinstance(name, str) or not _ALIAS_PATTERN.fullmatch(name):
        raise RegistryError(f"alias {name!r} is not allowed: an alias is {_ALIAS_RULE}")
    return name


def alias_key(alias: str) -> str:
    """The pointer's key: `champion.json` where it always was, every other alias under `aliases/`."""
    return CHAMPION_KEY if validate_alias(alias) == CHAMPION else f"{ALIASES_PREFIX}{alias}.json"


def read_alias(registry: ModelRegistry, alias: str) -> ChampionPointer | None:
    """The version `alias` points at now; None when it is not set (never set, or cleared)."""
    if validate_alias(alias) == CHAMPION:
        return registry.champion()
    return _read_state(registry, alias).pointer


def list_aliases(registry: ModelRegistry) -> dict[str, ChampionPointer]:
    """Every alias set now, the champion first, then by name: one read of the champion, one listing
    and one read per other alias, however often they moved."""
    champion = registry.champion()
    found = {CHAMPION: champion} if champion else {}
    for alias in _stored_aliases(registry.storage):
        pointer = _read_state(registry, alias).pointer
        if pointer is not None:
            found[alias] = pointer
    return found


def move_alias(
    registry: ModelRegistry,
    alias: str,
    decide: Callable[[ChampionPointer | None], tuple[ChampionPointer | None, _Result]],
) -> _Result:
    """Compare-and-swap on the alias's pointer, as `ModelRegistry.move_champion` on the champion's:
    `decide(current)` returns (the new pointer, or None to leave it, and a result); a lost race
    decides again on what the other writer left. The new target must be completely published."""
    if validate_alias(alias) == CHAMPION:
        return registry.move_champion(decide)
    return _swap(registry, alias, lambda state: decide(state.pointer))


def set_alias(
    registry: ModelRegistry,
    alias: str,
    ref: VersionRef,
    who: str,
    reason: str,
    *,
    run_id: str | None = None,
    metrics: dict[str, float] | None = None,
) -> HistoryEvent:
    """Point `alias` at `ref`, whose model file must still match its hash, and record the move in the
    alias's history; the pointer remembers the targets before it. `champion`: a manual promotion."""
    if validate_alias(alias) == CHAMPION:
        return promote_version(registry, ref, reason, who, run_id=run_id, metrics=metrics)
    _require_reason(reason, f"setting alias {alias!r}")
    pointer = _pointer_at(registry, alias, ref, who, reason, run_id, metrics)
    replaced = _swap(registry, alias, lambda state: (pointer.succeeding(state.last_target), state.pointer))
    return _record(registry.storage, _event("alias-set", alias, pointer, replaced, who, reason, run_id))


def clear_alias(registry: ModelRegistry, alias: str, who: str, reason: str) -> HistoryEvent | None:
    """Unset `alias` and record it; None, recording nothing, when it was not set. The champion is
    never cleared: something must serve."""
    if validate_alias(alias) == CHAMPION:
        raise RegistryError("alias 'champion' cannot be cleared: promote another version or roll back")
    _require_reason(reason, f"clearing alias {alias!r}")

    def tombstone(state: _AliasState) -> tuple[_Cleared | None, ChampionPointer | None]:
        if state.pointer is None:
            return None, None
        return _Cleared(utc_now(), reason, who, state.pointer), state.pointer

    cleared = _swap(registry, alias, tombstone)
    if cleared is None:
        return None
    return _record(registry.storage, _event("alias-cleared", alias, cleared, cleared, who, reason))


def rollback_alias(registry: ModelRegistry, alias: str, who: str) -> HistoryEvent:
    """Point `alias` back at its target before the current one (after a clear: the one cleared)."""
    if validate_alias(alias) == CHAMPION:
        return rollback(registry, who)

    def previous_of(state: _AliasState) -> tuple[ChampionPointer, _Rollback]:
        if state.earlier_target is None:
            raise RegistryError(f"alias {alias!r} has no previous target to roll back to")
        restored = state.earlier_target.restored(utc_now())
        return restored, (restored, state.pointer)

    restored, replaced = _swap(registry, alias, previous_of)
    return _record(registry.storage, _event("alias-rollback", alias, restored, replaced, who, "rollback"))


def alias_history(registry: ModelRegistry, alias: str, limit: int | None = None) -> list[HistoryEvent]:
    """The alias's moves, newest first, the newest `limit` of them. `champion`: the main history's
    events that moved it (gate promotions, manual promotions, rollbacks)."""
    if limit is not None and limit < 1:
        raise RegistryError(f"a history shows at least 1 event, not {limit}")
    if validate_alias(alias) == CHAMPION:
        return _champion_moves(registry.storage, limit)
    keys = [key for key in registry.storage.list_keys(_history_prefix(alias)) if key.endswith(".json")]
    newest_first = keys[::-1][:limit]  # keys start with their UTC time
    return [read_event(registry.storage, key) for key in newest_first]


def _champion_moves(storage: Storage, limit: int | None) -> list[HistoryEvent]:
    """The main history's promoting events, a page at a time until `limit` of them are found."""
    moves: list[HistoryEvent] = []
    before = None
    while limit is None or len(moves) < limit:
        page = history_page(storage, DEFAULT_PAGE_SIZE, before=before)
        moves.extend(event for event in page.events if event.promoted and event.alias is None)
        if page.older is None:
            break
        before = page.older
    return moves[:limit]


def _require_reason(reason: str, doing: str) -> None:
    if not reason.strip():
        raise RegistryError(f"{doing} needs a --reason")


def _pointer_at(
    registry: ModelRegistry,
    alias: str,
    ref: VersionRef,
    who: str,
    reason: str,
    run_id: str | None,
    metrics: dict[str, float] | None,
) -> ChampionPointer:
    """A pointer at `ref`, refused unless its model file still matches its hash: nothing is written."""
    try:
        metadata = registry.metadata(ref)  # an unknown version stops here...
        registry.verified_file(ref, "model.keras")  # ...and a tampered one here
        measured = _measured(registry, ref, metadata)
    except RegistryError as exc:
        raise RegistryError(f"cannot set alias {alias!r} to {ref}: {exc}") from None
    if metrics is None:
        metrics = {name: measured[name] for name in ("accuracy", "loss") if name in measured}
    return ChampionPointer.for_version(
        VersionSummary(ref.model, ref.version, dict(metrics)),
        registry.uri(ref),
        utc_now(),
        reason,
        run_id=run_id,
        test_hash=measured.get("test_hash"),
        data_hash=metadata.get("data_hash"),
        set_by=who,
    )


def _measured(registry: ModelRegistry, ref: VersionRef, metadata: dict[str, Any]) -> dict[str, Any]:
    """The version's metrics.json, sha256-verified; {} for a version published without one."""
    if "metrics.json" not in metadata.get("files_sha256", {}):
        return {}
    measured = json.loads(registry.verified_file(ref, "metrics.json"))
    return measured if isinstance(measured, dict) else {}


def _event(
    kind: str,
    alias: str,
    pointer: ChampionPointer,
    replaced: ChampionPointer | None,
    who: str,
    reason: str,
    run_id: str | None = None,
) -> HistoryEvent:
    moved = kind != "alias-cleared"  # a clear points the alias at nothing
    return HistoryEvent(
        kind=kind,
        alias=alias,
        trigger=who,
        model=pointer.model,
        version=pointer.version,
        metrics=dict(pointer.metrics),
        verdict=Verdict(promote=moved, reason=reason),
        promoted=moved,
        run_id=run_id,
        previous_champion=replaced.summary() if replaced else None,
    )


def _record(storage: Storage, event: HistoryEvent) -> HistoryEvent:
    """Write the event in its alias's own history. It is not indexed: the main history's indexes
    are about the champion, and an alias's history is read by listing its one folder."""
    return write_event(storage, event, _history_prefix(str(event.alias)))[1]


def _history_prefix(alias: str) -> str:
    return f"{ALIAS_HISTORY_PREFIX}{alias}/"


def _swap(
    registry: ModelRegistry, alias: str, decide: Callable[[_AliasState], tuple[_Stored | None, _Result]]
) -> _Result:
    """Compare-and-swap on a non-champion alias's object: `decide(state)` returns the pointer or
    tombstone to store (None: leave it) and a result. A pointer must target a published version."""
    key = alias_key(alias)

    def on_bytes(data: bytes | None) -> tuple[bytes | None, _Result]:
        stored, result = decide(_parse_state(registry, key, data))
        if stored is None:
            return None, result
        if isinstance(stored, ChampionPointer):
            return registry.champion_payload(stored, f"alias {alias!r}"), result
        return json.dumps(stored.to_dict(), indent=2, sort_keys=True).encode(), result

    return compare_and_swap(registry.storage, key, on_bytes)


def _read_state(registry: ModelRegistry, alias: str) -> _AliasState:
    key = alias_key(alias)
    return _parse_state(registry, key, registry.storage.read_versioned(key)[0])


def _parse_state(registry: ModelRegistry, key: str, data: bytes | None) -> _AliasState:
    if data is None:
        return _AliasState()
    payload, where = registry.parse_json(key, data), registry.storage.uri(key)
    if isinstance(payload, dict) and _TOMBSTONE_MARK in payload:
        return _AliasState(cleared=_Cleared.from_dict(payload, where))
    return _AliasState(pointer=ChampionPointer.from_dict(payload, where))


def _stored_aliases(storage: Storage) -> list[str]:
    """The aliases with an object under `aliases/`, by name: one listing. Keys this module would not
    have written (another name, a stray file) are no alias."""
    names = [key[len(ALIASES_PREFIX) :].removesuffix(".json") for key in storage.list_keys(ALIASES_PREFIX)]
    return sorted(name for name in names if _ALIAS_PATTERN.fullmatch(name) and name != CHAMPION)
