"""Promote the run's best model, only when the gate says it beats the champion.

Order of work, so that no reader ever sees a half-written registry:
1. gate: the challenger's predictions against the champion's on every slice (`mnist_test`, and
   `new_data` once new labelled data has landed; the champion is evaluated on a slice it has not
   seen, its predictions cached by the slice's hash), or the floor when there is no champion;
2. serving check: the exported SavedModel, loaded in a clean process, predicts what was evaluated;
3. publish: every file of the version, then `metadata.json` (the commit mark);
4. move `champion.json` by compare-and-swap; a lost race re-reads the champion and re-gates;
5. record the decision in the append-only history, promoted or not.
A retried task whose run already promoted finds its history event and does nothing.

When a person must approve (`PromotionOptions.approval`), step 4 is left to them: the published
version becomes the alias `candidate`, the decision is recorded as `pending`, and `approval`
moves the champion once they approve.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.data.mnist import MnistData
from mnist_pipeline.data.snapshot import read_snapshot
from mnist_pipeline.errors import ConfigError
from mnist_pipeline.evaluation.metrics import labels_from_npy, labels_npy
from mnist_pipeline.evaluation.record import EvaluationRecord
from mnist_pipeline.evaluation.serving import ServingCheckError
from mnist_pipeline.records import Record
from mnist_pipeline.registry.aliases import CANDIDATE, read_alias, set_alias
from mnist_pipeline.registry.gate import MNIST_TEST, NEW_DATA, GateConfig, Slice, Verdict, judge
from mnist_pipeline.registry.history import find_promotion, record_event, stamp
from mnist_pipeline.registry.publication import publish_challenger
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent, VersionSummary
from mnist_pipeline.registry.store import ModelRegistry, VersionRef
from mnist_pipeline.runs import model_key, run_key, utc_now
from mnist_pipeline.storage import Storage, open_storage

__all__ = [
    "APPROVAL_PENDING",
    "NEW_DATA_PREDICTIONS",
    "PromotionOptions",
    "PromotionOutcome",
    "pick_challenger",
    "promote",
]

log = logging.getLogger(__name__)
NEW_DATA_PREDICTIONS = "new_data_predictions.npy"  # beside predictions.npy in the run's model folder
PREDICTION_CACHE = "prediction-cache"  # <artifacts>/prediction-cache/<model>/<version>/<slice>-<hash>.npy
APPROVAL_PENDING = "pending"  # a history event's `approval` while the candidate waits for a person


@dataclass(frozen=True)
class PromotionOptions:
    gate: GateConfig = field(default_factory=GateConfig)
    force: bool = False  # bypass the gate (recorded as forced)
    dry_run: bool = False  # decide and report, write nothing to the registry
    trigger: str = "manual"  # who or what started the run: scheduled, manual, asset_triggered, cli...
    run_conf: dict[str, Any] = field(default_factory=dict)  # the run's parameters, for lineage
    approval: bool = False  # a person approves the move: publish it as the candidate, move nothing


@dataclass(frozen=True)
class PromotionOutcome(Record):
    """What the promote step returns through XCom: the decision and its figures, nothing bulky."""

    promoted: bool
    model: str
    verdict: Verdict
    version: str | None = None
    forced: bool = False
    dry_run: bool = False
    metrics: dict[str, float] | None = None
    previous_champion: VersionSummary | None = None
    noop: bool = False  # a retried task found its run's promotion already done
    approval: str | None = None  # pending: published as the candidate, waiting for a person

    @property
    def awaiting_approval(self) -> bool:
        return self.approval == APPROVAL_PENDING and self.version is not None

    @classmethod
    def of(cls, event: HistoryEvent, noop: bool = False) -> PromotionOutcome:
        return cls.carried_over(event, noop=noop)


def pick_challenger(evaluations: list[EvaluationRecord]) -> EvaluationRecord:
    """The evaluation with the best test accuracy (lower loss breaks a tie)."""
    if not evaluations:
        raise ConfigError("promote needs at least one evaluated model; none was given")
    return max(evaluations, key=lambda evaluation: evaluation.rank)


@dataclass
class _Context:
    registry: ModelRegistry
    artifacts: Storage
    challenger: EvaluationRecord
    data: MnistData
    run_id: str
    options: PromotionOptions
    champion_models: dict[VersionRef, Any] = field(default_factory=dict)  # loaded once per promotion


def promote(
    evaluations: list[EvaluationRecord],
    settings: PipelineSettings,
    run_id: str,
    options: PromotionOptions | None = None,
) -> PromotionOutcome:
    options = options or PromotionOptions()
    challenger = pick_challenger(evaluations)
    registry = ModelRegistry(open_storage(settings.registry_uri))
    artifacts = open_storage(settings.artifacts_uri)
    done = find_promotion(registry.storage, run_id, challenger.model)
    if done is None and options.approval:
        done = _pending_candidate(registry, artifacts, run_id, challenger.model)
    if done is not None and not options.dry_run:
        log.info("run %s already promoted %s/%s: nothing to do", run_id, done.model, done.version)
        return PromotionOutcome.of(done, noop=True)
    data = read_snapshot(artifacts, challenger.data_hash)
    ctx = _Context(registry, artifacts, challenger, data, run_id, options)
    event = registry.move_champion(lambda champion: _gate(ctx, champion))
    event = stamp(event) if options.dry_run else record_event(registry.storage, event)
    if event.approval == APPROVAL_PENDING:
        _name_candidate(registry, event)
    candidates = [evaluation.to_dict() for evaluation in sorted(evaluations, key=lambda e: -e.accuracy)]
    artifacts.write_json(f"{run_key(run_id)}/promotion.json", event.to_dict() | {"candidates": candidates})
    log.info("promotion of %s: %s", challenger.model, event.verdict.reason)
    return PromotionOutcome.of(event)


def _gate(ctx: _Context, champion: ChampionPointer | None) -> tuple[ChampionPointer | None, HistoryEvent]:
    """One round of the compare-and-swap: judge against `champion`; publish and point when it wins."""
    verdict = judge(_slices(ctx, champion), ctx.options.gate, ctx.options.force)
    if ctx.options.dry_run or not verdict.promote:
        return None, _event(ctx, verdict, champion, promoted=False)
    try:
        lineage = {"trigger": ctx.options.trigger, "conf": ctx.options.run_conf}
        published = publish_challenger(
            ctx.registry, ctx.artifacts, ctx.challenger, ctx.data, lineage, verdict
        )
    except ServingCheckError as exc:
        blocked = replace(verdict, blocked=str(exc))
        record_event(ctx.registry.storage, _event(ctx, blocked, champion, promoted=False))
        raise
    if ctx.options.approval:  # a person moves the champion, once they approve (`approval`)
        return None, _event(ctx, verdict, champion, False, published.version, APPROVAL_PENDING)
    pointer = ChampionPointer.for_version(
        VersionSummary(published.model, published.version, _headline(ctx.challenger)),
        ctx.registry.uri(published),
        utc_now(),
        verdict.reason,
        forced=verdict.forced,
        run_id=ctx.run_id,
        test_hash=ctx.challenger.test_hash,
        data_hash=ctx.challenger.data_hash,
    )
    event = _event(ctx, verdict, champion, promoted=True, version=published.version)
    return pointer.succeeding(champion), event


def _slices(ctx: _Context, champion: ChampionPointer | None) -> list[Slice]:
    """Both models' predictions on every slice: mnist_test, then new_data once there is some."""
    ref = VersionRef(champion.model, champion.version) if champion else None
    data, prefix = ctx.data, _prefix(ctx)
    theirs = None
    if ref is not None and champion is not None and champion.test_hash == data.test_hash():
        theirs = ctx.registry.predictions(ref)  # measured at its own evaluation, on this very test set
    elif ref is not None:
        log.info("test set changed since %s was measured: re-evaluating it", ref)
        theirs = _champion_on(ctx, ref, MNIST_TEST, data.x_test, data.test_hash())
    slices = [Slice(MNIST_TEST, data.y_test, _labels(ctx.artifacts, f"{prefix}/predictions.npy"), theirs)]
    new_data_hash = data.new_data_hash()
    if new_data_hash:
        ours = _labels(ctx.artifacts, f"{prefix}/{NEW_DATA_PREDICTIONS}")
        theirs = _champion_on(ctx, ref, NEW_DATA, data.x_new_test, new_data_hash) if ref else None
        slices.append(Slice(NEW_DATA, data.y_new_test, ours, theirs))
    return slices


