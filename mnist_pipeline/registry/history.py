"""The registry's history: one object per gate decision, promotion or rollback, never rewritten."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

from mnist_pipeline.errors import RegistryError
from mnist_pipeline.registry.records import HistoryEvent
from mnist_pipeline.storage import Storage

__all__ = ["HISTORY_PREFIX", "find_promotion", "list_events", "record_event", "stamp"]

HISTORY_PREFIX = "mnist/history/"


def stamp(event: HistoryEvent) -> HistoryEvent:
    """`event` with its UTC time, to the microsecond (events of one second stay ordered)."""
    return replace(event, time=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def record_event(storage: Storage, event: HistoryEvent) -> HistoryEvent:
    """Append `event` (stamped with its time) as a new object; an existing object is never replaced."""
    stamped = stamp(event)
    compact = stamped.time.replace("-", "").replace(":", "").replace(".", "")
    key = f"{HISTORY_PREFIX}{compact}-{uuid.uuid4().hex[:8]}.json"
    payload = json.dumps(stamped.to_dict(), indent=2, sort_keys=True).encode()
    if not storage.write_if_generation(key, payload, "0"):
        raise RegistryError(f"history event {storage.uri(key)} already exists; refusing to overwrite it")
    return stamped


def list_events(storage: Storage) -> list[HistoryEvent]:
    """Every event, oldest first (keys start with their UTC time)."""
    return [
        HistoryEvent.from_dict(storage.read_json(key), storage.uri(key))
        for key in storage.list_keys(HISTORY_PREFIX)
        if key.endswith(".json")
    ]


def find_promotion(storage: Storage, run_id: str, model: str) -> HistoryEvent | None:
    """The event in which `run_id` promoted `model`, if it did: a retried task must not promote twice."""
    for event in reversed(list_events(storage)):
        if event.is_promotion_of(run_id, model):
            return event
    return None
