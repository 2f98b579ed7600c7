"""How the pages word what a decision came to: promoted, kept, or waiting for a person's answer."""

from __future__ import annotations

from typing import Any

from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import Verdict
from mnist_pipeline.registry.promotion import APPROVAL_PENDING
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent, VersionEntry
from mnist_pipeline.registry.state import RegistryState, parse_event_name
from mnist_pipeline.registry.store import VersionRef

__all__ = ["NO_VERDICT", "history_row", "pending_answers", "ref_of", "unpromoted"]

NO_VERDICT = Verdict(False, "no promoting decision recorded")


def unpromoted(entry: VersionEntry) -> str:
    """Why a published version was never promoted, as far as the log says."""
    return {
        APPROVAL_PENDING: "waiting for approval: not promoted yet",
        "rejected": "rejected by a person: not promoted",
        "timed-out": "approval timed out: not promoted",
    }.get(entry.approval or "", NO_VERDICT.reason)


def ref_of(pointer: ChampionPointer | None) -> VersionRef | None:
    return VersionRef(pointer.model, pointer.version) if pointer else None


def history_row(event: HistoryEvent, answers: dict[tuple[str, str], HistoryEvent]) -> dict[str, Any]:
    status, css = _event_status(event, answers.get((event.run_id or "", event.model)))
    accuracy = (event.metrics or {}).get("accuracy")
    shown = {"accuracy": accuracy, "reason": event.reason, "status": status, "status_class": css}
    return event.to_dict() | shown


def _event_status(event: HistoryEvent, answer: HistoryEvent | None) -> tuple[str, str]:
    """What the event came to, as the history's "promoted" column says it, and its style: a
    decision that asked a person is neither promoted nor kept until the answer says so."""
    if event.kind == "approval":
        return _answer_status(event)
    if event.approval == APPROVAL_PENDING and not event.dry_run:
        if answer is None:
            return "waiting for approval", "pending"
        said, css = _answer_status(answer)
        return f"asked for approval: {said}", css
    return ("yes", "yes") if event.promoted else ("no", "no")


def _answer_status(answer: HistoryEvent) -> tuple[str, str]:
    who = answer.approver or "nobody"
    if answer.approval == "approved":
        return f"yes: approved by {who}", "yes"
    if answer.approval == "timed-out":
        return "no: approval timed out", "no"
    return f"no: rejected by {who}", "no"


def pending_answers(
    registry: Registry, state: RegistryState, events: list[HistoryEvent]
) -> dict[tuple[str, str], HistoryEvent]:
    """The answer to each pending decision among `events`, by run and model: from `events` or the
    state's newest events when they hold it, else from its commit (one read each)."""
    recent = {parse_event_name(i.name)[0]: i.event for i in state.recent}
    found = {(e.run_id or "", e.model): e for e in events if e.kind == "approval"}
    for event in events:
        key = (event.run_id or "", event.model)
        if event.approval != APPROVAL_PENDING or not event.run_id or key in found:
            continue
        number = state.answer_of(event.run_id, event.model)
        answer = recent.get(number) if number else None
        if number and answer is None:
            commit = registry.read_commit(number)
            answer = commit.event if commit else None
        if answer is not None:
            found[key] = answer
    return found
