"""What a person does to the registry by hand: promote a chosen version, roll back the champion.

Both move `champion.json` by compare-and-swap and leave an event in the history, like the gate.
"""

from __future__ import annotations

import json
from dataclasses import replace

from mnist_pipeline.errors import RegistryError
from mnist_pipeline.registry.gate import Verdict
from mnist_pipeline.registry.history import record_event
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent, VersionSummary
from mnist_pipeline.registry.store import ModelRegistry, VersionRef
from mnist_pipeline.runs import utc_now

__all__ = ["promote_version", "rollback"]


def promote_version(
    registry: ModelRegistry,
    ref: VersionRef,
    reason: str,
    who: str,
    *,
    run_id: str | None = None,
    metrics: dict[str, float] | None = None,
) -> HistoryEvent:
    """Make `ref` the champion, bypassing the gate; its files must still match their hashes.
    `run_id`: the run that asked for it, if any; `metrics`: the figures the pointer quotes (by
    default the version's test accuracy and loss)."""
    if not reason.strip():
        raise RegistryError("a manual promotion needs a --reason")
    registry.verified_file(ref, "model.keras")  # unknown or tampered versions stop here
    measured = json.loads(registry.verified_file(ref, "metrics.json"))
    if metrics is None:
        metrics = {"accuracy": measured["accuracy"], "loss": measured["loss"]}
    pointer = ChampionPointer.for_version(
        VersionSummary(ref.model, ref.version, metrics),
        registry.uri(ref),
        utc_now(),
        f"manual promotion: {reason}",
        forced=True,
        run_id=run_id,
        test_hash=measured.get("test_hash"),
        data_hash=registry.metadata(ref).get("data_hash"),
        set_by=who,
    )
    previous = registry.move_champion(lambda current: (pointer.succeeding(current), current))
    event = _event("manual-promotion", pointer, previous, who, reason)
    return record_event(registry.storage, replace(event, run_id=run_id))


def rollback(registry: ModelRegistry, who: str) -> HistoryEvent:
    """Point back at the champion before the current one."""

    def previous_of(current: ChampionPointer | None) -> tuple[ChampionPointer, tuple[ChampionPointer, ...]]:
        if current is None or current.previous is None:
            raise RegistryError("there is no previous champion to roll back to")
        restored = current.previous.restored(utc_now())
        return restored, (restored, current)

    restored, replaced = registry.move_champion(previous_of)
    return record_event(registry.storage, _event("rollback", restored, replaced, who, "rollback"))


def _event(
    kind: str, pointer: ChampionPointer, previous: ChampionPointer | None, who: str, reason: str
) -> HistoryEvent:
    return HistoryEvent(
        kind=kind,
        trigger=who,
        model=pointer.model,
        version=pointer.version,
        metrics=dict(pointer.metrics),
        verdict=Verdict(promote=True, reason=reason, forced=True),
        promoted=True,
        forced=True,
        previous_champion=previous.summary() if previous else None,
    )
