"""The registry's state: what its log (`log`) says, folded commit by commit.

`RegistryState.apply(commit)` is the one place a commit takes effect: every alias's target (the
champion among them), every published version, each run's gate decision and answer, and where
each history event is (by month and by alias). Checkpoints and `mnist/index/state.json` are this
state, serialized (`to_json`); parsing one (`from_json`) refuses anything malformed, so a reader
falls back on the log instead of trusting it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from mnist_pipeline.errors import MnistPipelineError, RegistryError
from mnist_pipeline.records import is_json_object
from mnist_pipeline.registry.records import (
    ChampionPointer,
    Cleared,
    Commit,
    IndexedEvent,
    Promoter,
    VersionEntry,
)

__all__ = [
    "CHAMPION",
    "RECENT_EVENTS",
    "STATE_FORMAT",
    "AliasState",
    "RegistryState",
    "compact_time",
    "event_name",
    "next_time",
    "parse_event_name",
]

CHAMPION = "champion"
# 2: versions remember where their approval stands; an older state is rebuilt from the log.
STATE_FORMAT = 2
RECENT_EVENTS = 64  # the newest events, kept in the state: what shards may still lack (`views`)
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True)
class AliasState:
    """An alias's target (None: never set, or cleared), its clearing, and the commit that last
    moved it (0: never moved)."""

    pointer: ChampionPointer | None = None
    cleared: Cleared | None = None
    moved_by: int = 0

    @property
    def last_target(self) -> ChampionPointer | None:
        """What a new pointer remembers: the current target, else the one cleared."""
        return self.pointer or (self.cleared.previous if self.cleared else None)

    @property
    def earlier_target(self) -> ChampionPointer | None:
        """Where a rollback goes: the target before the current one, or the one cleared."""
        return self.pointer.previous if self.pointer else self.last_target

    def to_dict(self) -> dict[str, Any]:
        return {
            "pointer": self.pointer.to_dict() if self.pointer else None,
            "cleared": self.cleared.to_dict() if self.cleared else None,
            "moved_by": self.moved_by,
        }

    @classmethod
    def from_dict(cls, payload: Any, what: str) -> AliasState:
        if not is_json_object(payload) or not isinstance(payload.get("moved_by"), int):
            raise RegistryError(f"{what}: expected an alias state")
        pointer, cleared = payload.get("pointer"), payload.get("cleared")
        return cls(
            ChampionPointer.from_dict(pointer, f"{what}: pointer") if pointer is not None else None,
            Cleared.from_dict(cleared, f"{what}: cleared") if cleared is not None else None,
            payload["moved_by"],
        )


def _run_key(run_id: str, model: str) -> str:
    return f"{run_id}\n{model}"


@dataclass
class RegistryState:
    """The registry as of commit `number` (0: an empty log)."""

    number: int = 0
    last_time: str = ""
    aliases: dict[str, AliasState] = field(default_factory=dict[str, AliasState])
    versions: dict[tuple[str, str], VersionEntry] = field(default_factory=dict[tuple[str, str], VersionEntry])
    decisions: dict[str, int] = field(default_factory=dict[str, int])  # run and model -> its gate commit
    answers: dict[str, int] = field(default_factory=dict[str, int])  # run and model -> its approval commit
    # YYYYMM -> event names, oldest first
    months: dict[str, list[str]] = field(default_factory=dict[str, list[str]])
    alias_events: dict[str, list[str]] = field(default_factory=dict[str, list[str]])  # alias -> its events
    requests: dict[str, int] = field(default_factory=dict[str, int])  # a commit's request id -> its number
    recent: list[IndexedEvent] = field(default_factory=list[IndexedEvent])  # the newest events, oldest first
    unreadable: list[str] = field(default_factory=list[str])  # commits folded as nothing: key and why

    # Reading.

    @property
    def champion(self) -> ChampionPointer | None:
        return self.alias(CHAMPION).pointer

    def alias(self, name: str) -> AliasState:
        return self.aliases.get(name, AliasState())

    def decision_of(self, run_id: str, model: str) -> int | None:
        """The commit of the run's gate decision on `model`, if it made one."""
        return self.decisions.get(_run_key(run_id, model))

    def answer_of(self, run_id: str, model: str) -> int | None:
        """The commit of the approval answer (approved, rejected, timed out) to the run's decision."""
        return self.answers.get(_run_key(run_id, model))

    def is_published(self, model: str, version: str) -> bool:
        return (model, version) in self.versions

    def event_names(self) -> list[str]:
        return sorted(name for names in self.months.values() for name in names)

    # Folding.

    def copy(self) -> RegistryState:
        return RegistryState(
            self.number,
            self.last_time,
            dict(self.aliases),
            dict(self.versions),
            dict(self.decisions),
            dict(self.answers),
            {month: list(names) for month, names in self.months.items()},
            {alias: list(names) for alias, names in self.alias_events.items()},
            dict(self.requests),
            list(self.recent),
            list(self.unreadable),
        )

    def apply(self, commit: Commit) -> None:
        """Take `commit` (the next number) into this state."""
        if commit.number != self.number + 1:
            raise RegistryError(f"commit {commit.number} cannot follow commit {self.number}")
        self.number, self.last_time = commit.number, max(self.last_time, commit.time)
        for entry in commit.versions:
            known = self.versions.get(entry.ref)
            self.versions[entry.ref] = entry if known is None else known
        for move in commit.moves:
            self.aliases[move.alias] = AliasState(move.pointer, move.cleared, commit.number)
        if commit.request_id:
            self.requests[commit.request_id] = commit.number
        if commit.run_id and commit.model and commit.kind == "gate":
            self.decisions[_run_key(commit.run_id, commit.model)] = commit.number
        if commit.run_id and commit.model and commit.kind == "approval":
            self.answers[_run_key(commit.run_id, commit.model)] = commit.number
        for index, event in enumerate(commit.events()):
            self._add_event(IndexedEvent(event_name(event.time, commit.number, index), event))
        if commit.event is not None:  # a gate or an answer moving the candidate: its history too
            name = event_name(commit.event.time, commit.number, len(commit.migrated))
            for move in commit.moves:
                if move.alias not in (CHAMPION, commit.event.alias):
                    self.alias_events.setdefault(move.alias, []).append(name)

    def skip(self, number: int, why: str) -> None:
        """Fold an unreadable commit as nothing, remembering it."""
        self.number = number
        self.unreadable.append(why)

    def _add_event(self, indexed: IndexedEvent) -> None:
        self.recent = [*self.recent, indexed][-RECENT_EVENTS:]
        self.months.setdefault(indexed.month, []).append(indexed.name)
        self.months[indexed.month].sort()
        event = indexed.event
        ref = (event.model, event.version or "")
        if event.alias is None and event.approval and ref in self.versions:
            self.versions[ref] = replace(self.versions[ref], approval=event.approval)
        if event.alias is not None:
            self.alias_events.setdefault(event.alias, []).append(indexed.name)
        elif event.promoted and ref in self.versions:
            self.versions[ref] = self.versions[ref].credited(
                Promoter(indexed.name, event.kind, event.verdict.reason)
            )

    # Serializing: checkpoints and the state view.

    def to_json(self) -> bytes:
        payload = {
            "format": STATE_FORMAT,
            "number": self.number,
            "last_time": self.last_time,
            "aliases": {name: state.to_dict() for name, state in sorted(self.aliases.items())},
            "versions": [self.versions[ref].to_dict() for ref in sorted(self.versions)],
            "decisions": self.decisions,
            "answers": self.answers,
            "months": self.months,
            "alias_events": self.alias_events,
            "requests": self.requests,
            "recent": [indexed.to_dict() for indexed in self.recent],
            "unreadable": self.unreadable,
        }
        return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, what: str) -> RegistryState:
        """A serialized state; anything malformed raises `RegistryError` naming `what`."""
        try:
            payload = json.loads(data)
            if not is_json_object(payload) or payload.get("format") != STATE_FORMAT:
                raise RegistryError(f"{what} is not a registry state of format {STATE_FORMAT}")
            return cls._parsed(payload, what)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise RegistryError(f"{what} is not a readable registry state ({exc})") from None
        except MnistPipelineError as exc:
            raise RegistryError(f"{what} is not a readable registry state ({exc})") from None

    @classmethod
    def _parsed(cls, payload: dict[str, Any], what: str) -> RegistryState:
        versions = [VersionEntry.from_dict(item, f"{what}: versions") for item in payload["versions"]]
        state = cls(
            number=_integer(payload["number"]),
            last_time=str(payload["last_time"]),
            aliases={
                str(name): AliasState.from_dict(item, f"{what}: aliases.{name}")
                for name, item in payload["aliases"].items()
            },
            versions={entry.ref: entry for entry in versions},
            decisions={str(k): _integer(v) for k, v in payload["decisions"].items()},
            answers={str(k): _integer(v) for k, v in payload["answers"].items()},
            months={str(k): [str(name) for name in v] for k, v in payload["months"].items()},
            alias_events={str(k): [str(name) for name in v] for k, v in payload["alias_events"].items()},
            requests={str(k): _integer(v) for k, v in payload["requests"].items()},
            recent=[IndexedEvent.from_dict(item, f"{what}: recent") for item in payload["recent"]],
            unreadable=[str(why) for why in payload["unreadable"]],
        )
        return state


def _integer(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{value!r} is not a commit number")
    return value


def compact_time(time: str) -> str:
    return time.replace("-", "").replace(":", "").replace(".", "")


def event_name(time: str, number: int, index: int) -> str:
    """`2026-01-31T12:00:00.123456Z`, commit 42, first event -> `20260131T120000123456Z-000000000042-0`."""
    return f"{compact_time(time)}-{number:012d}-{index}"


def parse_event_name(name: str) -> tuple[int, int]:
    """An event's commit number and its index in the commit; `RegistryError` for another name."""
    parts = name.split("-")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise RegistryError(f"{name!r} names no history event (expected <time>-<commit>-<index>)")
    return int(parts[1]), int(parts[2])


def next_time(after: str) -> str:
    """Now in UTC to the microsecond, but never before `after`: commit times follow commit numbers."""
    now = datetime.now(UTC)
    if after:
        floor = datetime.strptime(after, _TIME_FORMAT).replace(tzinfo=UTC) + timedelta(microseconds=1)
        now = max(now, floor)
    return now.strftime(_TIME_FORMAT)
