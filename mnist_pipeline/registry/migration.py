"""Migrating a registry written before the log: its champion pointer, aliases, history and
versions become commit 1, once.

The first reader or writer that finds no log but legacy objects (`mnist/champion.json` without a
`log_version`, `mnist/history/`, `mnist/aliases/`) drafts one `migrate` commit holding all of them:
every published version, every alias's pointer or tombstone, and every history event (the
aliases' too), oldest first. Concurrent migrators race for commit 1 like any writer; the loser
finds it there. Legacy objects that cannot be read are named in the commit's `set_aside`, with
why, and left where they are.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from mnist_pipeline.errors import MnistPipelineError, StorageError
from mnist_pipeline.records import is_json_object
from mnist_pipeline.registry.layout import (
    ALIASES_PREFIX,
    CHAMPION_KEY,
    LEGACY_ALIAS_HISTORY_PREFIX,
    LEGACY_HISTORY_PREFIX,
)
from mnist_pipeline.registry.records import AliasMove, Cleared, Commit, HistoryEvent, VersionEntry
from mnist_pipeline.registry.state import CHAMPION, RegistryState
from mnist_pipeline.registry.views import LOG_VERSION, parse_pointer_view, write_views

if TYPE_CHECKING:
    from mnist_pipeline.registry.client import Registry

__all__ = ["migrate_legacy"]

log = logging.getLogger(__name__)


def migrate_legacy(registry: Registry) -> RegistryState:
    """The state after migrating the legacy objects into commit 1 (an empty state when there are
    none: a new registry)."""
    from mnist_pipeline.registry.log import append

    storage = registry.storage
    champion_data = storage.read_versioned(CHAMPION_KEY)[0]
    legacy = [
        *storage.list_keys(LEGACY_HISTORY_PREFIX),
        *storage.list_keys(ALIASES_PREFIX),
        *storage.list_keys(LEGACY_ALIAS_HISTORY_PREFIX),
    ]
    if not legacy and (champion_data is None or _has_log_version(champion_data)):
        return RegistryState()
    set_aside: list[str] = []
    commit = Commit(
        0,
        "migrate",
        "",
        "migration",
        "the registry before its commit log, migrated",
        moves=_legacy_moves(registry, champion_data, set_aside),
        versions=_legacy_versions(registry, set_aside),
        migrated=_legacy_events(registry, set_aside),
        set_aside=set_aside,
    )
    made, state = append(storage, RegistryState(), lambda s: commit if s.number == 0 else None)
    if made is None:
        return registry.state()  # another process migrated it, or committed first
    log.warning("migrated the registry %s into its commit log (set aside: %s)", storage.root_uri, set_aside)
    write_views(storage, state, [made], every_alias=True)
    return state


def _has_log_version(data: bytes) -> bool:
    try:
        payload = json.loads(data)
    except ValueError:
        return False
    return isinstance(payload, dict) and LOG_VERSION in payload


def _legacy_moves(registry: Registry, champion_data: bytes | None, set_aside: list[str]) -> list[AliasMove]:
    storage = registry.storage
    moves: list[AliasMove] = []
    if champion_data is not None:
        try:
            pointer = parse_pointer_view(champion_data, storage.uri(CHAMPION_KEY))
            moves.append(AliasMove(CHAMPION, pointer))
        except MnistPipelineError as exc:
            set_aside.append(f"{CHAMPION_KEY}: {exc}")
    for key in storage.list_keys(ALIASES_PREFIX):
        alias = key[len(ALIASES_PREFIX) :].removesuffix(".json")
        try:
            moves.append(_alias_move(alias, storage.read_bytes(key), storage.uri(key)))
        except MnistPipelineError as exc:
            set_aside.append(f"{key}: {exc}")
    return moves


def _alias_move(alias: str, data: bytes, where: str) -> AliasMove:
    from mnist_pipeline.registry.aliases import validate_alias

    validate_alias(alias)
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise StorageError(f"{where} is not valid JSON ({exc})") from None
    if is_json_object(payload) and "cleared_at" in payload:
        return AliasMove(alias, cleared=Cleared.from_dict(payload, where))
    return AliasMove(alias, parse_pointer_view(data, where))


def _legacy_versions(registry: Registry, set_aside: list[str]) -> list[VersionEntry]:
    entries: list[VersionEntry] = []
    for ref in registry.files.uploaded():
        try:
            entries.append(VersionEntry.of(ref.model, ref.version, registry.files.metadata(ref)))
        except MnistPipelineError as exc:
            set_aside.append(f"{ref.prefix}/metadata.json: {exc}")
            entries.append(VersionEntry(ref.model, ref.version))
    return entries


def _legacy_events(registry: Registry, set_aside: list[str]) -> list[HistoryEvent]:
    storage = registry.storage
    keys = [
        key
        for prefix in (LEGACY_HISTORY_PREFIX, LEGACY_ALIAS_HISTORY_PREFIX)
        for key in storage.list_keys(prefix)
        if key.endswith(".json")
    ]
    events: list[HistoryEvent] = []
    for key in keys:
        try:
            events.append(HistoryEvent.from_dict(storage.read_json(key), storage.uri(key)))
        except MnistPipelineError as exc:
            set_aside.append(f"{key}: {exc}")
    return sorted(events, key=lambda event: event.time)
