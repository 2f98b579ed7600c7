"""What a run's page shows of a promotion decision that published nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.storage import open_storage
from mnist_pipeline.web.reading import open_registry
from mnist_pipeline.web.runs import RunDecision, load_run_decision, with_answer

__all__ = ["load_run", "run_context"]


def load_run(settings: PipelineSettings, dag_id: str, run_id: str) -> RunDecision:
    """The promotion decision `run_id` recorded in the artifacts store (`MNIST_ARTIFACTS_URI`), with
    the registry's answer when it waited for a person."""
    decision = load_run_decision(open_storage(settings.artifacts_uri, settings), dag_id, run_id)
    return with_answer(decision, open_registry(settings))


def run_context(decision: RunDecision, link: Callable[[VersionRef], str]) -> dict[str, Any]:
    """What the run page shows of a decision that published nothing."""
    event, previous = decision.event, decision.event.previous_champion
    return {
        "run_id": event.run_id,
        "outcome": decision.outcome,
        "event": event.to_dict(),
        "reason": event.reason,
        "why_not_promoted": decision.why_not_promoted,
        "slices": [piece.to_dict() for piece in event.verdict.slices],
        # Stored as a fraction of the digit's images; shown in percentage points, as the gate words it.
        "recall_drops": [(digit, drop * 100) for digit, drop in sorted(event.verdict.recall_drops.items())],
        "candidates": [_candidate_row(row) for row in decision.candidates],
        "champion_link": link(VersionRef(previous.model, previous.version)) if previous else None,
    }


def _candidate_row(row: dict[str, Any]) -> dict[str, Any]:
    fields = ("model", "accuracy", "loss", "new_data_accuracy", "epochs_run")
    return {name: row.get(name) for name in fields}
