"""The pipeline's steps, as plain functions: `process_new_data` (the shards that landed under
`incoming/`, checked and placed), `ingest`, `train` (once per trial of a sweep), `select`
(a sweep's best trial, on validation), `evaluate`, `promote`, then
`release` (the champion moved: by the gate, or by a person's approval) or `decline` (a person
rejected the candidate, or did not answer in time).

Airflow tasks and the `mnist-pipeline` CLI both call these. Each step takes and returns small
records (URIs, hashes, metrics: what XCom may carry; `to_dict` at the XCom boundary) and writes
its full record under `<artifacts>/runs/<run id>/`, so any step can be re-run or inspected alone.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mnist_pipeline import cache as step_cache
from mnist_pipeline import lineage
from mnist_pipeline.config import PipelineSettings, TrainConfig
from mnist_pipeline.data.incoming import ShardReport
from mnist_pipeline.data.label_check import Champion
from mnist_pipeline.data.mnist import MnistData, split_validation
from mnist_pipeline.data.snapshot import SnapshotInfo, read_snapshot, write_snapshot
from mnist_pipeline.errors import ConfigError, RegistryError
from mnist_pipeline.evaluation.record import EvaluationRecord
from mnist_pipeline.hashing import read_verified, sha256_hex
from mnist_pipeline.registry.approval import ApprovalAnswer, decline_candidate, released
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.promotion import NEW_DATA_PREDICTIONS, PromotionOutcome, promote  # 4th step
from mnist_pipeline.registry.records import HistoryEvent
from mnist_pipeline.registry.release import Release
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.runs import model_key, run_key, trial_key, utc_now
from mnist_pipeline.storage import Storage, open_storage
from mnist_pipeline.training.architectures import MODEL_NAMES, get_model_spec
from mnist_pipeline.training.cache_key import TrainingKey, training_key
from mnist_pipeline.training.record import TrainingRecord
from mnist_pipeline.training.sweeps import Trial
from mnist_pipeline.trials import SELECTED_ON, TrialResult, TrialTable, choose_winner
from mnist_pipeline.workers import hostname_of

__all__ = [
    "champion_for_labels",
    "decline",
    "evaluate",
    "ingest",
    "process_new_data",
    "promote",
    "release",
    "run_evaluations",
    "select",
    "train",
]

log = logging.getLogger(__name__)
_Split = tuple[np.ndarray, np.ndarray]  # images, labels


def process_new_data(settings: PipelineSettings, run_id: str) -> ShardReport:
    """Check and place every entry waiting under `<artifacts>/incoming/` (`data.incoming`), judged
    against base MNIST and, when the registry has a champion, its labels against the champion's
    confident predictions; returns the `ShardReport`."""
    from mnist_pipeline.data.incoming import process_incoming
    from mnist_pipeline.data.mnist import load_mnist

    # The yardstick: no test digit may leak into training.
    base = load_mnist(settings.source, settings.keras_home)
    champion = champion_for_labels(settings, base)
    return process_incoming(open_storage(settings.artifacts_uri, settings), run_id, base, champion, settings)


def champion_for_labels(settings: PipelineSettings, base: MnistData) -> Champion | None:
    """The registry's champion as the label check uses it (None: no champion yet). Its model is
    loaded only when the check first predicts, so a run with nothing to check never imports
    TensorFlow; its per-class error comes from the test predictions it was published with."""
    registry = Registry.from_settings(settings)
    pointer = registry.champion()
    if pointer is None:
        return None
    ref = VersionRef(pointer.model, pointer.version)
    return Champion(str(ref), _champion_predictor(registry, ref), _class_error(registry, ref, base))


def _champion_predictor(registry: Registry, ref: VersionRef) -> Callable[[np.ndarray], np.ndarray]:
    """The champion's probabilities for a batch of images; its model is read (sha256-verified) and
    loaded on the first call, once per run."""
    loaded: list[Any] = []

    def predict(images: np.ndarray) -> np.ndarray:
        from mnist_pipeline.evaluation.metrics import predict_probabilities
        from mnist_pipeline.training.model_io import load_model_bytes

        if not loaded:
            loaded.append(load_model_bytes(registry.verified_file(ref, "model.keras")))
        return predict_probabilities(loaded[0], images)

    return predict


def _class_error(registry: Registry, ref: VersionRef, base: MnistData) -> tuple[float, ...] | None:
    """The champion's test error on each true class, when it was measured on `base`'s test set."""
    try:
        measured_on = registry.metadata(ref).get("metrics", {}).get("test_hash")
        predicted = registry.predictions(ref)
    except RegistryError as exc:
        log.warning("the champion %s has no readable test predictions (%s): its error is unknown", ref, exc)
        return None
    if measured_on != base.test_hash() or len(predicted) != len(base.y_test):
        log.warning("the champion %s was measured on another test set: its error is unknown", ref)
        return None
    errors = []
    for digit in range(10):
        mine = base.y_test == digit
        errors.append(float((predicted[mine] != digit).mean()) if mine.any() else 0.0)
    return tuple(errors)


def ingest(settings: PipelineSettings, run_id: str) -> SnapshotInfo:
    """Load and validate MNIST from the source, add accepted new shards, store it all as a
    content-addressed snapshot with a manifest of its sources."""
    from mnist_pipeline.data.training_set import build_training_set

    artifacts = open_storage(settings.artifacts_uri, settings)
    data, sources = build_training_set(settings, artifacts)
    snapshot = write_snapshot(data, artifacts, settings.source, sources)
    lineage.ingested(snapshot, sources)  # OpenLineage, when an Airflow task runs this
    artifacts.write_json(f"{run_key(run_id)}/ingest.json", snapshot.to_dict() | {"run_id": run_id})
    log.info(
        "ingested %s: %d train / %d test images, hash %s",
        settings.source,
        snapshot.train_images,
        snapshot.test_images,
        snapshot.data_hash,
    )
    return snapshot


def train(
    model_name: str,
    snapshot: SnapshotInfo,
    train_config: TrainConfig,
    settings: PipelineSettings,
    run_id: str,
    warm_start: bool = False,
    trial: Trial | None = None,
    use_cache: bool = True,
) -> TrainingRecord:
    """Train `model_name` on the snapshot; store `model.keras` and `training.json` in the run.

    A training with the same key (`training.cache_key`) finished in an earlier run is reused
    instead (`mnist_pipeline.cache`), unless `use_cache` is off; a training done here is recorded
    for later runs either way.

    With `warm_start`, the model begins from the champion's weights when the champion is the same
    architecture (else it starts cold, and the record says why). Checkpointed after every epoch
    under `<run>/<model>/checkpoint/`: a retry of a killed attempt resumes from the last epoch.
    A sweep's `trial` overrides the model's and the run's settings and trains under its own
    `<run>/<model>/trials/<index>/` (checkpoint included); its record carries its validation
    scores and the worker that trained it, for `select`."""
    from mnist_pipeline.training.checkpoint import ArtifactCheckpoint
    from mnist_pipeline.training.trainer import train_model

    get_model_spec(model_name)  # fail before loading any data on an unknown name
    trial = trial or Trial(model_name, 0)
    if trial.model != model_name:
        raise ConfigError(f"trial {trial.index} is one of {trial.model!r}, not of {model_name!r}")
    train_config, model_settings = trial.configs(train_config)
    start = (
        _initialisation(model_name, train_config, settings, model_settings)
        if warm_start
        else _Start.cold("not asked for")
    )
    train_config = replace(train_config, warm_start=start.weights is not None)
    artifacts = open_storage(settings.artifacts_uri, settings)
    prefix = trial.key(run_id)
    fingerprint = _fingerprint(snapshot, train_config, start, trial)
    key = training_key(model_name, fingerprint, train_config, model_settings, settings.onednn_env())
    reused = _reused(artifacts, key, prefix, run_id, snapshot, trial) if use_cache else None
    if reused is not None:
        return reused
    train_split, val_split = _splits(artifacts, snapshot.data_hash, train_config)
    checkpoint = ArtifactCheckpoint(artifacts, f"{prefix}/checkpoint", fingerprint)
    result = train_model(
        model_name,
        train_split,
        val_split,
        train_config,
        checkpoint=checkpoint,
        initial_weights=start.weights,
        model_settings=model_settings,
        onednn_env=settings.onednn_env(),
    )
    facts = _training_facts(result, train_config, start, key)
    if trial.swept:
        facts["trial"] = _trial_result(trial, result, val_split, settings.worker_name)
    record = _stored_training(artifacts, prefix, result, snapshot, run_id, model_name, facts)
    step_cache.remember(artifacts, key, record, prefix)  # only now: its model and record are stored
    checkpoint.clear()  # the model is stored: nothing is left to resume
    lineage.trained(snapshot, record)
    return record


def _reused(
    artifacts: Storage, key: TrainingKey, prefix: str, run_id: str, snapshot: SnapshotInfo, trial: Trial
) -> TrainingRecord | None:
    """The training an earlier run finished with `key`, copied into this run; None: train it."""
    index = trial.index if trial.swept else None
    record = step_cache.reuse_training(artifacts, key, prefix, run_id, snapshot.manifest_hash or None, index)
    if record is not None:
        lineage.trained(snapshot, record)
    return record


def _fingerprint(snapshot: SnapshotInfo, train_config: TrainConfig, start: _Start, trial: Trial) -> dict:
    """What a checkpoint must have been written for to be resumed: the same data, settings and start."""
    fingerprint = {
        "data_hash": snapshot.data_hash,
        "train_config": asdict(train_config),
        "start": start.origin,
    }
    return (fingerprint | {"trial": trial.settings}) if trial.swept else fingerprint


def _stored_training(
    artifacts: Storage,
    prefix: str,
    result: Any,
    snapshot: SnapshotInfo,
    run_id: str,
    model_name: str,
    facts: dict[str, Any],
) -> TrainingRecord:
    """Store the trained model and its record (`training.json`, with every epoch's metrics) under
    `prefix`; returns the record."""
    from mnist_pipeline.training.model_io import model_to_bytes

    model_bytes = model_to_bytes(result.model)
    artifacts.write_bytes(f"{prefix}/model.keras", model_bytes)
    record = TrainingRecord.carried_over(
        result,
        model=model_name,
        run_id=run_id,
        data_hash=snapshot.data_hash,
        manifest_hash=snapshot.manifest_hash or None,
        model_uri=artifacts.uri(f"{prefix}/model.keras"),
        model_sha256=sha256_hex(model_bytes),
        **facts,
    )
    artifacts.write_json(f"{prefix}/training.json", record.to_dict() | {"history": result.history})
    return record


def _trial_result(trial: Trial, result: Any, val_split: _Split, worker_name: str) -> TrialResult:
    """A sweep trial's row: the validation scores of the weights it ships (those early stopping
    kept, averaged), its curves per epoch, how long it trained and on which worker."""
    from mnist_pipeline.data.tf_data import make_eval_dataset

    dataset = make_eval_dataset(*val_split, result.global_batch_size)
    scores = result.model.evaluate(dataset, verbose=0, return_dict=True)
    return TrialResult(
        index=trial.index,
        settings=trial.settings,
        val_accuracy=float(scores["accuracy"]),
        val_loss=float(scores["loss"]),
        epochs_run=result.epochs_run,
        train_seconds=round(result.train_seconds, 2),
        worker=hostname_of(worker_name),
        val_accuracy_per_epoch=[float(value) for value in result.history.get("val_accuracy", [])],
        val_loss_per_epoch=[float(value) for value in result.history.get("val_loss", [])],
    )


def select(
    model_name: str, trainings: Sequence[TrainingRecord], settings: PipelineSettings, run_id: str
) -> TrainingRecord:
    """The training of `model_name` that goes on to evaluation and the gate. Outside a sweep, the
    one training, unchanged. In a sweep, the trial best on the validation split (`choose_winner`;
    the test set is never looked at): every trial goes to `<run>/<model>/trials.json`, and the
    winner's model and record, carrying the trial table, to `<run>/<model>/`, where evaluation,
    the report and publication read them."""
    swept = sorted(
        ((training.trial, training) for training in trainings if training.trial is not None),
        key=lambda pair: pair[0].index,
    )
    if not swept:
        if len(trainings) != 1:
            raise ConfigError(f"{model_name}: {len(trainings)} trainings but no sweep; expected one")
        return trainings[0]
    results = [result for result, _ in swept]
    winner = choose_winner(results)
    artifacts = open_storage(settings.artifacts_uri, settings)
    prefix = model_key(run_id, model_name)
    table = TrialTable(model_name, run_id, winner.index, SELECTED_ON, results)
    artifacts.write_json(f"{prefix}/trials.json", table.to_dict())
    log.info(
        "%s: trial %d of %d wins on validation (accuracy %.4f, loss %.4f): %s",
        model_name,
        winner.index,
        len(results),
        winner.val_accuracy,
        winner.val_loss,
        winner.settings,
    )
    chosen = next(training for result, training in swept if result.index == winner.index)
    return _adopted(artifacts, prefix, replace(chosen, trials=[result.summary() for result in results]))


def _adopted(artifacts: Storage, prefix: str, winner: TrainingRecord) -> TrainingRecord:
    """The winning trial's model and record (with its per-epoch history), copied to the model's own
    `prefix`; the record now names the copy, whose bytes are the very model the trial trained."""
    assert winner.trial is not None, "only a sweep's trial is adopted"
    source = trial_key(winner.run_id, winner.model, winner.trial.index)
    model_bytes = read_verified(artifacts, f"{source}/model.keras", winner.model_sha256)
    artifacts.write_bytes(f"{prefix}/model.keras", model_bytes)
    record = replace(winner, model_uri=artifacts.uri(f"{prefix}/model.keras"))
    history = artifacts.read_json(f"{source}/training.json").get("history", {})
    artifacts.write_json(f"{prefix}/training.json", record.to_dict() | {"history": history})
    return record


def _splits(artifacts: Storage, data_hash: str, train_config: TrainConfig) -> tuple[_Split, _Split]:
    """The snapshot's (train, validation) split: seeded, carved from training data only."""
    data = read_snapshot(artifacts, data_hash)
    return split_validation(data.x_train, data.y_train, train_config.validation_fraction, train_config.seed)


