"""The registry's history: one object per gate decision, promotion or rollback, never rewritten."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from mnist_pipeline.errors import RegistryError
from mnist_pipeline.storage import Storage

__all__ = ["HISTORY_PREFIX", "find_promotion", "list_events", "record_event", "stamp"]

HISTORY_PREFIX = "mnist/history/"


def stamp(event: dict[str, Any]) -> dict[str, Any]:
    """`event` with its UTC time, to the microsecond (events of one second stay ordered)."""
    return {**event, "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}


def record_event(storage: Storage, event: dict[str, Any]) -> dict[str, Any]:
    """Append `event` (stamped with its time) as a new object; an existing object is never replaced."""
    stamped = stamp(event)
    compact = stamped["time"].replace("-", "").replace(":", "").replace(".", "")
    key = f"{HISTORY_PREFIX}{compact}-{uuid.uuid4().hex[:8]}.json"
    if not storage.write_if_generation(key, json.dumps(stamped, indent=2, sort_keys=True).encode(), "0"):
        raise RegistryError(f"history event {storage.uri(key)} already exists; refusing to overwrite it")
    return stamped


def list_events(storage: Storage) -> list[dict[str, Any]]:
    """Every event, oldest first (keys start with their UTC time)."""
    return [storage.read_json(key) for key in storage.list_keys(HISTORY_PREFIX) if key.endswith(".json")]


def find_promotion(storage: Storage, run_id: str, model: str) -> dict[str, Any] | None:
    """The event in which `run_id` promoted `model`, if it did: a retried task must not promote twice."""
    for event in reversed(list_events(storage)):
        if event.get("run_id") == run_id and event.get("model") == model and event.get("promoted"):
            return event
    return None
