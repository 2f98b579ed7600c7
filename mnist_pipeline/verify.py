"""`mnist-pipeline verify`: retrain a published version from its recorded lineage, and say whether
the very same weights came out.

The version's `training.json` names everything its weights came from: the snapshot (by content
hash, in the artifacts store), the training configuration with its seed, a sweep trial's settings,
the version it was warm-started from, and the environment it trained in (`TrainingEnvironment`:
the training code's hash, the library versions, the device). The retraining runs with TensorFlow's
op determinism on, as every CPU training does (`trainer.use_op_determinism`), in the precision the
version trained in, and every weight array is compared bit for bit with the published model's.

The outcome is `reproduced` (every array bitwise equal), `differs` (with the largest difference and
why: the code, a library or the device differs, it resumed from a checkpoint, or else an op that is
not deterministic), or `refused` when it cannot be retrained at all (its snapshot is gone, the
version it started from is). Each is recorded beside the version (`registry.verification`) and
shown on its page.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from mnist_pipeline.config import PipelineSettings, TrainConfig
from mnist_pipeline.data.mnist import MnistData, split_validation
from mnist_pipeline.data.snapshot import read_snapshot, snapshot_uri
from mnist_pipeline.errors import DataError, RegistryError, StorageError, VerificationRefused
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.store import VersionRef, parse_ref
from mnist_pipeline.registry.verification import (
    DIFFERS,
    REFUSED,
    REPRODUCED,
    Verification,
    record_verification,
)
from mnist_pipeline.runs import utc_now
from mnist_pipeline.storage import Storage, open_storage
from mnist_pipeline.training.cache_key import TrainingEnvironment, current_environment
from mnist_pipeline.training.record import TrainingRecord
from mnist_pipeline.training.sweeps import Trial

__all__ = ["WeightComparison", "compare_weights", "resolve_version", "verify_version"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightComparison:
    """Two models' weights, array by array: how many are bitwise equal, the largest difference."""

    arrays: int
    identical: int
    max_abs_diff: float | None  # None: the arrays do not even have the same shapes

    @property
    def all_identical(self) -> bool:
        return self.max_abs_diff is not None and self.identical == self.arrays


def compare_weights(recorded: list[np.ndarray], retrained: list[np.ndarray]) -> WeightComparison:
    """Every array bitwise (dtype, shape and bytes), and the largest absolute difference."""
    if [(a.shape, a.dtype) for a in recorded] != [(b.shape, b.dtype) for b in retrained]:
        return WeightComparison(len(recorded), 0, None)
    identical = sum(a.tobytes() == b.tobytes() for a, b in zip(recorded, retrained, strict=True))
    largest = max(
        (
            float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
            for a, b in zip(recorded, retrained, strict=True)
        ),
        default=0.0,
    )
    return WeightComparison(len(recorded), identical, largest)


def verify_version(settings: PipelineSettings, version: str, actor: str) -> tuple[Verification, str]:
    """Retrain `version` (MODEL/VERSION, or a version name one model has) from its lineage,
    compare, and record the verification beside the version; returns it and where it is recorded."""
    registry = Registry.from_settings(settings)
    ref = resolve_version(registry, version)
    artifacts = open_storage(settings.artifacts_uri, settings)
    training = _recorded_training(registry, ref)
    try:
        verification = _retrained(registry, artifacts, ref, training, settings)
    except VerificationRefused as refusal:
        log.warning("%s cannot be retrained: %s", ref, refusal)
        verification = Verification(ref.model, ref.version, utc_now(), REFUSED, reasons=[str(refusal)])
    verification = replace(verification, actor=actor)
    return verification, record_verification(registry, verification)


def resolve_version(registry: Registry, text: str) -> VersionRef:
    """MODEL/VERSION as it is; a bare version name, the one published version of that name."""
    if "/" in text:
        return parse_ref(text)
    found = [ref for ref in registry.versions() if ref.version == text]
    if len(found) != 1:
        what = "no published version" if not found else f"{len(found)} published versions"
        raise RegistryError(
            f"{what} named {text!r} in registry {registry.storage.root_uri}; name MODEL/VERSION"
        )
    return found[0]


def _recorded_training(registry: Registry, ref: VersionRef) -> TrainingRecord:
    if not registry.is_published(ref):
        raise RegistryError(f"no published version {ref} in registry {registry.storage.root_uri}")
    payload = json.loads(registry.verified_file(ref, "training.json"))
    return TrainingRecord.from_dict(payload, f"{registry.uri(ref)}/training.json")


