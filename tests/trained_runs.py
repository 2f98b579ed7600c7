"""Small real runs for tests, and what every trained model must satisfy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_pipeline.config import PipelineSettings, TrainConfig

if TYPE_CHECKING:
    from mnist_pipeline.evaluation.record import EvaluationRecord
    from mnist_pipeline.training.record import TrainingRecord
    from mnist_pipeline.training.trainer import TrainResult

__all__ = [
    "TINY_IMAGES",
    "assert_ships_the_weights_validation_scored",
    "evaluate_runs",
    "tiny_run",
    "tiny_settings",
]

TINY_IMAGES = 300  # training images of `tiny_run`: seconds to train, enough to learn something


def tiny_settings(root: Path, source: Path, images: int = TINY_IMAGES) -> PipelineSettings:
    """Settings of a tiny run: its artifacts and registry under `root`, `images` training images."""
    return PipelineSettings(
        source=str(source),
        artifacts_uri=str(root / "artifacts"),
        registry_uri=str(root / "registry"),
        max_train_images=images,
    )


def evaluate_runs(artifacts: str, source: Path, runs: dict[str, tuple[str, int, int]]) -> dict[str, Any]:
    """`runs`: run id -> (model, training images, epochs); returns run id -> evaluation record."""
    from mnist_pipeline.steps import evaluate, ingest, train

    evaluations = {}
    for run_id, (model, images, epochs) in runs.items():
        settings = PipelineSettings(source=str(source), artifacts_uri=artifacts, max_train_images=images)
        snapshot = ingest(settings, run_id)
        training = train(model, snapshot, TrainConfig(epochs=epochs), settings, run_id)
        evaluations[run_id] = evaluate(training, settings)
    return evaluations


def tiny_run(
    settings: PipelineSettings,
    run_id: str,
    config: TrainConfig | None = None,
    use_cache: bool = True,
) -> tuple[TrainingRecord, EvaluationRecord]:
    """The linear model trained for one epoch (unless `config` says otherwise) on the snapshot
    `settings` make, then evaluated: the steps of one run as the DAG runs them."""
    from mnist_pipeline.steps import evaluate, ingest, train

    snapshot = ingest(settings, run_id)
    training = train(
        "linear", snapshot, config or TrainConfig(epochs=1), settings, run_id, use_cache=use_cache
    )
    return training, evaluate(training, settings)


def assert_ships_the_weights_validation_scored(
    result: TrainResult, val: tuple[Any, Any], batch_size: int
) -> None:
    """Early stopping restored the best epoch's weights and, for a model that averages its weights,
    validation scored the averaged ones: the returned model must reproduce one of the recorded
    validation losses exactly, which the raw weights would not."""
    loss = result.model.evaluate(val[0], val[1], batch_size=batch_size, verbose=0)[0]
    assert min(abs(loss - recorded) for recorded in result.history["val_loss"]) < 1e-4
