"""OpenLineage: dataset naming, what a task reports, and the events of one `airflow dags test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mnist_pipeline import lineage
from mnist_pipeline.lineage import MODEL, LineageDataset, dataset_name
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.storage import open_storage

# One model on a small slice, forced past the gate's floor so that a version is published.
SMALL_RUN = {"models": ["linear"], "epochs": 1, "max_train_images": 600, "force_promote": True}


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("gs://bucket/work/datasets/ab12/mnist.npz", ("gs://bucket", "work/datasets/ab12/mnist.npz")),
        ("gs://bucket/registry/mnist/models/cnn/v1", ("gs://bucket", "registry/mnist/models/cnn/v1")),
        ("/data/mnist.npz", ("file", "/data/mnist.npz")),
        ("file:///data/my%20mnist.npz", ("file", "/data/my mnist.npz")),
        ("file://localhost/data/mnist.npz", ("file", "/data/mnist.npz")),
        ("file://nas1/data/mnist.npz", ("file://nas1", "/data/mnist.npz")),
        (
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz#sha256=731c5a",
            ("https://storage.googleapis.com", "/tensorflow/tf-keras-datasets/mnist.npz"),
        ),
    ],
)
def test_uris_are_named_as_the_openlineage_naming_spec_says(uri: str, expected: tuple[str, str]) -> None:
    assert dataset_name(uri) == expected


def test_names_agree_with_the_openlineage_clients_naming_helpers() -> None:
    from openlineage.client.naming.dataset import GCS, LocalFileSystem, RemoteFileSystem

    for uri, helper in [
        ("gs://bucket/work/model.keras", GCS("bucket", "work/model.keras")),
        ("/data/mnist.npz", LocalFileSystem("/data/mnist.npz")),
        ("file://nas1/data/mnist.npz", RemoteFileSystem("nas1", "/data/mnist.npz")),
    ]:
        assert dataset_name(uri) == (helper.get_namespace(), helper.get_name())


def test_a_relative_path_is_named_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert dataset_name("data/mnist.npz") == ("file", str(tmp_path / "data" / "mnist.npz"))


def test_outside_an_airflow_task_nothing_is_reported_and_nothing_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert lineage._running_task() is None  # no task runs in a test process
    touched: list[Any] = []
    monkeypatch.setattr(lineage, "_replace", lambda *args: touched.append(args))
    lineage.report([LineageDataset("/data/mnist.npz", "ab12")], [LineageDataset("gs://bucket/out")])
    assert touched == []  # nothing was reported anywhere


def test_a_task_reports_its_datasets_with_their_facets_and_keeps_its_assets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asset = object()  # an Airflow Asset in the outlets: Airflow's, left alone
    task = SimpleNamespace(task_id="linear.evaluate", inlets=[], outlets=[asset])
    monkeypatch.setattr(lineage, "_running_task", lambda: task)

    lineage.report([LineageDataset("gs://b/stale")], [LineageDataset("gs://b/stale-out")])
    model = LineageDataset("gs://b/run/model.keras", "cd56", MODEL)
    data = LineageDataset("gs://b/work/datasets/ab12/mnist.npz", "ab12", splits={"test": "t34"})
    lineage.report([model, data], [LineageDataset("/m.json")])

    reported_model, snapshot = task.inlets  # the earlier call's datasets were replaced
    assert (reported_model.namespace, reported_model.name) == ("gs://b", "run/model.keras")
    assert reported_model.facets["datasetType"].datasetType == MODEL
    assert reported_model.facets["version"].datasetVersion == "cd56"
    partition = snapshot.inputFacets["subset"].inputCondition.partitions[0]
    assert (partition.dimensions, partition.identifier) == ({"split": "test"}, "t34")
    assert task.outlets[0] is asset
    assert [(d.namespace, d.name) for d in task.outlets[1:]] == [("file", "/m.json")]


def _events_of_one_dag_test(tmp_path: Path, gcs_bucket: str) -> tuple[list[dict[str, Any]], str]:
    """Run `airflow dags test mnist_training` with the file transport; its events and its output."""
    events = tmp_path / "openlineage.jsonl"
    env = os.environ | {
        "MNIST_ARTIFACTS_URI": f"gs://{gcs_bucket}/work",
        "MNIST_REGISTRY_URI": f"gs://{gcs_bucket}/registry",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "mnist-test",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    command = [airflow, "dags", "test", "mnist_training", "-c", json.dumps(SMALL_RUN)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return [json.loads(line) for line in events.read_text().splitlines()], output


def _names(datasets: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(dataset["namespace"], dataset["name"]) for dataset in datasets]


def _check_envelope(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every event is a run event of mnist_training or one of its tasks; the COMPLETE ones by job."""
    for event in events:
        assert event["eventType"] in {"START", "RUNNING", "COMPLETE", "FAIL", "ABORT"}
        assert event["job"]["namespace"] == "mnist-test"
        assert event["job"]["name"] == "mnist_training" or event["job"]["name"].startswith("mnist_training.")
        uuid.UUID(event["run"]["runId"])
    return {event["job"]["name"]: event for event in events if event["eventType"] == "COMPLETE"}


def _check_ingest(ingest: dict[str, Any], bucket: str, source: Path) -> dict[str, Any]:
    """ingest read the local MNIST file and wrote the snapshot, named by its content hash."""
    assert ("file", str(source)) in _names(ingest["inputs"])
    [snapshot] = ingest["outputs"]
    data_hash = snapshot["facets"]["version"]["datasetVersion"]
    assert _names([snapshot]) == [(bucket, f"work/datasets/{data_hash}/mnist.npz")]
    return snapshot


def _check_evaluate(evaluate: dict[str, Any], model: dict[str, Any], snapshot: dict[str, Any]) -> None:
    """evaluate read the model and the snapshot's test split, and wrote the metrics beside the model."""
    assert _names(evaluate["inputs"]) == _names([model, snapshot])
    condition = evaluate["inputs"][1]["inputFacets"]["subset"]["inputCondition"]
    assert condition["partitions"][0]["dimensions"] == {"split": "test"}
    metrics = model["name"].replace("model.keras", "metrics.json")
    assert _names(evaluate["outputs"]) == [(model["namespace"], metrics)]


@pytest.mark.slow
def test_one_dag_test_lists_the_snapshot_into_train_and_the_version_out_of_promote(
    airflow_db: Path, gcs_bucket: str, mnist_npz: Path, tmp_path: Path
) -> None:
    events, output = _events_of_one_dag_test(tmp_path, gcs_bucket)
    complete = _check_envelope(events)
    bucket = f"gs://{gcs_bucket}"
    snapshot = _check_ingest(complete["mnist_training.ingest"], bucket, mnist_npz)

    train = complete["mnist_training.linear.train"]
    assert _names(train["inputs"]) == _names([snapshot])
    [model] = train["outputs"]
    assert model["name"].endswith("/linear/model.keras")
    assert model["facets"]["datasetType"]["datasetType"] == MODEL
    _check_evaluate(complete["mnist_training.linear.evaluate"], model, snapshot)

    promote = complete["mnist_training.promote"]
    assert _names(promote["inputs"]) == _names([model])
    [published] = promote["outputs"]
    ref = VersionRef("linear", published["facets"]["version"]["datasetVersion"])
    assert _names([published]) == [(bucket, f"registry/{ref.prefix}")]
    assert Registry(open_storage(f"{bucket}/registry")).is_published(ref)
    assert not [line for line in output.splitlines() if "lineage" in line.lower() and "error" in line.lower()]