def _retrained(
    registry: Registry,
    artifacts: Storage,
    ref: VersionRef,
    training: TrainingRecord,
    settings: PipelineSettings,
) -> Verification:
    """Retrain, compare with the published weights, and judge."""
    from mnist_pipeline.evaluation.metrics import evaluate_model
    from mnist_pipeline.training.model_io import load_model_bytes, model_to_bytes

    data = _snapshot(artifacts, training)
    initial = _initial_weights(registry, training)
    result = _retrain(training, data, initial, settings.onednn_env())
    model = load_model_bytes(model_to_bytes(result.model))  # the weights as they would be stored
    published = load_model_bytes(registry.verified_file(ref, "model.keras"))
    comparison = compare_weights(published.get_weights(), model.get_weights())
    now = current_environment(result.precision, settings.onednn_env())
    reasons, notes = _findings(training, now, result, comparison)
    return Verification(
        ref.model,
        ref.version,
        utc_now(),
        REPRODUCED if comparison.all_identical else DIFFERS,
        reasons=reasons,
        notes=notes,
        arrays=comparison.arrays,
        identical_arrays=comparison.identical,
        max_abs_diff=comparison.max_abs_diff,
        recorded_accuracy=registry.metadata(ref).get("metrics", {}).get("accuracy"),
        accuracy=float(evaluate_model(model, data.x_test, data.y_test)["accuracy"]),
        train_seconds=round(result.train_seconds, 2),
        environment=now.to_dict(),
    )


def _snapshot(artifacts: Storage, training: TrainingRecord) -> MnistData:
    """The training's snapshot; refused when it is gone or no longer matches its hash."""
    where = snapshot_uri(artifacts, training.data_hash)
    try:
        return read_snapshot(artifacts, training.data_hash)
    except StorageError as exc:
        raise VerificationRefused(f"its training snapshot {where} is gone ({exc})") from exc
    except DataError as exc:
        raise VerificationRefused(
            f"its training snapshot {where} no longer holds the data it trained on ({exc})"
        ) from exc


def _initial_weights(registry: Registry, training: TrainingRecord) -> list[np.ndarray] | None:
    """The weights a warm start began from (the version named in its lineage); None: a cold start."""
    origin = training.initialized_from
    if not origin:
        return None
    from mnist_pipeline.training.model_io import load_model_bytes

    start = VersionRef(origin["model"], origin["version"])
    try:
        return load_model_bytes(registry.verified_file(start, "model.keras")).get_weights()
    except (RegistryError, StorageError) as exc:
        raise VerificationRefused(
            f"it was warm-started from {start}, whose model cannot be read ({exc})"
        ) from exc


def _retrain(
    training: TrainingRecord, data: MnistData, initial: list[np.ndarray] | None, onednn_env: dict
) -> Any:
    """The training again: its configuration, seed, trial settings and start, in its precision,
    on the same split of the same snapshot, with op determinism on."""
    import tensorflow as tf

    from mnist_pipeline.training.trainer import train_model

    tf.config.experimental.enable_op_determinism()
    known = {spec.name for spec in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in training.train_config.items() if k in known})
    config = replace(config, precision=training.precision)  # what "auto" chose then, wherever this runs
    settings: dict[str, Any] = {}
    if training.trial is not None:
        config, settings = Trial(training.model, training.trial.index, training.trial.settings, True).configs(
            config
        )
    train, val = split_validation(data.x_train, data.y_train, config.validation_fraction, config.seed)
    log.info(
        "retraining %s/%s (run %s) with op determinism", training.model, training.trained_at, training.run_id
    )
    started = time.perf_counter()
    result = train_model(
        training.model,
        train,
        val,
        config,
        initial_weights=initial,
        model_settings=settings,
        onednn_env=onednn_env,
    )
    log.info("retrained in %.1f s", time.perf_counter() - started)
    return result


def _findings(
    training: TrainingRecord, now: TrainingEnvironment, result: Any, comparison: WeightComparison
) -> tuple[list[str], list[str]]:
    """(why the weights differ, what differed without changing them)."""
    found = (
        training.environment.differences(now)
        if training.environment
        else ["the version records no training environment (trained before code hashes were recorded)"]
    )
    if json.loads(json.dumps(asdict(result.model_config), default=str)) != training.model_config:
        found.append("its configuration resolves differently now (the model's defaults changed)")
    if training.resumed_from_epoch:
        found.append(
            f"it resumed from a checkpoint after epoch {training.resumed_from_epoch}: the epochs after"
            " the resume drew their batches from a fresh input pipeline"
        )
    if comparison.max_abs_diff is None:
        found.insert(0, "the retrained model's weights have other shapes")
    if comparison.all_identical:
        return [], found
    if training.environment and not training.environment.device.get("op_determinism"):
        found.append("it trained without op determinism (on a GPU), where some ops are not deterministic")
    return found or [
        "an op that is not deterministic: the code, libraries, device and configuration are the same"
    ], []
