"""One Airflow run's promotion decision, as the Model Registry tab of a DAG run shows it.

The promote step leaves `<artifacts>/runs/<run>/promotion.json` for every run that reached it,
promoting or not, dry run included: the gate's event and every evaluated candidate. A run that
published a version is shown as that version's page; any other run as its verdict, slice by slice.
A decision that asked a person is shown with the answer the registry's log holds: waiting,
approved, rejected or timed out (the record the run left says only "pending").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from mnist_pipeline.errors import ConfigError, RegistryError
from mnist_pipeline.registry.approval import APPROVED, REJECTED, TIMED_OUT
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.promotion import APPROVAL_PENDING
from mnist_pipeline.registry.records import HistoryEvent
from mnist_pipeline.runs import legacy_run_key, run_key
from mnist_pipeline.storage import Storage

__all__ = [
    "PROMOTION_RECORD",
    "RunDecision",
    "RunDecisionMissingError",
    "load_run_decision",
    "with_answer",
]

PROMOTION_RECORD = "promotion.json"


class RunDecisionMissingError(RegistryError):
    """The run left no promotion record: it has not reached `promote`, failed before it, or does not exist."""


@dataclass(frozen=True)
class RunDecision:
    """A run's gate decision and the candidates it chose among (best test accuracy first)."""

    event: HistoryEvent
    candidates: list[dict[str, Any]]
    why_not_promoted: str | None = None  # the run's own words when it promoted nothing
    answer: HistoryEvent | None = None  # a person's answer (or the timeout) to a pending decision

    @property
    def published_version(self) -> tuple[str, str] | None:
        """(model, version) when this run moved the champion to a version it published."""
        if self.event.promoted and not self.event.dry_run and self.event.version:
            return self.event.model, self.event.version
        return None

    @property
    def approval(self) -> str | None:
        """None (no person asked), pending, approved, rejected or timed-out."""
        if self.event.approval != APPROVAL_PENDING:
            return self.event.approval
        return self.answer.approval if self.answer is not None else APPROVAL_PENDING

    @property
    def outcome(self) -> str:
        if self.event.dry_run:
            decision = "would promote" if self.event.verdict.promote else "would keep the champion"
            return f"{decision} (dry run)"
        if self.event.approval == APPROVAL_PENDING:
            return self._answered()
        if self.event.promoted:
            return "promoted (forced)" if self.event.forced else "promoted"
        return "kept the champion" if self.event.previous_champion else "promoted nothing"

    def _answered(self) -> str:
        who = (self.answer.approver if self.answer else None) or "nobody"
        candidate = f"{self.event.model}/{self.event.version}"
        return {
            APPROVAL_PENDING: f"waiting for approval: {candidate} is the candidate",
            APPROVED: f"approved by {who}: {candidate} promoted",
            REJECTED: f"rejected by {who}: {candidate} not promoted, the champion stays",
            TIMED_OUT: f"approval timed out: {candidate} not promoted, the champion stays",
        }.get(self.approval or "", f"approval {self.approval}")


def load_run_decision(artifacts: Storage, dag_id: str, run_id: str) -> RunDecision:
    """The decision `run_id` recorded, or RunDecisionMissingError naming the run and why it may lack one.
    Messages name the record by its key in the artifacts store, never by a server path."""
    for key, legacy in _record_keys(artifacts, run_id):
        payload = artifacts.read_json(key)
        if not isinstance(payload, dict):
            raise RegistryError(
                f"{key} in the artifacts store: expected a JSON object, not {type(payload).__name__}"
            )
        recorded = payload.get("run_id")
        if recorded in (None, run_id):
            return _decision(payload, key)
        if not legacy:
            raise RegistryError(f"{key} in the artifacts store records run {recorded!r}, not {run_id!r}")
    raise RunDecisionMissingError(
        f"run {run_id!r} of DAG {dag_id!r} has no promotion decision: "
        "its promote task has not run yet, failed before deciding, or the run does not exist"
    )


def _decision(payload: dict[str, Any], key: str) -> RunDecision:
    candidates = payload.pop("candidates", [])
    why_not = payload.pop("why_not_promoted", None)
    event = HistoryEvent.from_dict(payload, key)
    rows = [row for row in candidates if isinstance(row, dict)] if isinstance(candidates, list) else []
    return RunDecision(event, rows, why_not if isinstance(why_not, str) else None)


def _record_keys(artifacts: Storage, run_id: str) -> list[tuple[str, bool]]:
    """The run's record (key, in the legacy folder?): in its own folder, else in the folder runs
    had before run ids were escaped one to one, which another run id may share. A run id that
    names no run (`..`) has neither."""
    try:
        keys = [(f"{run_key(run_id)}/{PROMOTION_RECORD}", False)]
        keys.append((f"{legacy_run_key(run_id)}/{PROMOTION_RECORD}", True))
    except ConfigError:
        return []
    return [(key, legacy) for key, legacy in keys if artifacts.exists(key)]


def with_answer(decision: RunDecision, registry: Registry) -> RunDecision:
    """`decision` with the registry's answer to it, when it waited for a person and one came."""
    run_id, model = decision.event.run_id, decision.event.model
    if decision.event.approval != APPROVAL_PENDING or not run_id:
        return decision
    number = registry.state().answer_of(run_id, model)
    commit = registry.read_commit(number) if number is not None else None
    return replace(decision, answer=commit.event) if commit is not None else decision
