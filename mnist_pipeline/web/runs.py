"""One Airflow run's promotion decision, as the Model Registry tab of a DAG run shows it.

The promote step leaves `<artifacts>/runs/<run>/promotion.json` for every run that reached it,
promoting or not, dry run included: the gate's event and every evaluated candidate. A run that
published a version is shown as that version's page; any other run as its verdict, slice by slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnist_pipeline.errors import RegistryError
from mnist_pipeline.registry.records import HistoryEvent
from mnist_pipeline.runs import run_key
from mnist_pipeline.storage import Storage

__all__ = ["PROMOTION_RECORD", "RunDecision", "RunDecisionMissingError", "load_run_decision"]

PROMOTION_RECORD = "promotion.json"


class RunDecisionMissingError(RegistryError):
    """The run left no promotion record: it has not reached `promote`, failed before it, or does not exist."""


@dataclass(frozen=True)
class RunDecision:
    """A run's gate decision and the candidates it chose among (best test accuracy first)."""

    event: HistoryEvent
    candidates: list[dict[str, Any]]

    @property
    def published_version(self) -> tuple[str, str] | None:
        """(model, version) when this run moved the champion to a version it published."""
        if self.event.promoted and not self.event.dry_run and self.event.version:
            return self.event.model, self.event.version
        return None

    @property
    def outcome(self) -> str:
        if self.event.dry_run:
            decision = "would promote" if self.event.verdict.promote else "would keep the champion"
            return f"{decision} (dry run)"
        if self.event.promoted:
            return "promoted (forced)" if self.event.forced else "promoted"
        return "kept the champion" if self.event.previous_champion else "promoted nothing"


def load_run_decision(artifacts: Storage, dag_id: str, run_id: str) -> RunDecision:
    """The decision `run_id` recorded, or RunDecisionMissingError naming the run and why it may lack one."""
    key = f"{run_key(run_id)}/{PROMOTION_RECORD}"
    if not artifacts.exists(key):
        raise RunDecisionMissingError(
            f"run {run_id!r} of DAG {dag_id!r} has no promotion decision in {artifacts.uri(key)}: "
            "its promote task has not run yet, failed before deciding, or the run does not exist"
        )
    payload = artifacts.read_json(key)
    if not isinstance(payload, dict):
        raise RegistryError(f"{artifacts.uri(key)}: expected a JSON object, got {type(payload).__name__}")
    candidates = payload.pop("candidates", [])
    event = HistoryEvent.from_dict(payload, artifacts.uri(key))
    if event.run_id not in (None, run_id):
        raise RegistryError(f"{artifacts.uri(key)} records run {event.run_id!r}, not {run_id!r}")
    rows = [row for row in candidates if isinstance(row, dict)] if isinstance(candidates, list) else []
    return RunDecision(event, rows)
