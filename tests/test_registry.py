"""Registry versions, the champion pointer, and the promotion rule, on both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnist_pipeline.errors import ConfigError, RegistryError
from mnist_pipeline.evaluation.record import EvaluationRecord
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.operations import promote_version
from mnist_pipeline.registry.promotion import pick_challenger
from mnist_pipeline.registry.store import VersionRef, validate_name
from mnist_pipeline.storage import open_storage


def make_version_dir(folder: Path, payload: bytes = b"weights") -> Path:
    (folder / "saved_model").mkdir(parents=True)
    (folder / "model.keras").write_bytes(payload)
    (folder / "saved_model" / "saved_model.pb").write_bytes(b"graph")
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
    return folder


def test_publishes_a_version_with_hashes_and_lists_it(storage_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_storage(storage_uri))
    ref = VersionRef("cnn", "20261127T000000Z-abcdef12")
    metadata = registry.publish(ref, make_version_dir(tmp_path / "v"), {"data_hash": "d" * 64})
    assert set(metadata["files_sha256"]) == {"model.keras", "saved_model/saved_model.pb", "metrics.json"}
    assert registry.versions() == [ref]
    assert registry.metadata(ref)["data_hash"] == "d" * 64
    assert registry.verified_file(ref, "model.keras") == b"weights"


def test_publishing_twice_is_a_no_op(storage_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_storage(storage_uri))
    ref = VersionRef("dnn", "v1")
    first = registry.publish(ref, make_version_dir(tmp_path / "a"), {"n": 1})
    second = registry.publish(ref, make_version_dir(tmp_path / "b", b"other"), {"n": 2})
    assert first == second and registry.verified_file(ref, "model.keras") == b"weights"


def test_an_incomplete_version_is_not_listed_nor_promotable(storage_uri: str) -> None:
    storage = open_storage(storage_uri)
    storage.write_bytes("mnist/models/cnn/half/model.keras", b"partial upload")
    registry = Registry(storage)
    assert registry.versions() == [] and not registry.is_published(VersionRef("cnn", "half"))
    refused = "cannot set alias 'champion' to cnn/half: unknown version cnn/half"
    with pytest.raises(RegistryError, match=refused):
        promote_version(registry, VersionRef("cnn", "half"), "test", "test:alice")
    assert registry.champion() is None and registry.state().number == 0


def test_uploaded_files_are_not_published_until_a_commit_says_so(storage_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_storage(storage_uri))
    ref = VersionRef("cnn", "uploaded")
    registry.files.upload(ref, make_version_dir(tmp_path / "v"), {})  # a publish killed before its commit
    assert registry.files.uploaded() == [ref] and registry.versions() == []
    with pytest.raises(RegistryError, match="unknown version cnn/uploaded"):
        promote_version(registry, ref, "test", "test:alice")
    registry.publish(ref, tmp_path / "v", {})  # the retry commits it
    assert registry.versions() == [ref]
    assert promote_version(registry, ref, "test", "test:alice").version == "uploaded"


def test_tampered_bytes_are_refused(storage_uri: str, tmp_path: Path) -> None:
    storage = open_storage(storage_uri)
    registry = Registry(storage)
    ref = VersionRef("cnn", "v1")
    registry.publish(ref, make_version_dir(tmp_path / "v"), {})
    storage.write_bytes(f"{ref.prefix}/model.keras", b"tampered")
    with pytest.raises(RegistryError, match=r"model\.keras does not match its recorded sha256"):
        registry.verified_file(ref, "model.keras")


def test_unknown_versions_are_named(storage_uri: str) -> None:
    with pytest.raises(RegistryError, match="unknown version cnn/nope"):
        Registry(open_storage(storage_uri)).metadata(VersionRef("cnn", "nope"))


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x" * 200, "a..b"])
def test_names_that_could_become_other_paths_are_refused(name: str) -> None:
    with pytest.raises(RegistryError, match="is not allowed"):
        validate_name("model", name)


def evaluation_of(model: str, accuracy: float, loss: float) -> EvaluationRecord:
    return EvaluationRecord(
        model=model,
        run_id="r",
        data_hash="d",
        model_uri="u",
        model_sha256="x",
        epochs_run=1,
        train_seconds=1.0,
        accuracy=accuracy,
        loss=loss,
        test_hash="t",
        metrics_uri="m",
    )


def test_the_best_accuracy_is_the_challenger() -> None:
    evaluations = [evaluation_of("linear", 0.92, 0.3), evaluation_of("cnn", 0.99, 0.03)]
    assert pick_challenger([*evaluations, evaluation_of("dnn", 0.99, 0.05)]).model == "cnn"
    with pytest.raises(ConfigError, match="at least one evaluated model"):
        pick_challenger([])
