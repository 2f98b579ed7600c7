"""`registry verify` and `registry repair`: every view checked against, or rebuilt from, the log.

Both replay the whole log from commit 1 (no checkpoint trusted) and compare what it yields with
every view: the state view, each checkpoint, each alias's pointer (the champion's among them),
each history shard. `verify` reports the differences and the unreadable objects (a commit, a
version's metadata) not yet set aside. `repair` copies every unreadable or wrong object to
`mnist/quarantine/<time>/` with a report of why, then rewrites the views; commits stay where they
are (the log is never rewritten) and fold as nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mnist_pipeline.errors import MnistPipelineError
from mnist_pipeline.records import is_json_list, is_json_object
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.layout import (
    ALIASES_PREFIX,
    CHECKPOINTS_PREFIX,
    LOG_PREFIX,
    QUARANTINE_PREFIX,
    SHARDS_PREFIX,
    STATE_KEY,
)
from mnist_pipeline.registry.log import (
    UnreadableObject,
    checkpoint_key,
    commit_number,
    fold_commit,
    read_commits,
)
from mnist_pipeline.registry.records import IndexedEvent
from mnist_pipeline.registry.state import RegistryState, event_name
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.registry.views import alias_view_key, alias_view_payload, shard_key, shard_payload

__all__ = ["IntegrityReport", "repair", "verify"]


@dataclass
class IntegrityReport:
    """What a check found: views that disagree with the log, objects that cannot be read, and what
    a repair set aside and rewrote."""

    commits: int = 0
    differences: list[str] = field(default_factory=list[str])
    unreadable: list[str] = field(default_factory=list[str])
    set_aside: list[str] = field(default_factory=list[str])
    rewritten: list[str] = field(default_factory=list[str])

    @property
    def ok(self) -> bool:
        return not self.differences and not self.unreadable

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "commits": self.commits,
            "differences": self.differences,
            "unreadable": self.unreadable,
            "set_aside": self.set_aside,
            "rewritten": self.rewritten,
        }


@dataclass
class _Expected:
    """Every view's bytes as the log says they should be, and the objects found unreadable."""

    state: RegistryState
    views: dict[str, bytes]
    unreadable: dict[str, str]  # key -> why


def verify(registry: Registry) -> IntegrityReport:
    """Compare every view with the log; `ok` when they all agree and nothing unreadable is left
    that a repair has not set aside."""
    expected = _expected(registry)
    report = IntegrityReport(commits=expected.state.number)
    quarantined = _quarantined(registry)
    for key, why in sorted(expected.unreadable.items()):
        if key not in quarantined:
            report.unreadable.append(f"{key}: {why}")
    recent = {indexed.name for indexed in expected.state.recent}
    for key, wanted in sorted(expected.views.items()):
        problem = _disagreement(registry, key, wanted, recent)
        if problem:
            report.differences.append(f"{key}: {problem}")
    report.differences.extend(f"{key}: a view of nothing in the log" for key in _strays(registry, expected))
    return report


def repair(registry: Registry) -> IntegrityReport:
    """Set aside every unreadable or wrong object (copied under `mnist/quarantine/<time>/`, with a
    report), then rewrite every view from the log."""
    expected = _expected(registry)
    report = IntegrityReport(commits=expected.state.number)
    folder = f"{QUARANTINE_PREFIX}{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}/"
    recent = {indexed.name for indexed in expected.state.recent}
    wrong = {
        key: problem
        for key, wanted in expected.views.items()
        if (problem := _disagreement(registry, key, wanted, recent))
    }
    strays = _strays(registry, expected)
    reasons = {**expected.unreadable, **wrong, **dict.fromkeys(strays, "a view of nothing in the log")}
    for key, why in sorted(reasons.items()):
        _set_aside(registry, key, why, folder, report)
    for key in sorted(wrong):
        registry.storage.write_bytes(key, expected.views[key])
        report.rewritten.append(key)
    for key in strays:
        registry.storage.delete(key)
    if report.set_aside:
        registry.storage.write_json(f"{folder}report.json", {"set_aside": report.set_aside})
    return report


