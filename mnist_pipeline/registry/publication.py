"""Publishing a challenger as a registry version: stage, serving-check, upload, commit (`publish`).

A version is named by its training time and model hash, so publishing the same model twice (a
retried task, a re-gated race) finds it already there and uploads nothing.
"""

from __future__ import annotations

import json
import platform
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from mnist_pipeline.data.mnist import MnistData
from mnist_pipeline.data.snapshot import read_manifest
from mnist_pipeline.evaluation.metrics import predict
from mnist_pipeline.evaluation.model_card import MODEL_CARD_FILE, render_model_card
from mnist_pipeline.evaluation.record import EvaluationRecord
from mnist_pipeline.evaluation.reports import REPORT_DIR
from mnist_pipeline.evaluation.serving import PROBE_IMAGES, check_serving
from mnist_pipeline.hashing import read_verified
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import Verdict
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.runs import model_key
from mnist_pipeline.storage import Storage
from mnist_pipeline.training.model_io import load_model_bytes
from mnist_pipeline.training.record import TrainingRecord

__all__ = ["publish_challenger", "version_name"]

_LIBRARIES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "google-cloud-storage", "apache-airflow")
_RUN_FILES = ("metrics.json", "training.json", "predictions.npy")  # model.keras is read verified


def version_name(training: TrainingRecord) -> str:
    """Sortable by time, unique by content: `20261127T224100Z-<sha256[:8]>`."""
    stamp = training.trained_at.replace("-", "").replace(":", "")
    return f"{stamp}-{training.model_sha256[:8]}"


def publish_challenger(
    registry: Registry,
    artifacts: Storage,
    challenger: EvaluationRecord,
    data: MnistData,
    lineage: dict[str, Any] | None = None,
    verdict: Verdict | None = None,
    run_id: str | None = None,
) -> VersionRef:
    """Publish the challenger's version (if not yet there), with a model card stating the gate's
    `verdict`; returns the version."""
    prefix = model_key(challenger.run_id, challenger.model)
    key = f"{prefix}/training.json"
    training = TrainingRecord.from_dict(artifacts.read_json(key), artifacts.uri(key))
    ref = VersionRef(challenger.model, version_name(training))
    if not registry.is_published(ref):
        with tempfile.TemporaryDirectory(prefix="mnist-version-") as tmp:
            _stage(Path(tmp), artifacts, prefix, training)
            _check_staged_serving(Path(tmp), data)
            metrics = {
                "accuracy": challenger.accuracy,
                "loss": challenger.loss,
                "test_hash": challenger.test_hash,
            }
            metadata = _metadata(training, artifacts) | {"metrics": metrics, "run": lineage or {}}
            _write_model_card(Path(tmp), ref, metadata, verdict, training)
            registry.publish(ref, Path(tmp), metadata, f"run {run_id}" if run_id else "pipeline", run_id)
    return ref


def _stage(target: Path, artifacts: Storage, prefix: str, training: TrainingRecord) -> None:
    for name in _RUN_FILES:
        (target / name).write_bytes(artifacts.read_bytes(f"{prefix}/{name}"))
    # What is published must be the very model that was trained and evaluated.
    model = read_verified(artifacts, f"{prefix}/model.keras", training.model_sha256)
    (target / "model.keras").write_bytes(model)
    artifacts.download_prefix(f"{prefix}/saved_model", target / "saved_model")
    if artifacts.list_keys(f"{prefix}/{REPORT_DIR}/"):  # runs evaluated before reports existed have none
        artifacts.download_prefix(f"{prefix}/{REPORT_DIR}", target / REPORT_DIR)


def _write_model_card(
    staged: Path,
    ref: VersionRef,
    metadata: dict[str, Any],
    verdict: Verdict | None,
    training: TrainingRecord,
) -> None:
    # Written before `publish`, so the card is one of the files whose sha256 the commit mark lists.
    metrics = json.loads((staged / "metrics.json").read_text())
    identity = {"model": ref.model, "version": ref.version}
    (staged / MODEL_CARD_FILE).write_text(
        render_model_card(
            metadata | identity, metrics, verdict.to_dict() if verdict else None, training.to_dict()
        )
    )


def _check_staged_serving(staged: Path, data: MnistData) -> None:
    """The exported SavedModel must serve what the Keras model predicts, in a clean process."""
    model = load_model_bytes((staged / "model.keras").read_bytes())
    probe = data.x_test[:PROBE_IMAGES]
    check_serving(staged / "saved_model", probe, predict(model, probe))


def _metadata(training: TrainingRecord, artifacts: Storage) -> dict[str, Any]:
    return {
        "data_flags": _data_flags(artifacts, training.data_hash),
        "data_hash": training.data_hash,
        "manifest_hash": training.manifest_hash,
        "params": {"model": training.model_config, "training": training.train_config},
        "seed": training.seed,
        "airflow_run_id": training.run_id,
        "trained_at": training.trained_at,
        "initialized_from": training.initialized_from,
        "initialization": training.initialization,
        "device": {
            "replicas": training.replicas,
            "devices": training.devices,
            "precision": training.precision,
        },
        "library_versions": _library_versions(),
    } | _optional_metadata(training)


def _optional_metadata(training: TrainingRecord) -> dict[str, Any]:
    return _sweep_metadata(training) | _cache_metadata(training)


def _cache_metadata(training: TrainingRecord) -> dict[str, Any]:
    """The training's cache key and environment (code hash, libraries, device), which `verify`
    compares a retraining with, and the run it was reused from when the step cache reused it (not
    trained in `airflow_run_id`); nothing for a training recorded before the cache."""
    facts = {
        "training_key": training.cache_key,
        "environment": training.environment.to_dict() if training.environment else None,
        "reused_from": training.reused_from,
    }
    return {name: value for name, value in facts.items() if value}


def _sweep_metadata(training: TrainingRecord) -> dict[str, Any]:
    """A sweep's winner: which trial it was and the table of every trial it won among (on the
    validation split); nothing outside a sweep."""
    if not training.trials:
        return {}
    return {
        "winning_trial": training.trial.index if training.trial else None,
        "trials": [row.to_dict() for row in training.trials],
    }


def _data_flags(artifacts: Storage, data_hash: str) -> list[dict[str, Any]]:
    """The flags (a skewed label histogram, say) of every shard in the training snapshot."""
    sources = read_manifest(artifacts, data_hash).get("sources", [])
    return [{"uri": source["uri"], "flags": source["flags"]} for source in sources if source.get("flags")]


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions
