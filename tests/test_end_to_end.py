"""The whole DAG, run with `dag.test()` on a slice of real MNIST, registry and artifacts on GCS."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_pipeline.cli.render import latest_promotion
from mnist_pipeline.data.mnist import MnistData
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.storage import open_storage
from mnist_pipeline.training.model_io import load_model_bytes

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
VERSION_FILES = {
    "model.keras",
    "metrics.json",
    "metadata.json",
    "training.json",
    "saved_model/saved_model.pb",
}


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags")).dags["mnist_training"]


@pytest.fixture(scope="module")
def gcs_locations(gcs_server) -> Iterator[dict[str, str]]:
    """A bucket of the module's own for the registry and the artifacts, named in the environment."""
    from mnist_pipeline.storage import GcsStorage

    bucket = f"mnist-e2e-{uuid.uuid4().hex[:12]}"
    GcsStorage(f"gs://{bucket}").client.create_bucket(bucket)
    uris = {"MNIST_REGISTRY_URI": f"gs://{bucket}/registry", "MNIST_ARTIFACTS_URI": f"gs://{bucket}/work"}
    with pytest.MonkeyPatch.context() as patch:
        for name, uri in uris.items():
            patch.setenv(name, uri)
        yield uris


@pytest.fixture(scope="module")
def first_run(dag, gcs_locations: dict[str, str]) -> dict[str, Any]:
    """One small run of every model into an empty registry: its promotion decision. The module's
    tests share it (one DAG run, not one each); the second builds on the champion it crowned."""
    run_dag(dag, epochs=2, max_train_images=5000)
    return latest_promotion(open_storage(gcs_locations["MNIST_ARTIFACTS_URI"]))


def run_dag(dag, **conf: Any) -> None:
    from airflow.utils.state import DagRunState

    dag_run = dag.test(run_conf=conf)
    assert dag_run.state == DagRunState.SUCCESS


def assert_promoted(registry: Registry, model: str) -> dict:
    champion = registry.champion()
    assert champion is not None and champion.model == model
    return champion


def test_a_small_run_trains_every_model_and_promotes_the_best(
    first_run: dict[str, Any], gcs_locations: dict[str, str], mnist: MnistData
) -> None:
    decision = first_run
    assert {row["model"] for row in decision["candidates"]} == {"linear", "dnn", "cnn"}
    best = max(decision["candidates"], key=lambda row: row["accuracy"])
    storage = open_storage(gcs_locations["MNIST_REGISTRY_URI"])
    registry = Registry(storage)
    champion = assert_promoted(registry, best["model"])
    assert champion.run_id == decision["run_id"] and champion.metrics["accuracy"] == best["accuracy"]

    ref = VersionRef(champion.model, champion.version)
    stored = {key.removeprefix(ref.prefix + "/") for key in storage.list_keys(ref.prefix)}
    assert stored >= VERSION_FILES and any(name.startswith("saved_model/variables/") for name in stored)
    metadata = registry.metadata(ref)
    assert metadata["data_hash"] == champion.data_hash and metadata["airflow_run_id"] == decision["run_id"]
    assert {"tensorflow-cpu", "keras", "apache-airflow"} & set(metadata["library_versions"])

    model = load_model_bytes(registry.verified_file(ref, "model.keras"))
    predicted = model.predict(mnist.x_test, verbose=0).argmax(axis=1)
    assert np.mean(predicted == mnist.y_test) == pytest.approx(best["accuracy"])


def test_a_weaker_run_with_one_model_selected_is_not_promoted(
    dag, first_run: dict[str, Any], gcs_locations: dict[str, str]
) -> None:
    registry = Registry(open_storage(gcs_locations["MNIST_REGISTRY_URI"]))
    champion = registry.champion()
    assert champion is not None and champion.run_id == first_run["run_id"]

    run_dag(dag, epochs=1, max_train_images=500, models=["linear"])
    decision = latest_promotion(open_storage(gcs_locations["MNIST_ARTIFACTS_URI"]))
    assert decision["run_id"] != first_run["run_id"]
    assert [row["model"] for row in decision["candidates"]] == ["linear"]  # the others were skipped
    assert decision["promoted"] is False and "not better by the margin" in decision["verdict"]["reason"]
    assert decision["trigger"] == "manual" and decision["previous_champion"]["model"] == champion.model
    assert registry.champion() == champion
