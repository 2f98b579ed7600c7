"""The registry's typed records: the commit (`Commit`, the one truth: `log`), and what commits
carry and views show: the champion (or alias) pointer, the tombstone of a cleared alias, the
history event, a published version's summary.

All are stored as JSON and read back through `from_dict`, which names the object and the field
when a stored object is malformed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from mnist_pipeline.records import Record, is_json_object
from mnist_pipeline.registry.gate import Verdict

__all__ = [
    "POINTER_HISTORY_DEPTH",
    "AliasMove",
    "ChampionPointer",
    "Cleared",
    "Commit",
    "HistoryEvent",
    "IndexedEvent",
    "Promoter",
    "VersionEntry",
    "VersionSummary",
]

POINTER_HISTORY_DEPTH = 10  # how many earlier champions a pointer remembers, for rollback


@dataclass(frozen=True)
class VersionSummary(Record):
    """A version's identity and headline figures, as history events quote the champion."""

    model: str
    version: str
    metrics: dict[str, float] | None = None


@dataclass(frozen=True)
class ChampionPointer(Record):
    """`mnist/champion.json`: the version that serves, why, and the champions before it. Every other
    alias (`registry.aliases`) is a pointer of this type too, its reason in `verdict`."""

    model: str
    version: str
    uri: str
    metrics: dict[str, float]
    promoted_at: str
    verdict: str
    forced: bool = False
    run_id: str | None = None
    test_hash: str | None = None  # the test set the metrics were measured on
    data_hash: str | None = None
    restored_at: str | None = None  # set when a rollback brought this pointer back
    set_by: str | None = None  # who moved it by hand (cli:<user>); the gate's pointers name their run
    previous: ChampionPointer | None = None

    @classmethod
    def for_version(
        cls,
        summary: VersionSummary,
        uri: str,
        at: str,
        verdict: str,
        *,
        forced: bool = False,
        run_id: str | None = None,
        test_hash: str | None = None,
        data_hash: str | None = None,
        set_by: str | None = None,
    ) -> ChampionPointer:
        """A pointer at a published version, as a gate decision or a person makes one."""
        return cls(
            model=summary.model,
            version=summary.version,
            uri=uri,
            metrics=dict(summary.metrics or {}),
            promoted_at=at,
            verdict=verdict,
            forced=forced,
            run_id=run_id,
            test_hash=test_hash,
            data_hash=data_hash,
            set_by=set_by,
        )

    def summary(self) -> VersionSummary:
        return VersionSummary(self.model, self.version, dict(self.metrics))

    @property
    def moved_at(self) -> str:
        """When it last came to point where it points: set, or brought back by a rollback."""
        return self.restored_at or self.promoted_at

    @property
    def mover(self) -> str | None:
        """Who set it: a person's name, else the run whose gate decision did."""
        return self.set_by or (f"run {self.run_id}" if self.run_id else None)

    def is_version(self, model: str, version: str) -> bool:
        return (self.model, self.version) == (model, version)

    def succeeding(self, current: ChampionPointer | None) -> ChampionPointer:
        """This pointer remembering `current` and its predecessors, up to a fixed depth, for rollback."""
        return replace(self, previous=_trimmed(current, POINTER_HISTORY_DEPTH))

    def restored(self, at: str) -> ChampionPointer:
        """This pointer brought back by a rollback."""
        return replace(self, restored_at=at)


def _trimmed(pointer: ChampionPointer | None, depth: int) -> ChampionPointer | None:
    if pointer is None or depth <= 0:
        return None
    return replace(pointer, previous=_trimmed(pointer.previous, depth - 1))


@dataclass(frozen=True)
class HistoryEvent(Record):
    """One gate decision, manual promotion or rollback, as `mnist/history/` keeps it for good; or
    one move of another alias, as `mnist/alias-history/<alias>/` keeps it."""

    kind: str  # gate, manual-promotion, rollback, approval; alias-set, alias-cleared, alias-rollback
    model: str
    verdict: Verdict
    promoted: bool
    run_id: str | None = None
    trigger: str | None = None  # who or what started it: scheduled, manual, asset_triggered, cli:<user>
    version: str | None = None
    metrics: dict[str, float] | None = None
    forced: bool = False
    dry_run: bool = False
    previous_champion: VersionSummary | None = None
    time: str = ""  # UTC, to the microsecond; set when the event is recorded
    alias: str | None = None  # the alias it moved; None: the champion (every event before aliases)
    # A person's sign-off (`approval`): pending (the gate allowed, the version is the candidate),
    # approved, rejected or timed-out; None where none was asked for.
    approval: str | None = None
    approver: str | None = None  # who answered (the Airflow user); None: nobody, before the timeout

    @property
    def reason(self) -> str:
        reason = self.verdict.reason
        return f"{reason}; blocked: {self.verdict.blocked}" if self.verdict.blocked else reason

    def is_promotion_of(self, run_id: str, model: str) -> bool:
        return self.promoted and self.run_id == run_id and self.model == model


