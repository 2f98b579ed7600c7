"""Promote the run's best model, only when the gate says it beats the champion.

Order of work, so that no reader ever sees a half-written registry:
1. gate: the challenger's predictions against the champion's on every slice (`mnist_test`, and
   `new_data` once new labelled data has landed; the champion is evaluated on a slice it has not
   seen, its predictions cached by the slice's hash), or the floor when there is no champion;
2. serving check: the exported SavedModel, loaded in a clean process, predicts what was evaluated;
3. publish: every file of the version, then `metadata.json` (the commit mark);
4. commit the decision (promoted, kept, or pending approval) to the registry's log, based on the
   champion it was judged against: the one write that decides. If the champion moved since, the
   commit is refused (`ConflictError`) and the task fails for Airflow to retry: the retry re-gates.
A retried task whose run already decided finds its decision's commit and judges nothing again:
it returns the same outcome, so release, asset event and serving export follow as they would have.

When a person must approve (`PromotionOptions.approval`), the commit points the alias `candidate`
at the published version and records the decision as `pending`; `approval` moves the champion
once they approve.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.data.mnist import MnistData
from mnist_pipeline.data.snapshot import read_snapshot
from mnist_pipeline.errors import ConfigError, RegistryError
from mnist_pipeline.evaluation.metrics import labels_from_npy, labels_npy
from mnist_pipeline.evaluation.record import EvaluationRecord
from mnist_pipeline.evaluation.serving import ServingCheckError
from mnist_pipeline.records import Record
from mnist_pipeline.registry.aliases import CANDIDATE
from mnist_pipeline.registry.client import Registry, moved_since
from mnist_pipeline.registry.gate import MNIST_TEST, NEW_DATA, GateConfig, Slice, Verdict, judge
from mnist_pipeline.registry.publication import publish_challenger
from mnist_pipeline.registry.records import AliasMove, ChampionPointer, Commit, HistoryEvent, VersionSummary
from mnist_pipeline.registry.state import CHAMPION, RegistryState, next_time
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.runs import model_key, run_key, utc_now
from mnist_pipeline.storage import Storage, open_storage

__all__ = [
    "APPROVAL_PENDING",
    "NEW_DATA_PREDICTIONS",
    "PromotionOptions",
    "PromotionOutcome",
    "pick_challenger",
    "promote",
    "why_not_promoted",
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
    run_conf: dict[str, Any] = field(default_factory=dict[str, Any])  # the run's parameters, for lineage
    approval: bool = False  # a person approves the move: publish it as the candidate, move nothing
    attempt: int | None = None  # the task's try, recorded in its commit


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
    registry: Registry
    artifacts: Storage
    challenger: EvaluationRecord
    data: MnistData
    run_id: str
    options: PromotionOptions
    # Loaded once per promotion.
    champion_models: dict[VersionRef, Any] = field(default_factory=dict[VersionRef, Any])


def promote(
    evaluations: list[EvaluationRecord],
    settings: PipelineSettings,
    run_id: str,
    options: PromotionOptions | None = None,
) -> PromotionOutcome:
    options = options or PromotionOptions()
    challenger = pick_challenger(evaluations)
    registry = Registry.from_settings(settings)
    artifacts = open_storage(settings.artifacts_uri, settings)
    state = registry.state()
    decided = state.decision_of(run_id, challenger.model)
    if decided is not None and not options.dry_run:
        event = _decision_event(registry, decided)
        log.info(
            "run %s already decided on %s (commit %d): %s", run_id, event.model, decided, event.verdict.reason
        )
        # What a killed try may not have written.
        _record_outcome(artifacts, run_id, event, evaluations, why_not_promoted(event, options))
        return PromotionOutcome.of(event, noop=True)
    data = read_snapshot(artifacts, challenger.data_hash)
    ctx = _Context(registry, artifacts, challenger, data, run_id, options)
    event = _decide(ctx, state)
    _record_outcome(artifacts, run_id, event, evaluations, why_not_promoted(event, options))
    log.info("promotion of %s: %s", challenger.model, event.verdict.reason)
    return PromotionOutcome.of(event)


def _decide(ctx: _Context, state: RegistryState) -> HistoryEvent:
    """Judge against the champion of `state`, publish when the gate allows, then commit the
    decision based on `state`: refused if the champion moved since (the gate is then re-run)."""
    champion = state.champion
    verdict = judge(_slices(ctx, champion), ctx.options.gate, ctx.options.force)
    if ctx.options.dry_run:
        return replace(_event(ctx, verdict, champion, promoted=False), time=next_time(""))
    if not verdict.promote:
        return _commit_decision(ctx, state.number, _event(ctx, verdict, champion, promoted=False))
    try:
        lineage = {"trigger": ctx.options.trigger, "conf": ctx.options.run_conf}
        published = publish_challenger(
            ctx.registry, ctx.artifacts, ctx.challenger, ctx.data, lineage, verdict, ctx.run_id
        )
    except ServingCheckError as exc:
        blocked = replace(verdict, blocked=str(exc))
        _commit_decision(ctx, state.number, _event(ctx, blocked, champion, promoted=False))
        raise
    if ctx.options.approval:  # a person moves the champion, once they approve (`approval`)
        pending = _event(ctx, verdict, champion, False, published.version, APPROVAL_PENDING)
        return _commit_decision(ctx, state.number, pending, _candidate_pointer(ctx, pending))
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
    return _commit_decision(ctx, state.number, event, (CHAMPION, pointer))


def _commit_decision(
    ctx: _Context, based_on: int, event: HistoryEvent, move: tuple[str, ChampionPointer] | None = None
) -> HistoryEvent:
    """The run's one gate decision, as a commit: `move` points an alias (the champion, or the
    candidate) at the published version. A decision the run already made is returned instead."""
    run_id, model = ctx.run_id, ctx.challenger.model

    def draft(state: RegistryState) -> Commit | None:
        if state.decision_of(run_id, model) is not None:
            return None
        moved_since(ctx.registry, state, CHAMPION, based_on, "this run's gate")
        moves = (
            [] if move is None else [AliasMove(move[0], move[1].succeeding(state.alias(move[0]).last_target))]
        )
        return Commit(
            0,
            "gate",
            "",
            f"run {run_id}",
            event.verdict.reason,
            based_on=based_on,
            run_id=run_id,
            try_number=ctx.options.attempt,
            model=model,
            event=event,
            moves=moves,
        )

    commit, state = ctx.registry.commit(draft)
    if commit is None:
        return _decision_event(ctx.registry, state.decision_of(run_id, model) or 0)
    assert commit.event is not None
    return commit.event


def _decision_event(registry: Registry, number: int) -> HistoryEvent:
    commit = registry.read_commit(number)
    if commit is None or commit.event is None:
        raise RegistryError(
            f"the registry's state names commit {number} as a gate decision, but it is unreadable"
        )
    return commit.event


def _candidate_pointer(ctx: _Context, pending: HistoryEvent) -> tuple[str, ChampionPointer]:
    """The alias `candidate` at the version waiting for approval."""
    ref = VersionRef(pending.model, str(pending.version))
    pointer = ChampionPointer.for_version(
        VersionSummary(ref.model, ref.version, dict(pending.metrics or {})),
        ctx.registry.uri(ref),
        utc_now(),
        f"awaiting approval: {pending.verdict.reason}",
        run_id=ctx.run_id,
        test_hash=ctx.challenger.test_hash,
        data_hash=ctx.challenger.data_hash,
        set_by=f"gate of run {ctx.run_id}",
    )
    return CANDIDATE, pointer


def _record_outcome(
    artifacts: Storage,
    run_id: str,
    event: HistoryEvent,
    evaluations: list[EvaluationRecord],
    why_not: str | None,
) -> None:
    """The run's promotion.json: derived from its decision, rewritten by a retry. Beside the event's
    fields: `candidates` (every evaluated model) and `why_not_promoted` (None when a version was
    promoted or awaits approval), which the summary and the run's page show."""
    candidates = [evaluation.to_dict() for evaluation in sorted(evaluations, key=lambda e: -e.accuracy)]
    extra = {"candidates": candidates, "why_not_promoted": why_not}
    artifacts.write_json(f"{run_key(run_id)}/promotion.json", event.to_dict() | extra)


