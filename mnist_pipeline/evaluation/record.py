"""The record of one evaluation: what `evaluate` stores as `evaluation.json` and passes to the gate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mnist_pipeline.records import Record
from mnist_pipeline.trials import TrialSummary

__all__ = ["EvaluationRecord"]

_OMITTED_EMPTY = ("trial", "trials", "reused_from")


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
    # The training was reused from an earlier run (the step cache): {run_id, model_uri, cache_key,
    # trained_at}, as the training record has it.
    reused_from: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON; without the sweep's and the cache's fields where they are empty, exactly as
        before sweeps and the cache existed."""
        payload = super().to_dict()
        return {key: value for key, value in payload.items() if value or key not in _OMITTED_EMPTY}

    @property
    def rank(self) -> tuple[float, float]:
        """Best test accuracy first; lower loss breaks a tie."""
        return (self.accuracy, -self.loss)
