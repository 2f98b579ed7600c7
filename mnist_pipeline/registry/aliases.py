"""Named aliases: movable names for a published version (`champion`, `candidate`, `staging`,
`shadow`...), as MLflow and Vertex AI name theirs, and what a person does to them by hand.

Every move is one commit of the log (`client.Registry.commit`): set (for `champion`, a manual
promotion), cleared (never the champion: something must serve), rolled back to the target before.
Each pointer remembers the targets before it, for rollback. A move states the commit it is based
on (by default the state it was read from): if the alias moved since, it is refused, naming what
moved it, and nothing is written. A `request_id` makes a move idempotent: retried, it finds its
commit instead of moving the alias again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from mnist_pipeline.errors import RegistryError
from mnist_pipeline.records import is_json_object
from mnist_pipeline.registry.client import Registry, moved_since
from mnist_pipeline.registry.gate import Verdict
from mnist_pipeline.registry.records import (
    AliasMove,
    ChampionPointer,
    Cleared,
    Commit,
    HistoryEvent,
    VersionSummary,
)
from mnist_pipeline.registry.state import CHAMPION, AliasState, RegistryState
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.registry.views import alias_view_key
from mnist_pipeline.runs import utc_now

__all__ = [
    "CANDIDATE",
    "CHAMPION",
    "alias_history",
    "alias_key",
    "clear_alias",
    "list_aliases",
    "read_alias",
    "rollback_alias",
    "set_alias",
    "validate_alias",
]

CANDIDATE = "candidate"
# Aliases become object names and URL-friendly labels: lowercase, so that `Staging` and `staging`
# can never be two aliases.
_ALIAS_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,39}")
_ALIAS_RULE = "a lowercase letter, then up to 39 lowercase letters, digits or '-' (^[a-z][a-z0-9-]{0,39}$)"
_Make = Callable[[AliasState], tuple[AliasMove, HistoryEvent] | None]


def validate_alias(name: object) -> str:
    """`name` if it may name an alias; otherwise a `RegistryError` naming it and the rule."""
    if not isinstance(name, str) or not _ALIAS_PATTERN.fullmatch(name):
        raise RegistryError(f"alias {name!r} is not allowed: an alias is {_ALIAS_RULE}")
    return name


def alias_key(alias: str) -> str:
    """The alias's view: `champion.json` where it always was, every other alias under `aliases/`."""
    return alias_view_key(validate_alias(alias))


def read_alias(registry: Registry, alias: str) -> ChampionPointer | None:
    """The version `alias` points at now; None when it is not set (never set, or cleared)."""
    return registry.state().alias(validate_alias(alias)).pointer


def list_aliases(registry: Registry) -> dict[str, ChampionPointer]:
    """Every alias set now, the champion first, then by name."""
    return registry.aliases()


def set_alias(
    registry: Registry,
    alias: str,
    ref: VersionRef,
    who: str,
    reason: str,
    *,
    run_id: str | None = None,
    metrics: dict[str, float] | None = None,
    based_on: int | None = None,
    request_id: str | None = None,
) -> HistoryEvent:
    """Point `alias` at `ref`, whose model file must still match its hash; `champion`: a manual
    promotion, bypassing the gate."""
    champion = validate_alias(alias) == CHAMPION
    _require_reason(reason, "a manual promotion" if champion else f"setting alias {alias!r}")
    state = registry.state()
    pointer = _pointer_at(registry, state, alias, ref, who, reason, run_id, metrics)
    kind = "manual-promotion" if champion else "alias-set"

    def make(current: AliasState) -> tuple[AliasMove, HistoryEvent]:
        moved = pointer.succeeding(current.last_target)
        return AliasMove(alias, moved), _event(kind, alias, moved, current.pointer, who, reason, run_id)

    event = _move(registry, state, alias, "promote" if champion else "alias-set", make, based_on, request_id)
    assert event is not None  # a set always moves
    return event


def clear_alias(
    registry: Registry,
    alias: str,
    who: str,
    reason: str,
    *,
    based_on: int | None = None,
    request_id: str | None = None,
) -> HistoryEvent | None:
    """Unset `alias` and record it; None, recording nothing, when it was not set. The champion is
    never cleared: something must serve."""
    if validate_alias(alias) == CHAMPION:
        raise RegistryError("alias 'champion' cannot be cleared: promote another version or roll back")
    _require_reason(reason, f"clearing alias {alias!r}")

    def make(current: AliasState) -> tuple[AliasMove, HistoryEvent] | None:
        if current.pointer is None:
            return None
        cleared = Cleared(utc_now(), reason, who, current.pointer)
        event = _event("alias-cleared", alias, current.pointer, current.pointer, who, reason)
        return AliasMove(alias, cleared=cleared), event

    return _move(registry, registry.state(), alias, "alias-cleared", make, based_on, request_id)