def why_not_promoted(event: HistoryEvent, options: PromotionOptions) -> str | None:
    """Why the run's decision moved nothing, in words a user acts on; None when it promoted a
    version or published one for approval. Says so when approval was required but never asked:
    a person is asked only about a promotion the gate allows."""
    if event.promoted or event.approval == APPROVAL_PENDING:
        return None
    verdict = event.verdict
    if event.dry_run:
        would = "promoted" if verdict.promote else "kept the champion"
        return f"a dry run writes nothing to the registry; the gate would have {would} ({verdict.reason})"
    if verdict.blocked:
        why = f"the gate allowed {event.model}, but publishing it failed: {verdict.blocked}"
    elif verdict.rule == "floor":
        accuracy = f"{verdict.challenger_accuracy:.4f}" if verdict.challenger_accuracy is not None else "?"
        why = (
            f"there is no champion yet, and the run's best model, {event.model}, scored {accuracy} on the"
            f" fixed test set, below the {options.gate.floor:.2f} a first champion must reach. Train on"
            " more images (max_train_images 0: all of them) or for more epochs, or set force_promote"
        )
    else:
        why = f"the champion stays: {verdict.reason}"
    if options.approval:
        why += "; approval was required but not asked for: it is asked only when the gate allows a promotion"
    return why


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


def _headline(evaluation: EvaluationRecord) -> dict[str, float]:
    return {"accuracy": evaluation.accuracy, "loss": evaluation.loss}


def _prefix(ctx: _Context) -> str:
    return model_key(ctx.challenger.run_id, ctx.challenger.model)


def _labels(storage: Storage, key: str) -> np.ndarray:
    return labels_from_npy(storage.read_bytes(key))