def _training_facts(
    result: Any, train_config: TrainConfig, start: _Start, key: TrainingKey
) -> dict[str, Any]:
    """What the training record says of how the model trained, beyond what `result` carries: its
    cache key and environment too, which `verify` compares a retraining's with."""
    return {
        "trained_at": utc_now(),
        "epochs_after_resume": result.epochs_after_resume,
        "train_seconds": round(result.train_seconds, 2),
        "model_config": asdict(result.model_config),
        "train_config": asdict(train_config),
        "initialized_from": start.origin,
        "initialization": start.note,
        "cache_key": key.digest,
        "environment": key.environment,
    }


@dataclass(frozen=True)
class _Start:
    """How a training's weights begin: the champion's (with where they came from), or random."""

    weights: list[np.ndarray] | None
    origin: dict[str, str] | None
    note: str

    @classmethod
    def cold(cls, why: str) -> _Start:
        return cls(None, None, f"cold start: warm start {why}")


def _initialisation(
    model_name: str,
    train_config: TrainConfig,
    settings: PipelineSettings,
    model_settings: dict[str, Any] | None = None,
) -> _Start:
    """The champion's weights when it is the same architecture as `model_name`; else a cold start
    that says why (in the task log and the training record)."""
    from mnist_pipeline.training.model_io import load_model_bytes
    from mnist_pipeline.training.warm_start import weights_mismatch

    registry = Registry.from_settings(settings)
    champion = registry.champion()
    if champion is None or champion.model != model_name:
        why = (
            "impossible: no champion yet"
            if champion is None
            else (f"impossible: the champion {champion.model}/{champion.version} is another architecture")
        )
        log.warning("%s: %s", model_name, why)
        return _Start.cold(why)
    ref = VersionRef(champion.model, champion.version)
    weights = load_model_bytes(registry.verified_file(ref, "model.keras")).get_weights()
    mismatch = weights_mismatch(model_name, replace(train_config, warm_start=True), weights, model_settings)
    if mismatch:
        log.warning("%s: warm start impossible: the champion %s does not fit: %s", model_name, ref, mismatch)
        return _Start.cold(f"impossible: the champion {ref} does not fit ({mismatch})")
    log.info("%s starts from the weights of the champion %s", model_name, ref)
    origin = {"model": ref.model, "version": ref.version, "uri": registry.uri(ref)}
    return _Start(weights, origin, f"warm start from the champion {ref}")


