"""What a person does to the champion by hand: promote a chosen version, roll back. Each is one
commit of the log (`aliases`), refused if the champion moved since the state it was based on."""

from __future__ import annotations

from mnist_pipeline.registry.aliases import rollback_alias, set_alias
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.records import HistoryEvent
from mnist_pipeline.registry.state import CHAMPION
from mnist_pipeline.registry.store import VersionRef

__all__ = ["promote_version", "rollback"]


def promote_version(
    registry: Registry,
    ref: VersionRef,
    reason: str,
    who: str,
    *,
    run_id: str | None = None,
    metrics: dict[str, float] | None = None,
    based_on: int | None = None,
    request_id: str | None = None,
) -> HistoryEvent:
    """Make `ref` the champion, bypassing the gate; its files must still match their hashes.
    `metrics`: the figures the pointer quotes (by default the version's test accuracy and loss)."""
    return set_alias(
        registry,
        CHAMPION,
        ref,
        who,
        reason,
        run_id=run_id,
        metrics=metrics,
        based_on=based_on,
        request_id=request_id,
    )


def rollback(
    registry: Registry, who: str, *, based_on: int | None = None, request_id: str | None = None
) -> HistoryEvent:
    """Point back at the champion before the current one."""
    return rollback_alias(registry, CHAMPION, who, based_on=based_on, request_id=request_id)
