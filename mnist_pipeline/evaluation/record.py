"""The record of one evaluation: what `evaluate` stores as `evaluation.json` and passes to the gate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mnist_pipeline.records import Record
from mnist_pipeline.trials import TrialSummary

__all__ = ["EvaluationRecord"]


@dataclass(frozen=True)
class EvaluationRecord(Record):
    model: str
    run_id: str
    accuracy: float  # on the fixed 10k test set
    loss: float
    test_hash: str  # the test set's hash: records with equal hashes are comparable
    metrics_uri: str
    data_hash: str
    model_uri: str
    model_sha256: str
    epochs_run: int
    train_seconds: float
    new_data_accuracy: float | None = None  # on the held-out part of newly landed shards
    new_data_hash: str | None = None  # that slice's hash; None while no new data has landed
    trial: TrialSummary | None = None  # the sweep's trial that won on validation (None: no sweep)
    trials: list[TrialSummary] = field(default_factory=list)  # every trial of the model's sweep

    def to_dict(self) -> dict[str, Any]:
        """As JSON; outside a sweep without the sweep's fields, exactly as before sweeps existed."""
        payload = super().to_dict()
        return {key: value for key, value in payload.items() if value or key not in ("trial", "trials")}

    @property
    def rank(self) -> tuple[float, float]:
        """Best test accuracy first; lower loss breaks a tie."""
        return (self.accuracy, -self.loss)