def evaluate(training: TrainingRecord, settings: PipelineSettings) -> EvaluationRecord:
    """Evaluate a trained model on the fixed test set; store beside it `metrics.json`, the
    predicted labels (`predictions.npy`, which the promotion gate pairs with the champion's) and
    the SavedModel export for serving. A training reused from an earlier run (the step cache)
    takes that run's evaluation of the same model bytes on the same snapshot, copied."""
    from mnist_pipeline.evaluation.metrics import (
        labels_npy,
        metrics_from_probabilities,
        predict_probabilities,
    )

    artifacts = open_storage(settings.artifacts_uri, settings)
    reused = step_cache.reuse_evaluation(artifacts, training)
    if reused is not None:
        lineage.evaluated(reused, artifacts)
        return reused
    prefix = model_key(training.run_id, training.model)
    model = load_verified_model(artifacts, f"{prefix}/model.keras", training.model_sha256)
    data = read_snapshot(artifacts, training.data_hash)
    probabilities = predict_probabilities(model, data.x_test)
    metrics: dict[str, Any] = metrics_from_probabilities(probabilities, data.y_test) | {
        "test_hash": data.test_hash()
    }
    new_data_hash = data.new_data_hash()
    if new_data_hash:  # the held-out slice of newly landed data: the gate's second slice
        new_probabilities = predict_probabilities(model, data.x_new_test)
        metrics["new_data"] = metrics_from_probabilities(new_probabilities, data.y_new_test)
        metrics["new_data"]["slice_hash"] = new_data_hash
        artifacts.write_bytes(
            f"{prefix}/{NEW_DATA_PREDICTIONS}", labels_npy(new_probabilities.argmax(axis=1))
        )
    artifacts.write_json(f"{prefix}/metrics.json", metrics)
    artifacts.write_bytes(f"{prefix}/predictions.npy", labels_npy(probabilities.argmax(axis=1)))
    _export_to(artifacts, f"{prefix}/saved_model", model)
    _write_report(artifacts, prefix, model, data, probabilities, metrics)
    log.info("%s: test accuracy %.4f, loss %.4f", training.model, metrics["accuracy"], metrics["loss"])
    record = EvaluationRecord.carried_over(
        training,
        accuracy=metrics["accuracy"],
        loss=metrics["loss"],
        test_hash=metrics["test_hash"],
        new_data_accuracy=metrics.get("new_data", {}).get("accuracy"),
        new_data_hash=new_data_hash,
        metrics_uri=artifacts.uri(f"{prefix}/metrics.json"),
        trial=training.trial.summary() if training.trial else None,  # the sweep's winner, if any
    )
    artifacts.write_json(f"{prefix}/evaluation.json", record.to_dict())
    lineage.evaluated(record, artifacts)
    return record


