"""The record of one evaluation: what `evaluate` stores as `evaluation.json` and passes to the gate."""

from __future__ import annotations

from dataclasses import dataclass

from mnist_pipeline.records import Record

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

    @property
    def rank(self) -> tuple[float, float]:
        """Best test accuracy first; lower loss breaks a tie."""
        return (self.accuracy, -self.loss)
