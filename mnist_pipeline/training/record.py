"""The record of one training: what `train` stores as `training.json` and passes on through XCom."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mnist_pipeline.records import Record
from mnist_pipeline.training.cache_key import TrainingEnvironment
from mnist_pipeline.trials import TrialResult, TrialSummary

__all__ = ["TrainingRecord"]

_OMITTED_EMPTY = ("trial", "trials", "cache_key", "environment", "reused_from")


@dataclass(frozen=True)
class TrainingRecord(Record):
    model: str
    run_id: str
    data_hash: str
    model_uri: str
    model_sha256: str
    trained_at: str
    epochs_run: int  # every epoch the model trained, those before a resume included
    train_seconds: float
    global_batch_size: int
    replicas: int
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    manifest_hash: str | None = None
    resumed_from_epoch: int = 0
    epochs_after_resume: int = 0
    devices: list[str] = field(default_factory=list)
    precision: str = "float32"  # absent from records written before precision was a setting
    initialized_from: dict[str, str] | None = (
        None  # the champion {model, version, uri} a warm start began from
    )
    initialization: str = "cold start"  # how the weights began, and why (a refused warm start says so)
    # A trial of a sweep: its settings and validation scores (None outside a sweep).
    trial: TrialResult | None = None
    # The winner of a sweep carries every trial of its model, as `select` chose among them.
    trials: list[TrialSummary] = field(default_factory=list)
    cache_key: str | None = None  # the step cache's key of this training (`training.cache_key`)
    environment: TrainingEnvironment | None = None  # the code's hash, library versions, device
    # Not trained in this run: the step cache's earlier training {run_id, model_uri, cache_key,
    # trained_at} whose model this is (`mnist_pipeline.cache`).
    reused_from: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON; without the sweep's and the cache's fields where they are empty, exactly as
        before sweeps and the cache existed."""
        payload = super().to_dict()
        return {key: value for key, value in payload.items() if value or key not in _OMITTED_EMPTY}

    @property
    def seed(self) -> int:
        return int(self.train_config.get("seed", 0))
