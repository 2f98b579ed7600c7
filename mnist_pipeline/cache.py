"""Step caching: a model whose training key matches a training finished in any earlier run is
reused, with its evaluation, instead of being trained again.

The key (`training.cache_key.TrainingKey`) is the training's checkpoint fingerprint (snapshot
hash, configuration with the seed, start, trial) made to hold across runs: with the model's
resolved configuration, the training code's hash, the library versions and the device. New data,
a changed parameter or changed code make a new key, so a new training.

    <artifacts>/cache/training/<key>.json     one finished training: where its model.keras and
                                              training.json are, their sha256, its run, the key's
                                              parts (`CacheEntry`)

`train` writes the entry create-if-absent once the model and its record are stored, never before
and never over another. A hit copies that model (sha256-verified) and its record into the run's
own folder, the record naming the run it came from (`reused_from`); `evaluate` then copies the
evaluation that run made of these very bytes on this very snapshot. Everything after reads the
run's folder as ever. The copy keeps the original's training time and sha256, so the registry
names it the original's version: a reused champion is the champion's own version, which the gate
keeps (identical predictions are better on no slice), and which a forced promotion finds published.

An entry whose model or record is gone or altered is removed, and the model is trained again (its
new entry then takes the place). The cache is no truth of anything: deleting `cache/` only costs
trainings.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace

from mnist_pipeline.errors import MnistPipelineError, StorageError
from mnist_pipeline.evaluation.record import EvaluationRecord
from mnist_pipeline.evaluation.reports import REPORT_DIR
from mnist_pipeline.hashing import read_verified
from mnist_pipeline.records import Record
from mnist_pipeline.registry.promotion import NEW_DATA_PREDICTIONS
from mnist_pipeline.runs import model_key, utc_now
from mnist_pipeline.storage import Storage
from mnist_pipeline.training.cache_key import TrainingKey
from mnist_pipeline.training.record import TrainingRecord

__all__ = ["CACHE_PREFIX", "CacheEntry", "entry_key", "remember", "reuse_evaluation", "reuse_training"]

log = logging.getLogger(__name__)
CACHE_PREFIX = "cache/training"
# What `evaluate` writes beside the model: copied for a reused training's evaluation.
_EVALUATION_FILES = ("metrics.json", "predictions.npy", NEW_DATA_PREDICTIONS)
_EVALUATION_FOLDERS = ("saved_model", REPORT_DIR)


@dataclass(frozen=True)
class CacheEntry(Record):
    """One finished training, by its key: where its model and record are in the artifacts store."""

    key: str  # the sha256 of `parts`
    model: str
    run_id: str  # the run that trained it
    prefix: str  # its model.keras and training.json, in the artifacts store
    model_sha256: str
    trained_at: str
    recorded_at: str
    parts: TrainingKey  # what the key was made of: a later miss can be compared with it


def entry_key(digest: str) -> str:
    return f"{CACHE_PREFIX}/{digest}.json"


def remember(artifacts: Storage, key: TrainingKey, record: TrainingRecord, prefix: str) -> bool:
    """Record the training stored under `prefix` as the one for `key`; call only once its model and
    record are stored. False: an entry for the key was there already (it is left as it is)."""
    entry = CacheEntry(
        key.digest,
        record.model,
        record.run_id,
        prefix,
        record.model_sha256,
        record.trained_at,
        utc_now(),
        key,
    )
    payload = json.dumps(entry.to_dict(), indent=2, sort_keys=True).encode()
    created = artifacts.create_if_absent(entry_key(key.digest), payload)
    if created:
        log.info("%s: recorded in the step cache as %s", record.model, artifacts.uri(entry_key(key.digest)))
    return created


def reuse_training(
    artifacts: Storage,
    key: TrainingKey,
    prefix: str,
    run_id: str,
    manifest_hash: str | None = None,
    trial_index: int | None = None,
) -> TrainingRecord | None:
    """The training finished earlier with `key`, copied to `prefix` for `run_id` (a sweep's trial
    as its index in this run); None when there is none and the model must be trained."""
    entry = _entry(artifacts, key.digest)
    if entry is None:
        log.info("%s: no earlier training has the key %s: training it", key.model, key.digest[:12])
        return None
    stored = _stored(artifacts, entry)
    if stored is None:
        return None
    model_bytes, source, history = stored
    if entry.prefix == prefix:  # this very step, run again: its own training is the answer
        log.info("%s: trained already in this run (cache key %s)", key.model, key.digest[:12])
        return source
    record = replace(
        source,
        run_id=run_id,
        model_uri=artifacts.uri(f"{prefix}/model.keras"),
        manifest_hash=manifest_hash or source.manifest_hash,
        trial=replace(source.trial, index=trial_index)
        if source.trial and trial_index is not None
        else source.trial,
        cache_key=key.digest,
        reused_from=_origin(artifacts, entry),
    )
    artifacts.write_bytes(f"{prefix}/model.keras", model_bytes)
    artifacts.write_json(f"{prefix}/training.json", record.to_dict() | {"history": history})
    log.info(
        "%s: reused from run %s, not trained again: it trained there at %s on the same snapshot, with"
        " the same configuration, seed, code, libraries and device (cache key %s)",
        key.model,
        entry.run_id,
        entry.trained_at,
        key.digest[:12],
    )
    return record


def _origin(artifacts: Storage, entry: CacheEntry) -> dict[str, str]:
    return {
        "run_id": entry.run_id,
        "model_uri": artifacts.uri(f"{entry.prefix}/model.keras"),
        "cache_key": entry.key,
        "trained_at": entry.trained_at,
    }


def _entry(artifacts: Storage, digest: str) -> CacheEntry | None:
    """The entry for `digest`; None when there is none, or it is unreadable (then removed)."""
    key = entry_key(digest)
    if not artifacts.exists(key):
        return None
    try:
        entry = CacheEntry.from_dict(artifacts.read_json(key), artifacts.uri(key), StorageError)
    except StorageError as exc:
        return _dropped(artifacts, digest, f"its entry is unreadable ({exc})")
    if entry.key != digest:
        return _dropped(artifacts, digest, f"its entry names another key ({entry.key})")
    return entry


def _stored(artifacts: Storage, entry: CacheEntry) -> tuple[bytes, TrainingRecord, dict] | None:
    """The entry's model bytes (sha256-verified), record and per-epoch history; None when any is
    gone or altered (the entry is then removed)."""
    try:
        model_bytes = read_verified(
            artifacts, f"{entry.prefix}/model.keras", entry.model_sha256, StorageError
        )
        payload = artifacts.read_json(f"{entry.prefix}/training.json")
        source = TrainingRecord.from_dict(
            payload, artifacts.uri(f"{entry.prefix}/training.json"), StorageError
        )
    except MnistPipelineError as exc:
        return _dropped(artifacts, entry.key, f"run {entry.run_id}'s training is gone or altered ({exc})")
    if source.model_sha256 != entry.model_sha256:
        return _dropped(artifacts, entry.key, f"run {entry.run_id}'s training.json names another model")
    return model_bytes, source, payload.get("history", {})


def _dropped(artifacts: Storage, digest: str, why: str) -> None:
    log.warning("step cache %s: %s; removing the entry and training the model", digest[:12], why)
    artifacts.delete(entry_key(digest))


def reuse_evaluation(artifacts: Storage, training: TrainingRecord) -> EvaluationRecord | None:
    """A reused training's evaluation: the one its run made of these very model bytes on this very
    snapshot, copied into this run's folder; None when there is none (then `evaluate` evaluates)."""
    if not training.reused_from:
        return None
    source = model_key(training.reused_from["run_id"], training.model)
    stored = _stored_evaluation(artifacts, source)
    if stored is None or (stored.model_sha256, stored.data_hash) != (
        training.model_sha256,
        training.data_hash,
    ):
        log.info("%s: no evaluation of the reused model in run %s: evaluating it", training.model, source)
        return None
    target = model_key(training.run_id, training.model)
    _copy_evaluation(artifacts, source, target)
    record = replace(
        stored,
        run_id=training.run_id,
        model_uri=training.model_uri,
        metrics_uri=artifacts.uri(f"{target}/metrics.json"),
        trial=training.trial.summary() if training.trial else None,
        trials=training.trials,
        reused_from=training.reused_from,
    )
    artifacts.write_json(f"{target}/evaluation.json", record.to_dict())
    log.info(
        "%s: evaluation reused from run %s: test accuracy %.4f, loss %.4f",
        training.model,
        training.reused_from["run_id"],
        record.accuracy,
        record.loss,
    )
    return record


def _stored_evaluation(artifacts: Storage, source: str) -> EvaluationRecord | None:
    key = f"{source}/evaluation.json"
    try:
        return EvaluationRecord.from_dict(artifacts.read_json(key), artifacts.uri(key), StorageError)
    except StorageError:
        return None  # never evaluated, or no longer there


def _copy_evaluation(artifacts: Storage, source: str, target: str) -> None:
    """What `evaluate` wrote under `source`, copied under `target` (a folder emptied first, as a
    retried evaluation's export is)."""
    for name in _EVALUATION_FILES:
        if artifacts.exists(f"{source}/{name}"):
            artifacts.copy(f"{source}/{name}", f"{target}/{name}")
    for folder in _EVALUATION_FOLDERS:
        artifacts.delete(f"{target}/{folder}")
        for key in artifacts.list_keys(f"{source}/{folder}/"):
            artifacts.copy(key, f"{target}{key[len(source) :]}")
