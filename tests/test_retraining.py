"""Retraining that learns from new data, end to end on small slices: digits re-drawn as from
another pen arrive as shards, pass the yardstick guard, and a warm-started retrain that learned
them is promoted by the new_data slice while mnist_test stays within the non-inferiority margin."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline.config import PipelineSettings, TrainConfig
from mnist_pipeline.data.incoming import INCOMING, announce_pending, process_incoming
from mnist_pipeline.data.mnist import MnistData
from mnist_pipeline.data.shifts import redrawn_with_another_pen
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import MNIST_TEST, NEW_DATA, GateConfig
from mnist_pipeline.registry.promotion import PromotionOptions
from mnist_pipeline.steps import evaluate, ingest, promote, train
from mnist_pipeline.storage import open_storage

pytestmark = pytest.mark.slow
BASE_IMAGES = 8000  # the champion's training slice
SHARD_IMAGES = 1000
SHARDS = 3


def send_shards(settings: PipelineSettings, mnist: MnistData) -> None:
    """3,000 training digits the champion never saw, re-drawn with a broader pen, as three shards."""
    artifacts = open_storage(settings.artifacts_uri)
    for number in range(SHARDS):
        start = 30_000 + number * SHARD_IMAGES
        images = redrawn_with_another_pen(mnist.x_train[start : start + SHARD_IMAGES], seed=number)
        buffer = io.BytesIO()
        np.savez(buffer, images=images, labels=mnist.y_train[start : start + SHARD_IMAGES])
        artifacts.write_bytes(f"{INCOMING}pen-{number}.npz", buffer.getvalue())


def run(settings: PipelineSettings, run_id: str, warm_start: bool, trigger: str, epochs: int | None = None):
    snapshot = ingest(settings, run_id)
    training = train("cnn", snapshot, TrainConfig(epochs=epochs), settings, run_id, warm_start=warm_start)
    evaluation = evaluate(training, settings)
    options = PromotionOptions(gate=GateConfig(floor=0.5), trigger=trigger)
    return snapshot, training, promote([evaluation], settings, run_id, options)


def test_a_warm_started_retrain_on_new_pen_digits_is_promoted_by_the_new_data_slice(
    tmp_path: Path, mnist_npz: Path, mnist: MnistData
) -> None:
    settings = PipelineSettings(
        source=str(mnist_npz),
        artifacts_uri=str(tmp_path / "artifacts"),
        registry_uri=str(tmp_path / "registry"),
        max_train_images=BASE_IMAGES,
    )
    _, _, first = run(settings, "run-base", warm_start=False, trigger="scheduled", epochs=4)
    assert first.promoted
    champion = Registry(open_storage(settings.registry_uri)).champion()

    send_shards(settings, mnist)
    report = process_incoming(open_storage(settings.artifacts_uri), "run-incoming", mnist)
    assert len(report.accepted) == SHARDS and all(shard["flags"] == [] for shard in report.accepted)
    assert announce_pending(open_storage(settings.artifacts_uri), threshold=1000) is not None

    snapshot, training, outcome = run(settings, "run-new-data", warm_start=True, trigger="asset_triggered")
    assert training.initialized_from is not None and training.initialized_from["version"] == champion.version
    assert training.epochs_run <= 3  # the short warm-start schedule
    verdict = outcome.verdict
    assert outcome.promoted, verdict.reason
    new_data, test = verdict.slice(NEW_DATA), verdict.slice(MNIST_TEST)
    assert new_data is not None and test is not None
    assert new_data.better and new_data.decides and new_data.adjusted_p_value < 0.05
    assert "new_data" in verdict.reason.split(":")[0]
    assert new_data.challenger_accuracy > new_data.champion_accuracy
    assert test.champion_accuracy - test.challenger_accuracy <= GateConfig().non_inferiority
    assert new_data.images == snapshot.new_test_images > 200  # about a tenth of the 3,000 new digits
    print(verdict.reason)