def _champion_on(
    ctx: _Context, ref: VersionRef, name: str, images: np.ndarray, slice_hash: str
) -> np.ndarray:
    """The champion's predicted labels on a slice, cached by the slice's hash in the artifacts store
    (the slice grows as shards arrive; each of its states is evaluated once)."""
    key = f"{PREDICTION_CACHE}/{ref.model}/{ref.version}/{name}-{slice_hash}.npy"
    if ctx.artifacts.exists(key):
        return _labels(ctx.artifacts, key)
    from mnist_pipeline.evaluation.metrics import predict_probabilities
    from mnist_pipeline.training.model_io import load_model_bytes

    if ref not in ctx.champion_models:
        ctx.champion_models[ref] = load_model_bytes(ctx.registry.verified_file(ref, "model.keras"))
    labels = predict_probabilities(ctx.champion_models[ref], images).argmax(axis=1)
    ctx.artifacts.write_bytes(key, labels_npy(labels))
    log.info("evaluated champion %s on the %s slice (%d images): cached as %s", ref, name, len(images), key)
    return labels


def _event(
    ctx: _Context,
    verdict: Verdict,
    champion: ChampionPointer | None,
    promoted: bool,
    version: str | None = None,
    approval: str | None = None,
) -> HistoryEvent:
    return HistoryEvent(
        kind="gate",
        run_id=ctx.run_id,
        trigger=ctx.options.trigger,
        model=ctx.challenger.model,
        version=version,
        metrics=_headline(ctx.challenger),
        verdict=verdict,
        promoted=promoted,
        forced=verdict.forced and promoted,
        dry_run=ctx.options.dry_run,
        previous_champion=champion.summary() if champion else None,
        approval=approval,
    )


