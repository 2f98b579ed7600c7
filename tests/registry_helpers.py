"""Helpers of the registry tests: versions published without training, events committed as a
gate or a person would, every event read back."""

from __future__ import annotations

import json
from pathlib import Path

from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.history import list_events
from mnist_pipeline.registry.records import AliasMove, ChampionPointer, Commit, HistoryEvent
from mnist_pipeline.registry.state import CHAMPION, RegistryState
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.storage import Storage

__all__ = ["list_events", "publish_version", "record_decision", "record_event", "snapshot"]


def publish_version(registry: Registry, folders: Path, i: int, model: str = "dnn") -> VersionRef:
    """Version `i` of `model`: a model file and a metrics.json, its test accuracy 0.9 + i/100."""
    ref = VersionRef(model, f"20260101T{i:06d}Z-{i:08x}")
    folder = folders / model / ref.version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.keras").write_bytes(f"weights {i}".encode())
    figures = {"accuracy": 0.9 + i / 100, "loss": 0.1}
    (folder / "metrics.json").write_text(json.dumps(figures | {"test_hash": "t" * 64}))
    registry.publish(ref, folder, {"metrics": figures, "data_hash": "d" * 64, "trained_at": f"#{i}"})
    return ref


def record_event(registry: Registry, event: HistoryEvent) -> HistoryEvent:
    """Commit `event` alone (no alias moves), as a gate that kept the champion would: for seeding
    a history to show."""
    commit, _ = registry.commit(
        lambda state: Commit(
            0,
            event.kind,
            "",
            event.trigger or "test",
            event.verdict.reason,
            run_id=event.run_id,
            model=event.model,
            event=event,
        )
    )
    assert commit is not None and commit.event is not None
    return commit.event


def snapshot(storage: Storage) -> dict[str, bytes]:
    return {key: storage.read_bytes(key) for key in storage.list_keys("")}


def record_decision(
    registry: Registry, event: HistoryEvent, champion: ChampionPointer | None = None
) -> HistoryEvent:
    """Commit `event` as a gate decision would: with `champion`, the pointer it makes the champion
    in the same commit (remembering the champion before it, for rollback)."""

    def draft(state: RegistryState) -> Commit:
        moves = []
        if champion is not None:
            moves = [AliasMove(CHAMPION, champion.succeeding(state.alias(CHAMPION).last_target))]
        return Commit(
            0,
            event.kind,
            "",
            event.trigger or "test",
            event.verdict.reason,
            based_on=state.number,
            run_id=event.run_id,
            model=event.model,
            event=event,
            moves=moves,
        )

    commit, _ = registry.commit(draft)
    assert commit is not None and commit.event is not None
    return commit.event


def record_alias_decision(
    registry: Registry, event: HistoryEvent, alias: str, pointer: ChampionPointer
) -> HistoryEvent:
    """Commit `event` as the gate decision of its run, pointing `alias` at `pointer` in the same
    commit, as a gate that asks for approval points `candidate` (the run's decision: what an
    approval is based on)."""

    def draft(state: RegistryState) -> Commit:
        return Commit(
            0,
            "gate",
            "",
            f"run {event.run_id}",
            event.verdict.reason,
            based_on=state.number,
            run_id=event.run_id,
            model=event.model,
            event=event,
            moves=[AliasMove(alias, pointer.succeeding(state.alias(alias).last_target))],
        )

    commit, _ = registry.commit(draft)
    assert commit is not None and commit.event is not None
    return commit.event
