"""Helpers of the registry tests: versions published without training (numbered, or with a given
accuracy and per-class recall), events committed as a gate or a person would, every event read
back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.history import list_events
from mnist_pipeline.registry.records import AliasMove, ChampionPointer, Commit, HistoryEvent
from mnist_pipeline.registry.state import CHAMPION, RegistryState
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.storage import Storage

__all__ = [
    "headline",
    "list_events",
    "publish_scored_version",
    "publish_version",
    "record_event",
    "snapshot",
    "upload_version",
]


def upload_version(registry: Registry, folders: Path, i: int, model: str = "dnn") -> VersionRef:
    """Version `i` of `model`'s files, uploaded as a registry before the log held them: a model file
    and a metrics.json, its test accuracy 0.9 + i/100; no commit."""
    ref, folder, metadata = _stage(folders, i, model)
    registry.files.upload(ref, folder, metadata)
    return ref


def publish_version(registry: Registry, folders: Path, i: int, model: str = "dnn") -> VersionRef:
    """Version `i` of `model`, uploaded as `upload_version` does, then committed as published."""
    ref, folder, metadata = _stage(folders, i, model)
    registry.publish(ref, folder, metadata)
    return ref


def headline(accuracy: float) -> dict[str, float]:
    """A version's test accuracy and loss, as pointers and events quote them."""
    return {"accuracy": accuracy, "loss": round(1 - accuracy, 4)}


def publish_scored_version(registry: Registry, ref: VersionRef, accuracy: float, folders: Path) -> None:
    """A version with a metrics.json whose recall of digit d is `accuracy` - d/1000."""
    folder = folders / f"{ref.model}-{ref.version}"
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"weights")
    per_class = {
        str(d): {"precision": accuracy, "recall": accuracy - d / 1000, "support": 1000} for d in range(10)
    }
    (folder / "metrics.json").write_text(json.dumps(headline(accuracy) | {"per_class": per_class}))
    identity = {"data_hash": "d" * 64, "airflow_run_id": f"run-{ref.model}", "trained_at": ref.version[:16]}
    registry.publish(ref, folder, {"metrics": headline(accuracy), **identity})


def _stage(folders: Path, i: int, model: str) -> tuple[VersionRef, Path, dict[str, Any]]:
    ref = VersionRef(model, f"20260101T{i:06d}Z-{i:08x}")
    folder = folders / model / ref.version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.keras").write_bytes(f"weights {i}".encode())
    figures = {"accuracy": 0.9 + i / 100, "loss": 0.1}
    (folder / "metrics.json").write_text(json.dumps(figures | {"test_hash": "t" * 64}))
    return ref, folder, {"metrics": figures, "data_hash": "d" * 64, "trained_at": f"#{i}"}


def record_event(
    registry: Registry,
    event: HistoryEvent,
    pointer: ChampionPointer | None = None,
    alias: str = CHAMPION,
    actor: str | None = None,
) -> HistoryEvent:
    """Commit `event` as a gate decision would: alone (a kept champion), or with `pointer`, which
    `alias` (the champion by default) points at in the same commit, remembering its target before
    (for rollback). For seeding a history to show, or a decision for an approval to answer."""

    def draft(state: RegistryState) -> Commit:
        moves = []
        if pointer is not None:
            moves = [AliasMove(alias, pointer.succeeding(state.alias(alias).last_target))]
        return Commit(
            0,
            event.kind,
            "",
            actor or event.trigger or "test",
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


def snapshot(storage: Storage) -> dict[str, bytes]:
    return {key: storage.read_bytes(key) for key in storage.list_keys("")}