def _name_candidate(registry: ModelRegistry, event: HistoryEvent) -> None:
    """Point the alias `candidate` at the version waiting for approval."""
    ref = VersionRef(event.model, str(event.version))
    who, reason = f"gate of run {event.run_id}", f"awaiting approval: {event.verdict.reason}"
    set_alias(registry, CANDIDATE, ref, who, reason, run_id=event.run_id, metrics=event.metrics)


def _pending_candidate(
    registry: ModelRegistry, artifacts: Storage, run_id: str, model: str
) -> HistoryEvent | None:
    """The run's decision when it already named its version the candidate (a retried task)."""
    candidate = read_alias(registry, CANDIDATE)
    key = f"{run_key(run_id)}/promotion.json"
    ours = candidate is not None and (candidate.run_id, candidate.model) == (run_id, model)
    if candidate is None or not ours or not artifacts.exists(key):
        return None
    event = HistoryEvent.from_dict(artifacts.read_json(key), artifacts.uri(key))
    pending = event.approval == APPROVAL_PENDING and event.version == candidate.version
    return event if pending else None


def _headline(evaluation: EvaluationRecord) -> dict[str, float]:
    return {"accuracy": evaluation.accuracy, "loss": evaluation.loss}


def _prefix(ctx: _Context) -> str:
    return model_key(ctx.challenger.run_id, ctx.challenger.model)


def _labels(storage: Storage, key: str) -> np.ndarray:
    return labels_from_npy(storage.read_bytes(key))