def run_evaluations(artifacts: Storage, run_id: str) -> list[EvaluationRecord]:
    """The evaluation records of every model evaluated in `run_id`."""
    keys = [f"{model_key(run_id, name)}/evaluation.json" for name in MODEL_NAMES]
    return [
        EvaluationRecord.from_dict(artifacts.read_json(key), artifacts.uri(key))
        for key in keys
        if artifacts.exists(key)
    ]


def _write_report(
    artifacts: Storage, prefix: str, model: Any, data: MnistData, probabilities: np.ndarray, metrics: dict
) -> None:
    """The human-readable figures (`<prefix>/report/`), drawn from this very evaluation."""
    from mnist_pipeline.evaluation.reports import REPORT_DIR, write_report

    history = artifacts.read_json(f"{prefix}/training.json").get("history", {})
    write_report(
        artifacts, f"{prefix}/{REPORT_DIR}", model, data.x_test, data.y_test, probabilities, metrics, history
    )


def _export_to(artifacts: Storage, prefix: str, model: Any) -> None:
    from mnist_pipeline.training.model_io import export_saved_model

    artifacts.delete(prefix)  # a retried task must not leave files of an earlier export behind
    with tempfile.TemporaryDirectory() as tmp:
        artifacts.upload_dir(export_saved_model(model, Path(tmp) / "saved_model"), prefix)


def load_verified_model(storage: Storage, key: str, expected_sha256: str) -> Any:
    from mnist_pipeline.training.model_io import load_model_bytes

    return load_model_bytes(read_verified(storage, key, expected_sha256))


def release(
    outcome: PromotionOutcome, answer: ApprovalAnswer | None, settings: PipelineSettings, run_id: str
) -> Release | None:
    """What the `mnist_champion` asset announces: the version the gate made champion, or the
    candidate a person approved (the champion moves now, in one commit of the log). None: nothing moved."""
    registry = Registry.from_settings(settings)
    return released(registry, outcome, answer, run_id)


def decline(
    outcome: PromotionOutcome, answer: ApprovalAnswer, settings: PipelineSettings, run_id: str
) -> HistoryEvent:
    """A person rejected the run's candidate, or nobody answered in time: the champion stays."""
    registry = Registry.from_settings(settings)
    return decline_candidate(registry, outcome, answer, run_id)
