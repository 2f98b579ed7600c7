"""`Registry`: the one client of the model registry, over any `Storage`, used by the DAG's steps,
the CLI and the web page, as MLflow's client is over its store.

Reads come from the state of the log (`log`, `state`) through its views (`views`): the state view
and one probe for a newer commit, then a history shard where a page needs one. Writes are commits:
`commit(draft)` appends the commit `draft` makes from the newest state, create-if-absent, then
brings the views up to it. What a commit means (a gate decision, an approval, a person's promote or
rollback, an alias's move) is drafted in `promotion`, `approval` and `aliases`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.errors import ConflictError, RegistryError
from mnist_pipeline.registry.log import (
    Draft,
    UnreadableObject,
    advance,
    append,
    commit_key,
    read_commit,
    replay,
)
from mnist_pipeline.registry.records import ChampionPointer, Commit, HistoryEvent, IndexedEvent, VersionEntry
from mnist_pipeline.registry.state import CHAMPION, RegistryState
from mnist_pipeline.registry.store import VersionRef, VersionStore
from mnist_pipeline.registry.views import (
    read_event,
    read_shard,
    read_state_view,
    write_views,
)
from mnist_pipeline.storage import Storage, open_storage

__all__ = ["DEFAULT_PAGE_SIZE", "HistoryPage", "Registry", "moved_since"]

log = logging.getLogger(__name__)
DEFAULT_PAGE_SIZE = 50


@dataclass(frozen=True)
class HistoryPage:
    """Events newest first, and the `before` that reads the page after it (None: nothing older)."""

    events: list[HistoryEvent]
    older: str | None = None
    names: tuple[str, ...] = ()  # each event's name, as `event` reads it


class Registry:
    """`stale_upload_seconds`: an uncommitted upload older than this is a dead publish's, which the
    next publish removes."""

    def __init__(
        self, storage: Storage, stale_upload_seconds: float = PipelineSettings.stale_upload_seconds
    ) -> None:
        self.storage = storage
        self.files = VersionStore(storage, stale_upload_seconds)

    @classmethod
    def from_settings(cls, settings: PipelineSettings) -> Registry:
        """The registry at `settings.registry_uri`, reached and kept as the settings say."""
        return cls(open_storage(settings.registry_uri, settings), settings.stale_upload_seconds)

    # The state of the log.

    def state(self) -> RegistryState:
        """The registry as of the newest commit: the state view and one probe when it is current;
        a view behind the log (a writer died before updating it) is brought up to date."""
        try:
            state = read_state_view(self.storage)
        except UnreadableObject as problem:
            return self._rebuilt(problem)
        state, tail = advance(self.storage, state)
        if tail:
            log.info("registry views lag the log by %d commits: bringing them up to date", len(tail))
            write_views(self.storage, state, tail)
        return state

    def _rebuilt(self, problem: UnreadableObject) -> RegistryState:
        if self.storage.read_versioned(commit_key(1))[0] is None:
            from mnist_pipeline.registry.migration import migrate_legacy

            return migrate_legacy(self)  # an empty log: a new registry, or one from before the log
        if problem.why != "is missing":
            log.warning("registry view %s: rebuilding it from the log", self.storage.uri(problem.key))
        state = replay(self.storage)
        write_views(self.storage, state, [], every_alias=True)
        return state

    def commit(self, draft: Draft, state: RegistryState | None = None) -> tuple[Commit | None, RegistryState]:
        """Append the commit `draft(state)` makes (None: nothing to do), drafted first on `state`
        when the caller has just read it; returns the commit and the state that includes it. A lost
        race drafts again on the newer state."""
        commit, state = append(self.storage, state or self.state(), draft)
        if commit is not None:
            write_views(self.storage, state, [commit])
        return commit, state

    def read_commit(self, number: int) -> Commit | None:
        return read_commit(self.storage, number)

    # Versions.

    def uri(self, ref: VersionRef) -> str:
        return self.files.uri(ref)

    def metadata(self, ref: VersionRef) -> dict[str, Any]:
        return self.files.metadata(ref)

    def verified_file(self, ref: VersionRef, name: str) -> bytes:
        return self.files.verified_file(ref, name)

    def predictions(self, ref: VersionRef) -> np.ndarray:
        return self.files.predictions(ref)

    def is_published(self, ref: VersionRef, state: RegistryState | None = None) -> bool:
        return (state or self.state()).is_published(ref.model, ref.version)

    def versions(self) -> list[VersionRef]:
        """Every published version, by model then version."""
        return [VersionRef(*ref) for ref in sorted(self.state().versions)]

    def version_entries(self, state: RegistryState | None = None) -> list[VersionEntry]:
        state = state or self.state()
        return [state.versions[ref] for ref in sorted(state.versions)]

    def publish(
        self,
        ref: VersionRef,
        local_dir: Path,
        metadata: dict[str, Any],
        actor: str = "pipeline",
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """Upload the version's files (metadata.json last), then commit it as published; a
        version published already is left as it is (a retried task uploads nothing)."""
        state = self.state()
        if state.is_published(ref.model, ref.version):
            return self.metadata(ref)
        full = self.files.upload(ref, local_dir, metadata)
        entry = VersionEntry.of(ref.model, ref.version, full)

        def draft(state: RegistryState) -> Commit | None:
            if state.is_published(ref.model, ref.version):
                return None
            return Commit(
                0, "publish", "", actor, f"published {ref}", run_id=run_id, model=ref.model, versions=[entry]
            )

        self.commit(draft, state)
        return full

    # Aliases, the champion among them.

    def champion(self, state: RegistryState | None = None) -> ChampionPointer | None:
        return (state or self.state()).champion

    def champion_ref(self) -> VersionRef | None:
        champion = self.champion()
        return VersionRef(champion.model, champion.version) if champion else None

    def aliases(self, state: RegistryState | None = None) -> dict[str, ChampionPointer]:
        """Every alias set now, the champion first, then by name."""
        state = state or self.state()
        found = {name: s.pointer for name, s in state.aliases.items() if s.pointer is not None}
        return dict(sorted(found.items(), key=lambda item: (item[0] != CHAMPION, item[0])))

    # History.

    def event(self, name: str) -> HistoryEvent:
        return read_event(self.storage, name)

    def history_page(
        self,
        limit: int = DEFAULT_PAGE_SIZE,
        since: str | None = None,
        before: str | None = None,
        max_shards: int | None = None,
        state: RegistryState | None = None,
    ) -> HistoryPage:
        """The newest `limit` events older than `before` (a page's `older`) and not older than
        `since` (an ISO 8601 time), newest first: one shard per month until the page is full."""
        from mnist_pipeline.registry.history import page_of_history

        return page_of_history(self, state or self.state(), limit, since, before, max_shards)

    def shard(self, state: RegistryState, month: str) -> list[IndexedEvent]:
        return read_shard(self.storage, state, month)

    def alias_events(self, alias: str, limit: int | None = None) -> list[HistoryEvent]:
        """A non-champion alias's moves, newest first."""
        names = self.state().alias_events.get(alias, [])[::-1][:limit]
        return [self.event(name) for name in names]


def moved_since(registry: Registry, state: RegistryState, alias: str, based_on: int, since: str) -> None:
    """Refuse (`ConflictError`) when `alias` moved after commit `based_on`, saying to what, when and
    by whom; `since` names what the change was based on ("this run's gate")."""
    moved = state.alias(alias)
    if moved.moved_by <= based_on:
        return
    try:
        commit = registry.read_commit(moved.moved_by)
    except RegistryError:
        commit = None
    who = commit.actor if commit else "unknown"
    at = commit.time if commit else "an unknown time"
    kind = commit.kind if commit else "change"
    target = f"{moved.pointer.model}/{moved.pointer.version}" if moved.pointer else "nothing (cleared)"
    hint = "re-run the gate" if "gate" in since else "look again and decide anew"
    raise ConflictError(
        f"{alias} changed to {target} by {who} at {at} ({kind}, commit {moved.moved_by}) since {since}"
        f" (commit {based_on}); {hint}. Nothing was changed"
    )
