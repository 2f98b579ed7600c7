"""Human-readable results for the terminal: the newest run's models side by side, the champion,
the registry's versions, its history and its aliases."""

from __future__ import annotations

from typing import Any

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.errors import RegistryError, StorageError
from mnist_pipeline.registry.client import DEFAULT_PAGE_SIZE, Registry
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.storage import Storage

__all__ = [
    "latest_promotion",
    "render_alias_history",
    "render_alias_move",
    "render_aliases",
    "render_history",
    "render_summary",
    "render_versions",
    "version_details",
]


def latest_promotion(artifacts: Storage) -> dict[str, Any]:
    decisions = [
        artifacts.read_json(key) for key in artifacts.list_keys("runs/") if key.endswith("/promotion.json")
    ]
    if not decisions:
        raise StorageError(f"no finished run under {artifacts.uri('runs/')}")
    return max(decisions, key=lambda decision: decision["time"])


def render_summary(artifacts: Storage, settings: PipelineSettings) -> str:
    decision = latest_promotion(artifacts)
    lines = [
        f"run {decision['run_id']}",
        f"{'model':<8} {'test accuracy':>13} {'test loss':>9} {'epochs':>6} {'train s':>8}",
    ]
    for row in decision["candidates"]:
        lines.append(
            f"{row['model']:<8} {row['accuracy']:>13.4f} {row['loss']:>9.4f}"
            f" {row['epochs_run']:>6} {row['train_seconds']:>8.1f}"
        )
    lines += [_reused(row) for row in decision["candidates"] if row.get("reused_from")]
    verdict = "promoted" if decision["promoted"] else "not promoted"
    lines.append(f"challenger {decision['model']}: {verdict} ({decision['verdict']['reason']})")
    if decision.get("why_not_promoted"):  # absent from runs recorded before it existed
        lines.append(f"nothing promoted: {decision['why_not_promoted']}")
    champion = Registry.from_settings(settings).champion()
    if champion:
        lines.append(
            f"champion {champion.model}/{champion.version}"
            f" accuracy {champion.metrics['accuracy']:.4f} at {champion.uri}"
        )
    return "\n".join(lines)


def _reused(row: dict[str, Any]) -> str:
    """A model the step cache reused: the run it trained in (its train seconds are that run's)."""
    origin = row["reused_from"]
    return (
        f"{row['model']}: reused from run {origin.get('run_id')}, not trained again (trained there at"
        f" {origin.get('trained_at')}; cache key {str(origin.get('cache_key'))[:12]})"
    )


def render_versions(registry: Registry) -> str:
    state = registry.state()
    champion = registry.champion(state)
    champion_ref = VersionRef(champion.model, champion.version) if champion else None
    lines = [f"  {'model/version':<36} {'accuracy':>8}  trained at"]
    for entry in registry.version_entries(state):
        ref = VersionRef(entry.model, entry.version)
        mark = "*" if ref == champion_ref else " "
        shown = f"{entry.accuracy:.4f}" if entry.accuracy is not None else "?"
        lines.append(f"{mark} {ref!s:<36} {shown:>8}  {entry.trained_at or '?'}")
    return "\n".join(lines) if len(lines) > 1 else "no published versions"


def version_details(registry: Registry, ref: VersionRef | None) -> dict[str, Any]:
    champion = registry.champion_ref()
    if ref is None:
        if champion is None:
            raise RegistryError("the registry has no champion yet; name a MODEL/VERSION")
        ref = champion
    return registry.metadata(ref) | {"uri": registry.uri(ref), "champion": ref == champion}


def render_history(
    registry: Registry,
    limit: int = DEFAULT_PAGE_SIZE,
    since: str | None = None,
    before: str | None = None,
) -> str:
    """The newest `limit` events (not older than `since`, older than `before`), newest first."""
    page = registry.history_page(limit, since=since, before=before)
    lines = []
    for event in page.events:
        verdict = "PROMOTED" if event.promoted else "kept"
        target = f"{event.model}/{event.version or '-'}"
        lines.append(f"{event.time[:19]}  {event.kind:<16} {verdict:<8} {target:<36} {event.verdict.reason}")
    if page.older:
        lines.append(f"(older events: --before {page.older})")
    return "\n".join(lines) or "no history yet"


def render_aliases(aliases: dict[str, ChampionPointer]) -> str:
    """One line per alias set now: its target, since when, who set it and why."""
    lines = [f"{'alias':<16} {'model/version':<36} {'set at':<27} by: reason"]
    for alias, pointer in aliases.items():
        target = f"{pointer.model}/{pointer.version}"
        lines.append(
            f"{alias:<16} {target:<36} {pointer.moved_at:<27} {pointer.mover or '?'}: {pointer.verdict}"
        )
    return "\n".join(lines) if len(lines) > 1 else "no aliases set"


def render_alias_history(alias: str, events: list[HistoryEvent]) -> str:
    """An alias's moves, newest first: what it pointed at before and after, who moved it and why."""
    lines = [f"{'time (UTC)':<19}  {'kind':<16} {'model/version':<36} {'was':<36} by: reason"]
    for event in events:
        target = f"{event.model}/{event.version or '-'}"
        lines.append(
            f"{event.time[:19]:<19}  {event.kind:<16} {target:<36} {_was(event):<36}"
            f" {event.trigger or '?'}: {event.verdict.reason}"
        )
    return "\n".join(lines) if len(lines) > 1 else f"alias {alias!r} has no history yet"


def render_alias_move(alias: str, event: HistoryEvent | None) -> str:
    """What one `alias set | clear | rollback` did."""
    if event is None:
        return f"alias {alias!r} was not set: nothing to clear"
    if event.kind == "alias-cleared":
        return f"alias {alias!r} cleared (was {_was(event)}) by {event.trigger}: {event.verdict.reason}"
    return (
        f"alias {alias!r} -> {event.model}/{event.version} (was {_was(event)}) by {event.trigger}"
        f" [{event.kind}]: {event.verdict.reason}"
    )


def _was(event: HistoryEvent) -> str:
    before = event.previous_champion
    return f"{before.model}/{before.version}" if before else "-"