def _expected(registry: Registry) -> _Expected:
    """Replay the whole log, keeping the state at every checkpoint, and derive every view."""
    storage = registry.storage
    keys = storage.list_keys(LOG_PREFIX)
    numbers = sorted(n for n in (commit_number(key) for key in keys) if n is not None)
    checkpoints = {n for n in (commit_number(key, CHECKPOINTS_PREFIX) for key in keys) if n is not None}
    state = RegistryState()
    views: dict[str, bytes] = {}
    unreadable: dict[str, str] = {}
    events: dict[str, IndexedEvent] = {}
    every = list(range(1, (numbers[-1] if numbers else 0) + 1))
    for number, data in zip(every, read_commits(storage, every), strict=True):
        folded = fold_commit(state, number, data, absent="missing from the log")
        if isinstance(folded, UnreadableObject):
            unreadable[folded.key] = folded.why
        else:
            for index, event in enumerate(folded.events()):
                name = event_name(event.time, number, index)
                events[name] = IndexedEvent(name, event)
        if number in checkpoints:
            views[checkpoint_key(number)] = state.to_json()
    views[STATE_KEY] = state.to_json()
    for alias, alias_state in state.aliases.items():
        views[alias_view_key(alias)] = alias_view_payload(alias_state)
    for month, names in state.months.items():
        views[shard_key(month)] = shard_payload(
            [events[name] for name in names if name in events], state.number
        )
    unreadable.update(_unreadable_metadata(registry, state))
    return _Expected(state, views, unreadable)


def _unreadable_metadata(registry: Registry, state: RegistryState) -> dict[str, str]:
    found: dict[str, str] = {}
    for model, version in sorted(state.versions):
        ref = VersionRef(model, version)
        try:
            registry.metadata(ref)
        except MnistPipelineError as exc:
            found[f"{ref.prefix}/metadata.json"] = str(exc)
    return found


def _disagreement(registry: Registry, key: str, wanted: bytes, recent: set[str]) -> str | None:
    data = registry.storage.read_versioned(key)[0]
    if data is None:
        return None if key.startswith(SHARDS_PREFIX) else "missing"  # shards are written as they fill
    try:
        stored, expected = json.loads(data), json.loads(wanted)
    except ValueError:
        return "unreadable"
    if key.startswith(SHARDS_PREFIX):
        return _shard_disagreement(stored, expected, recent)
    return None if stored == expected else "differs from the log"


def _shard_disagreement(stored: Any, expected: dict[str, Any], recent: set[str]) -> str | None:
    """A shard agrees when every event it holds is the log's, and it lacks only events the state
    still holds among its newest (they are written into the shard later)."""
    if not is_json_object(stored) or not is_json_list(stored.get("events")):
        return "unreadable"
    wanted = {item["name"]: item for item in expected["events"]}
    held = {item.get("name"): item for item in stored["events"] if is_json_object(item)}
    if any(wanted.get(name) != item for name, item in held.items()):
        return "differs from the log"
    lacking = set(wanted) - set(held) - recent
    return f"lacks {len(lacking)} events of the log" if lacking else None


def _strays(registry: Registry, expected: _Expected) -> list[str]:
    """Alias views and shards that no alias or month of the log explains."""
    found = [*registry.storage.list_keys(ALIASES_PREFIX), *registry.storage.list_keys(SHARDS_PREFIX)]
    return [key for key in found if key not in expected.views]


def _set_aside(registry: Registry, key: str, why: str, folder: str, report: IntegrityReport) -> None:
    """Copy the object (if it exists) to the quarantine folder and note why."""
    data = registry.storage.read_versioned(key)[0]
    if data is None:
        return  # a missing view: written anew, nothing to keep
    registry.storage.write_bytes(f"{folder}{key}", data)
    report.set_aside.append(f"{key}: {why}")


def _quarantined(registry: Registry) -> set[str]:
    """The registry keys that a repair has set aside (any time)."""
    found: set[str] = set()
    for key in registry.storage.list_keys(QUARANTINE_PREFIX):
        rest = key[len(QUARANTINE_PREFIX) :].split("/", 1)
        if len(rest) == 2:
            found.add(rest[1])
    return found
