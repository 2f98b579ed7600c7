"""What a person does to the registry by hand: promote a chosen version, roll back the champion.

Both move `champion.json` by compare-and-swap and leave an event in the history, like the gate.
"""

from __future__ import annotations

import json
from typing import Any

from mnist_pipeline.errors import RegistryError
from mnist_pipeline.history import record_event
from mnist_pipeline.pipeline import utc_now
from mnist_pipeline.promotion import MAX_ATTEMPTS
from mnist_pipeline.registry import ModelRegistry, VersionRef, brief, chain_pointer

__all__ = ["promote_version", "rollback"]


def promote_version(registry: ModelRegistry, ref: VersionRef, reason: str, who: str) -> dict[str, Any]:
    """Make `ref` the champion, bypassing the gate; its files must still match their hashes."""
    if not reason.strip():
        raise RegistryError("a manual promotion needs a --reason")
    registry.verified_file(ref, "model.keras")  # unknown or tampered versions stop here
    metadata, metrics = registry.metadata(ref), _metrics(registry, ref)
    pointer = {
        "model": ref.model,
        "version": ref.version,
        "uri": registry.uri(ref),
        "metrics": {"accuracy": metrics["accuracy"], "loss": metrics["loss"]},
        "test_hash": metrics.get("test_hash"),
        "data_hash": metadata.get("data_hash"),
        "promoted_at": utc_now(),
        "run_id": None,
        "verdict": f"manual promotion: {reason}",
        "forced": True,
    }
    previous = _swap(registry, lambda current: chain_pointer(pointer, current))
    return record_event(registry.storage, _event("manual-promotion", pointer, previous, who, reason))


def rollback(registry: ModelRegistry, who: str) -> dict[str, Any]:
    """Point back at the champion before the current one."""

    def previous_of(current: dict[str, Any] | None) -> dict[str, Any]:
        if current is None or not isinstance(current.get("previous"), dict):
            raise RegistryError("there is no previous champion to roll back to")
        return current["previous"] | {"restored_at": utc_now()}

    replaced = _swap(registry, previous_of)
    restored = registry.champion()
    return record_event(registry.storage, _event("rollback", restored, replaced, who, "rollback"))


def _swap(registry: ModelRegistry, make_pointer: Any) -> dict[str, Any] | None:
    """Compare-and-swap loop: build the new pointer from the current one until the swap holds."""
    for _ in range(MAX_ATTEMPTS):
        current, generation = registry.champion_versioned()
        if registry.swap_champion(make_pointer(current), generation):
            return current
    raise RegistryError(f"the champion kept moving; gave up after {MAX_ATTEMPTS} attempts")


def _metrics(registry: ModelRegistry, ref: VersionRef) -> dict[str, Any]:
    return json.loads(registry.verified_file(ref, "metrics.json"))


def _event(
    kind: str, pointer: dict[str, Any], previous: dict[str, Any] | None, who: str, reason: str
) -> dict:
    return {
        "kind": kind,
        "run_id": None,
        "trigger": who,
        "model": pointer["model"],
        "version": pointer["version"],
        "metrics": pointer.get("metrics"),
        "verdict": {"reason": reason, "promote": True, "forced": True},
        "promoted": True,
        "forced": True,
        "dry_run": False,
        "previous_champion": brief(previous),
    }
