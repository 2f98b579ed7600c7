"""New labelled data: shards processed exactly once, a debounced Asset event, retraining on them."""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline.data.incoming import (
    ACCEPTED,
    ANNOUNCED_KEY,
    INCOMING,
    NEW_DATA_ASSET_NAME,
    REJECTED,
    accepted_shards,
    announce_pending,
    process_incoming,
)
from mnist_pipeline.data.mnist import MnistData
from mnist_pipeline.data.slices import held_out_mask
from mnist_pipeline.data.snapshot import read_manifest
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.storage import Storage, open_storage
from tests.new_digits import new_digits

REPO = Path(__file__).resolve().parent.parent


def shard_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, images=images, labels=labels)
    return buffer.getvalue()


def drop_shard(storage: Storage, name: str, images: np.ndarray, labels: np.ndarray) -> None:
    storage.write_bytes(f"{INCOMING}{name}", shard_bytes(images, labels))


def drop_valid_and_invalid(storage: Storage, mnist: MnistData, count: int = 1200) -> None:
    # The last training images, moved, stand in for newly labelled digits.
    drop_shard(storage, "batch-1.npz", new_digits(mnist.x_train[-count:]), mnist.y_train[-count:])
    drop_shard(storage, "bad-labels.npz", new_digits(mnist.x_train[:50]), np.full(50, 10, np.int64))


def test_shards_are_placed_with_reasons_and_processed_once(storage_uri: str, mnist: MnistData) -> None:
    storage = open_storage(storage_uri)
    drop_valid_and_invalid(storage, mnist)
    drop_shard(storage, "empty.npz", np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8))
    report = process_incoming(storage, "run-1", mnist)

    assert [s["source"] for s in report.accepted] == ["batch-1.npz"]
    assert report.accepted[0]["images"] == 1200
    reasons = {r["shard"]: r["reason"] for r in report.rejected}
    assert "labels holds label 10" in reasons["bad-labels.npz"] and "images is empty" in reasons["empty.npz"]
    assert storage.list_keys(INCOMING) == []
    rejected = storage.list_keys(REJECTED)
    reason_file = next(key for key in rejected if key.endswith("bad-labels.npz.reason.txt"))
    assert "labels must be 0-9" in storage.read_bytes(reason_file).decode()
    assert len(accepted_shards(storage)) == 1

    again = process_incoming(storage, "run-2", mnist)
    assert again.accepted == [] and again.rejected == []


def test_a_shard_claimed_by_another_run_is_left_to_it(storage_uri: str, mnist: MnistData) -> None:
    storage = open_storage(storage_uri)
    drop_shard(storage, "batch-1.npz", new_digits(mnist.x_train[:10]), mnist.y_train[:10])
    raw = storage.read_bytes(f"{INCOMING}batch-1.npz")
    from mnist_pipeline.data.incoming import CLAIMS
    from mnist_pipeline.hashing import sha256_hex

    assert storage.write_if_generation(
        f"{CLAIMS}batch-1.npz-{sha256_hex(raw)[:16]}.json", b'{"run_id": "a"}', "0"
    )
    assert process_incoming(storage, "b", mnist).skipped == ["batch-1.npz"]
    assert process_incoming(storage, "a", mnist).accepted[0]["source"] == "batch-1.npz"  # its retry proceeds


def test_announcements_wait_for_enough_images_and_happen_once(storage_uri: str, mnist: MnistData) -> None:
    storage = open_storage(storage_uri)
    drop_shard(storage, "small.npz", new_digits(mnist.x_train[:600]), mnist.y_train[:600])
    process_incoming(storage, "r1", mnist)
    assert announce_pending(storage, threshold=1000) is None
    drop_shard(storage, "more.npz", new_digits(mnist.x_train[600:1100]), mnist.y_train[600:1100])
    process_incoming(storage, "r2", mnist)
    announcement = announce_pending(storage, threshold=1000)
    assert announcement["images"] == 1100 and len(announcement["shards"]) == 2
    assert announce_pending(storage, threshold=1000) is None
    assert storage.exists(ANNOUNCED_KEY)


# --- the two DAGs together, with dag.test() on a GCS artifacts store -------------------------------