@dataclass(frozen=True)
class Cleared(Record):
    """What a cleared alias points at: nothing; when, by whom, why, and the target it cleared
    (a rollback brings that back)."""

    cleared_at: str
    reason: str
    cleared_by: str | None = None
    previous: ChampionPointer | None = None


@dataclass(frozen=True)
class AliasMove(Record):
    """One alias moved by a commit: to `pointer`, or cleared (`cleared`)."""

    alias: str
    pointer: ChampionPointer | None = None
    cleared: Cleared | None = None


@dataclass(frozen=True)
class Promoter(Record):
    """The event that promoted a version, as the version's entry remembers it: `key` names the
    event (`IndexedEvent.name`)."""

    key: str
    kind: str
    reason: str


@dataclass(frozen=True)
class VersionEntry(Record):
    """One published version, as the overview lists it."""

    model: str
    version: str
    accuracy: float | None = None
    loss: float | None = None
    trained_at: str | None = None
    promoted_by: Promoter | None = None
    # Where a person's sign-off stands: pending (the candidate), approved, rejected or timed-out;
    # None where none was asked for.
    approval: str | None = None

    @classmethod
    def of(cls, model: str, version: str, metadata: dict[str, Any]) -> VersionEntry:
        metrics = metadata.get("metrics")
        if not is_json_object(metrics):
            metrics = {}
        trained_at = metadata.get("trained_at")
        return cls(
            model,
            version,
            _number(metrics.get("accuracy")),
            _number(metrics.get("loss")),
            None if trained_at is None else str(trained_at),
        )

    @property
    def ref(self) -> tuple[str, str]:
        return (self.model, self.version)

    def credited(self, promoter: Promoter) -> VersionEntry:
        """This entry, promoted by `promoter` unless an earlier decision already did (the gate's
        before any manual one)."""
        known = self.promoted_by
        if known is not None and (known.kind != "gate", known.key) <= (promoter.kind != "gate", promoter.key):
            return self
        return replace(self, promoted_by=promoter)


@dataclass(frozen=True)
class IndexedEvent(Record):
    """A history event with its name: `<UTC time>-<commit number>-<index>`, which sorts as the
    log does (commit times never go backwards) and locates the event in its commit."""

    name: str
    event: HistoryEvent

    @property
    def month(self) -> str:
        return self.name[:6]


@dataclass(frozen=True)
class Commit(Record):
    """One numbered entry of the registry's log (`log`): the only truth. Written once, create-if-
    absent; everything else the registry shows is derived from the commits.

    kind: publish, gate, approval, promote, rollback, alias-set, alias-cleared, alias-rollback,
    migrate. `based_on`: the commit whose state the change was decided on (a gate's champion, an
    approval's gate decision). `event`: what the history shows of it (None: a publish).
    `migrated`: a migrate commit's events from the registry before the log.
    """

    number: int
    kind: str
    time: str
    actor: str
    reason: str
    based_on: int | None = None
    run_id: str | None = None
    try_number: int | None = None
    model: str | None = None
    request_id: str | None = None  # the caller's idempotency key: a retry finds its commit by it
    event: HistoryEvent | None = None
    moves: list[AliasMove] = field(default_factory=list[AliasMove])
    versions: list[VersionEntry] = field(default_factory=list[VersionEntry])
    migrated: list[HistoryEvent] = field(default_factory=list[HistoryEvent])
    set_aside: list[str] = field(default_factory=list[str])  # a migration's unreadable objects, with why

    def events(self) -> list[HistoryEvent]:
        """The history events this commit adds, in order."""
        return [*self.migrated, *([self.event] if self.event is not None else [])]


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
