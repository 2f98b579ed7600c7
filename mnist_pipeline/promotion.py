"""Promote the run's best model to the registry, only when it beats the current champion.

Arguments are checked up front; publication is idempotent (a version is named by its training
time and model hash, so a retried task finds it already published); the champion pointer moves
only after the whole version, `metadata.json` last, is in the registry.
"""

from __future__ import annotations

import json
import logging
import platform
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.errors import ConfigError
from mnist_pipeline.pipeline import load_verified_model, run_key, utc_now
from mnist_pipeline.registry import ModelRegistry, VersionRef
from mnist_pipeline.storage import Storage, open_storage

__all__ = ["pick_challenger", "promote", "version_name"]

log = logging.getLogger(__name__)
_LIBRARIES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "google-cloud-storage", "apache-airflow")


def pick_challenger(evaluations: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation with the best test accuracy (lower loss breaks a tie)."""
    if not evaluations:
        raise ConfigError("promote needs at least one evaluated model; none was given")
    for evaluation in evaluations:
        missing = {"model", "run_id", "accuracy", "loss", "model_sha256"} - set(evaluation)
        if missing:
            raise ConfigError(f"evaluation of {evaluation.get('model')!r} lacks {sorted(missing)}")
    return max(evaluations, key=lambda e: (e["accuracy"], -e["loss"]))


def version_name(training: dict[str, Any]) -> str:
    """Sortable by time, unique by content: `20261127T224100Z-<sha256[:8]>`."""
    stamp = training["trained_at"].replace("-", "").replace(":", "")
    return f"{stamp}-{training['model_sha256'][:8]}"


def promote(evaluations: list[dict[str, Any]], settings: PipelineSettings, run_id: str) -> dict[str, Any]:
    challenger = pick_challenger(evaluations)
    artifacts = open_storage(settings.artifacts_uri)
    registry = ModelRegistry(open_storage(settings.registry_uri))
    champion = registry.champion()
    decision = _decide(challenger, champion)
    if decision["promoted"]:
        decision["version"] = _publish_and_point(registry, artifacts, challenger, run_id)
    decision |= {
        "run_id": run_id,
        "decided_at": utc_now(),
        "candidates": sorted(evaluations, key=lambda e: -e["accuracy"]),
        "champion": registry.champion(),
    }
    artifacts.write_json(f"{run_key(run_id)}/promotion.json", decision)
    log.info("promotion verdict for %s: %s", challenger["model"], decision["reason"])
    return {key: decision[key] for key in ("promoted", "model", "accuracy", "reason", "champion")}


def _decide(challenger: dict[str, Any], champion: dict[str, Any] | None) -> dict[str, Any]:
    accuracy = challenger["accuracy"]
    base = {"model": challenger["model"], "accuracy": accuracy}
    if champion is None:
        return base | {"promoted": True, "reason": "no champion yet"}
    if champion.get("run_id") == challenger["run_id"] and champion.get("model") == challenger["model"]:
        return base | {"promoted": False, "reason": "already promoted by this run"}
    best = champion["metrics"]["accuracy"]
    if accuracy > best:
        return base | {"promoted": True, "reason": f"accuracy {accuracy:.4f} beats champion {best:.4f}"}
    return base | {"promoted": False, "reason": f"accuracy {accuracy:.4f} does not beat champion {best:.4f}"}


def _publish_and_point(
    registry: ModelRegistry, artifacts: Storage, challenger: dict[str, Any], run_id: str
) -> str:
    prefix = f"{run_key(challenger['run_id'])}/{challenger['model']}"
    training = artifacts.read_json(f"{prefix}/training.json")
    metrics = artifacts.read_json(f"{prefix}/metrics.json")
    ref = VersionRef(challenger["model"], version_name(training))
    with tempfile.TemporaryDirectory() as tmp:
        _stage_version(Path(tmp), artifacts, prefix, training, metrics)
        registry.publish(ref, Path(tmp), _metadata(training, run_id))
    registry.set_champion(
        {
            "model": ref.model,
            "version": ref.version,
            "uri": registry.uri(ref),
            "metrics": {"accuracy": metrics["accuracy"], "loss": metrics["loss"]},
            "data_hash": training["data_hash"],
            "promoted_at": utc_now(),
            "run_id": run_id,
        }
    )
    return ref.version


def _stage_version(
    target: Path, artifacts: Storage, prefix: str, training: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """model.keras (verified), the serving SavedModel exported from it, metrics.json, training.json."""
    from mnist_pipeline.model_io import export_saved_model

    model = load_verified_model(artifacts, f"{prefix}/model.keras", training["model_sha256"])
    (target / "model.keras").write_bytes(artifacts.read_bytes(f"{prefix}/model.keras"))
    export_saved_model(model, target / "saved_model")
    (target / "metrics.json").write_text(_json(metrics))
    (target / "training.json").write_text(_json(training))


def _metadata(training: dict[str, Any], run_id: str) -> dict[str, Any]:
    return {
        "data_hash": training["data_hash"],
        "params": {"model": training["model_config"], "training": training["train_config"]},
        "seed": training["train_config"]["seed"],
        "airflow_run_id": run_id,
        "trained_at": training["trained_at"],
        "device": {"replicas": training["replicas"], "devices": training["devices"]},
        "library_versions": _library_versions(),
    }


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def _json(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=True)