@pytest.fixture(scope="module")
def dags(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags


@pytest.fixture
def gcs_env(gcs_bucket: str, monkeypatch: pytest.MonkeyPatch) -> Storage:
    monkeypatch.setenv("MNIST_REGISTRY_URI", f"gs://{gcs_bucket}/registry")
    monkeypatch.setenv("MNIST_ARTIFACTS_URI", f"gs://{gcs_bucket}/work")
    return open_storage(f"gs://{gcs_bucket}/work")


def asset_events() -> list:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
        rows = session.scalars(query.where(AssetModel.name == NEW_DATA_ASSET_NAME)).all()
        return [(row.id, row.extra) for row in rows]


def run_ok(dag, **conf) -> None:
    from airflow.utils.state import DagRunState

    assert dag.test(run_conf=conf or None).state == DagRunState.SUCCESS


@pytest.mark.slow
def test_new_data_triggers_an_event_and_enters_the_next_training_set(
    dags, gcs_env: Storage, mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNIST_MIN_NEW_IMAGES", "1000")
    drop_valid_and_invalid(gcs_env, mnist)
    before = asset_events()
    run_ok(dags["mnist_incoming"])
    events = [event for event in asset_events() if event not in before]
    assert len(events) == 1 and events[0][1]["images"] == 1200 and len(events[0][1]["shards"]) == 1
    assert gcs_env.list_keys(INCOMING) == [] and any(
        k.endswith(".reason.txt") for k in gcs_env.list_keys(REJECTED)
    )

    run_ok(dags["mnist_incoming"])  # nothing new: nothing processed twice, no second event
    assert [event for event in asset_events() if event not in before] == events
    assert len(gcs_env.list_keys(ACCEPTED)) == 2  # one shard and its sidecar

    run_ok(dags["mnist_training"], models=["dnn"], epochs=1, max_train_images=3000, force_promote=True)
    ingest = gcs_env.read_json(next(k for k in gcs_env.list_keys("runs/") if k.endswith("ingest.json")))
    held_out = int(held_out_mask(new_digits(mnist.x_train[-1200:])).sum())  # by each image's content hash
    assert ingest["new_test_images"] == held_out and ingest["train_images"] == 3000 + 1200 - held_out
    manifest = read_manifest(gcs_env, ingest["data_hash"])
    shard_entry = next(s for s in manifest["sources"] if s["kind"] == "shard")
    assert shard_entry["uri"].endswith("batch-1.npz") and len(shard_entry["sha256"]) == 64
    metrics = gcs_env.read_json(next(k for k in gcs_env.list_keys("runs/") if k.endswith("dnn/metrics.json")))
    assert metrics["new_data"]["test_images"] == held_out and 0 < metrics["new_data"]["accuracy"] <= 1

    registry = Registry(open_storage(os.environ["MNIST_REGISTRY_URI"]))
    champion = registry.champion()
    metadata = registry.metadata(VersionRef(champion.model, champion.version))
    assert metadata["manifest_hash"] == ingest["manifest_hash"]  # lineage: which data, from where
    assert metadata["run"]["trigger"] == "manual" and metadata["run"]["conf"]["models"] == ["dnn"]


@pytest.mark.slow
def test_below_the_debounce_threshold_no_event_is_emitted(
    dags, gcs_env: Storage, mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNIST_MIN_NEW_IMAGES", "5000")
    drop_valid_and_invalid(gcs_env, mnist)
    before = asset_events()
    run_ok(dags["mnist_incoming"])
    assert asset_events() == before
    assert len(accepted_shards(gcs_env)) == 1  # accepted all the same, waiting for more


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({"models": ["resnet"]}, "models"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": "big"}, "batch_size"),
        ({"cnn_batch_size": -4}, "cnn_batch_size"),
        ({"dnn_epochs": 1.5}, "dnn_epochs"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"promotion_margin": -1}, "promotion_margin"),
    ],
)
def test_invalid_trigger_values_are_refused_naming_the_field(dags, conf: dict, field: str) -> None:
    """The validation every trigger goes through (dag.test, the REST API, the form) before a run
    exists; run here on a copy of the DAG's params, so that no run is started to prove it."""
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=rf"Invalid input for param {field}:"):
        copy.deepcopy(dags["mnist_training"].params).update(conf)
