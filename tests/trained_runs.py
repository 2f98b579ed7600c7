"""Small real runs for tests: each ingested, trained and evaluated into one artifacts store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnist_pipeline.config import PipelineSettings, TrainConfig


def evaluate_runs(artifacts: str, source: Path, runs: dict[str, tuple[str, int, int]]) -> dict[str, Any]:
    """`runs`: run id -> (model, training images, epochs); returns run id -> evaluation record."""
    from mnist_pipeline.pipeline import evaluate, ingest, train

    evaluations = {}
    for run_id, (model, images, epochs) in runs.items():
        settings = PipelineSettings(source=str(source), artifacts_uri=artifacts, max_train_images=images)
        snapshot = ingest(settings, run_id)
        training = train(model, snapshot, TrainConfig(epochs=epochs), settings, run_id)
        evaluations[run_id] = evaluate(training, settings)
    return evaluations