def rollback_alias(
    registry: Registry, alias: str, who: str, *, based_on: int | None = None, request_id: str | None = None
) -> HistoryEvent:
    """Point `alias` back at its target before the current one (after a clear: the one cleared)."""
    champion = validate_alias(alias) == CHAMPION

    def make(current: AliasState) -> tuple[AliasMove, HistoryEvent]:
        earlier = current.earlier_target
        if earlier is None and champion:
            raise RegistryError("there is no previous champion to roll back to")
        if earlier is None:
            raise RegistryError(f"alias {alias!r} has no previous target to roll back to")
        restored = earlier.restored(utc_now())
        kind = "rollback" if champion else "alias-rollback"
        return AliasMove(alias, restored), _event(kind, alias, restored, current.pointer, who, "rollback")

    kind = "rollback" if champion else "alias-rollback"
    event = _move(registry, registry.state(), alias, kind, make, based_on, request_id)
    assert event is not None
    return event


def alias_history(registry: Registry, alias: str, limit: int | None = None) -> list[HistoryEvent]:
    """The alias's moves, newest first, the newest `limit` of them. `champion`: the history's events
    that moved it (gate promotions, approvals, manual promotions, rollbacks)."""
    if limit is not None and limit < 1:
        raise RegistryError(f"a history shows at least 1 event, not {limit}")
    if validate_alias(alias) == CHAMPION:
        return _champion_moves(registry, limit)
    return registry.alias_events(alias, limit)


def _champion_moves(registry: Registry, limit: int | None) -> list[HistoryEvent]:
    """The history's promoting events, a page at a time until `limit` of them are found."""
    state = registry.state()
    moves: list[HistoryEvent] = []
    before = None
    while limit is None or len(moves) < limit:
        page = registry.history_page(before=before, state=state)
        moves.extend(event for event in page.events if event.promoted and event.alias is None)
        if page.older is None:
            break
        before = page.older
    return moves[:limit]


def _move(
    registry: Registry,
    read: RegistryState,
    alias: str,
    kind: str,
    make: _Make,
    based_on: int | None,
    request_id: str | None,
) -> HistoryEvent | None:
    """Commit the move `make` drafts from the alias's current state, refused if the alias moved
    after `based_on` (by default: the state `read`)."""
    base = read.number if based_on is None else based_on

    def draft(state: RegistryState) -> Commit | None:
        if request_id is not None and request_id in state.requests:
            return None
        moved_since(registry, state, alias, base, "the registry was read")
        made = make(state.alias(alias))
        if made is None:
            return None
        move, event = made
        return Commit(
            0,
            kind,
            "",
            str(event.trigger),
            event.verdict.reason,
            based_on=base,
            run_id=event.run_id,
            model=event.model,
            request_id=request_id,
            event=event,
            moves=[move],
        )

    commit, state = registry.commit(draft, read)
    if commit is None and request_id is not None and request_id in state.requests:
        commit = registry.read_commit(state.requests[request_id])  # a retry: what the first try did
    return commit.event if commit is not None else None


def _require_reason(reason: str, doing: str) -> None:
    if not reason.strip():
        raise RegistryError(f"{doing} needs a --reason")


def _pointer_at(
    registry: Registry,
    state: RegistryState,
    alias: str,
    ref: VersionRef,
    who: str,
    reason: str,
    run_id: str | None,
    metrics: dict[str, float] | None,
) -> ChampionPointer:
    """A pointer at `ref`, refused unless it is published and its model file still matches its
    hash: nothing is written."""
    try:
        if not state.is_published(ref.model, ref.version):
            raise RegistryError(f"unknown version {ref} in registry {registry.storage.root_uri}")
        metadata = registry.metadata(ref)
        registry.verified_file(ref, "model.keras")  # a tampered version stops here
        measured = _measured(registry, ref, metadata)
    except RegistryError as exc:
        raise RegistryError(f"cannot set alias {alias!r} to {ref}: {exc}") from None
    if metrics is None:
        metrics = {name: measured[name] for name in ("accuracy", "loss") if name in measured}
    champion = alias == CHAMPION
    return ChampionPointer.for_version(
        VersionSummary(ref.model, ref.version, dict(metrics)),
        registry.uri(ref),
        utc_now(),
        f"manual promotion: {reason}" if champion else reason,
        forced=champion,
        run_id=run_id,
        test_hash=measured.get("test_hash"),
        data_hash=metadata.get("data_hash"),
        set_by=who,
    )


def _measured(registry: Registry, ref: VersionRef, metadata: dict[str, Any]) -> dict[str, Any]:
    """The version's metrics.json, sha256-verified; {} for a version published without one."""
    if "metrics.json" not in metadata.get("files_sha256", {}):
        return {}
    measured = json.loads(registry.verified_file(ref, "metrics.json"))
    return measured if is_json_object(measured) else {}


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
    champion = alias == CHAMPION
    return HistoryEvent(
        kind=kind,
        alias=None if champion else alias,  # the champion's events are the history's own
        trigger=who,
        model=pointer.model,
        version=pointer.version,
        metrics=dict(pointer.metrics),
        verdict=Verdict(promote=moved, reason=reason, forced=champion),
        promoted=moved,
        forced=champion,
        run_id=run_id,
        previous_champion=replaced.summary() if replaced else None,
    )
