"""The pieces the fault suite relies on, one at a time: the storage retry deadline, the removal of
dead uploads (and only dead ones), and checkpoints that refuse to resume another training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.data.mnist import MnistData, split_validation
from mnist_pipeline.errors import ConfigError, StorageError
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.storage import open_storage
from tests.fault_fixtures import RestartableGcsServer, new_bucket_uri
from tests.trained_runs import assert_ships_the_weights_validation_scored


def test_the_retry_deadline_comes_from_the_environment() -> None:
    assert PipelineSettings.from_env({}).storage_retry_deadline == PipelineSettings().storage_retry_deadline
    assert PipelineSettings.from_env({"MNIST_STORAGE_RETRY_DEADLINE": "2.5"}).storage_retry_deadline == 2.5
    for bad in ("0", "-3", "soon", "nan", "inf"):
        with pytest.raises(
            ConfigError, match=f"MNIST_STORAGE_RETRY_DEADLINE must be a positive number, got '{bad}'"
        ):
            PipelineSettings.from_env({"MNIST_STORAGE_RETRY_DEADLINE": bad})


def test_an_outage_longer_than_the_deadline_names_the_object(
    fault_gcs: RestartableGcsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_storage(new_bucket_uri("p"), PipelineSettings(storage_retry_deadline=1))
    store.write_bytes("kept.txt", b"before the outage")
    fault_gcs.kill()
    try:
        with pytest.raises(
            StorageError, match=r"/p/late\.txt: storage unreachable, gave up after 1 s of retries"
        ):
            store.write_bytes("late.txt", b"during the outage")
    finally:
        fault_gcs.start()
    assert store.read_bytes("kept.txt") == b"before the outage" and not store.exists("late.txt")


def write_version(registry: Registry, ref: VersionRef, committed: bool) -> None:
    registry.storage.write_bytes(f"{ref.prefix}/model.keras", b"weights")
    if committed:
        registry.storage.write_json(f"{ref.prefix}/metadata.json", {"files_sha256": {}})


def test_only_dead_uploads_are_removed(storage_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(open_storage(storage_uri))
    done, uploading, mine = VersionRef("dnn", "v1"), VersionRef("dnn", "v2"), VersionRef("cnn", "v3")
    write_version(registry, done, committed=True)
    write_version(registry, uploading, committed=False)
    write_version(registry, mine, committed=False)
    # Just written: another process may still be uploading it.
    assert registry.files.remove_stale_uploads(keep=mine) == []
    impatient = Registry(registry.storage, stale_upload_seconds=1e-9)
    assert impatient.files.remove_stale_uploads(keep=mine) == [uploading]
    assert registry.storage.list_keys(uploading.prefix) == []
    assert registry.files.uploaded() == [done] and registry.storage.exists(f"{mine.prefix}/model.keras")


def test_a_checkpoint_of_another_training_is_not_resumed(tmp_path: Path) -> None:
    from mnist_pipeline.training.checkpoint import BACKUP_WEIGHTS, ArtifactCheckpoint

    store = open_storage(str(tmp_path / "artifacts"))
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / BACKUP_WEIGHTS).write_bytes(b"weights of epoch 3")
    ArtifactCheckpoint(store, "runs/r/dnn/checkpoint", {"data_hash": "a"}).save(backup, epoch=3)
    fresh = tmp_path / "fresh"
    assert ArtifactCheckpoint(store, "runs/r/dnn/checkpoint", {"data_hash": "a"}).restore(fresh) == 3
    assert (fresh / BACKUP_WEIGHTS).read_bytes() == b"weights of epoch 3"
    assert json.loads((fresh / "training_metadata.json").read_text())["epoch"] == 3
    assert ArtifactCheckpoint(store, "runs/r/dnn/checkpoint", {"data_hash": "b"}).restore(tmp_path / "x") == 0
    assert store.list_keys("runs/r/dnn/checkpoint/") == []  # the foreign checkpoint is gone


@pytest.mark.slow
def test_an_interrupted_cnn_resumes_with_its_averaged_weights(tmp_path: Path, mnist: MnistData) -> None:
    import keras

    from mnist_pipeline.config import TrainConfig
    from mnist_pipeline.evaluation.metrics import evaluate_model
    from mnist_pipeline.training.checkpoint import ArtifactCheckpoint
    from mnist_pipeline.training.trainer import train_model

    class CrashAfterSecondEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if epoch == 1:
                raise RuntimeError("worker lost")

    store, config = open_storage(str(tmp_path / "artifacts")), TrainConfig(epochs=4, batch_size=32)
    train, val = split_validation(mnist.x_train[:2000], mnist.y_train[:2000], 0.1, seed=1)

    def checkpoint() -> ArtifactCheckpoint:
        return ArtifactCheckpoint(store, "runs/r/cnn/checkpoint", {"data_hash": "a"})

    with pytest.raises(RuntimeError, match="worker lost"):
        train_model("cnn", train, val, config, [CrashAfterSecondEpoch()], checkpoint())
    result = train_model("cnn", train, val, config, checkpoint=checkpoint())
    assert result.resumed_from_epoch == 2 and result.epochs_run == 4
    assert result.model.optimizer.use_ema and len(result.history["val_loss"]) == 4
    # What ships is still the averaged weights validation scored, across the resume.
    assert_ships_the_weights_validation_scored(result, val, batch_size=32)
    assert evaluate_model(result.model, mnist.x_test[:2000], mnist.y_test[:2000])["accuracy"] > 0.9
