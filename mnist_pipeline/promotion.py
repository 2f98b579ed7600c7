"""Promote the run's best model, only when the gate says it beats the champion.

Order of work, so that no reader ever sees a half-written registry:
1. gate: the challenger's test predictions against the champion's (re-evaluated when the test set
   changed), margin + McNemar, or the floor when there is no champion;
2. serving check: the exported SavedModel, loaded in a clean process, predicts what was evaluated;
3. publish: every file of the version, then `metadata.json` (the commit mark);
4. move `champion.json` by compare-and-swap; a lost race re-reads the champion and re-gates;
5. record the decision in the append-only history, promoted or not.
A retried task whose run already promoted finds its history event and does nothing.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.data import MnistData
from mnist_pipeline.errors import ConfigError, RegistryError
from mnist_pipeline.gate import GateConfig, Verdict, judge
from mnist_pipeline.history import find_promotion, record_event, stamp
from mnist_pipeline.pipeline import run_key
from mnist_pipeline.publication import publish_challenger
from mnist_pipeline.registry import ModelRegistry, VersionRef, brief, chain_pointer
from mnist_pipeline.serving import ServingCheckError
from mnist_pipeline.snapshot import read_snapshot
from mnist_pipeline.storage import Storage, open_storage

__all__ = ["MAX_ATTEMPTS", "PromotionOptions", "pick_challenger", "promote"]

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 5  # compare-and-swap retries when other promotions keep moving the champion


@dataclass(frozen=True)
class PromotionOptions:
    gate: GateConfig = field(default_factory=GateConfig)
    force: bool = False  # bypass the gate (recorded as forced)
    dry_run: bool = False  # decide and report, write nothing to the registry
    trigger: str = "manual"  # who or what started the run: scheduled, manual, asset_triggered, cli...
    run_conf: dict[str, Any] = field(default_factory=dict)  # the run's parameters, for lineage


def pick_challenger(evaluations: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation with the best test accuracy (lower loss breaks a tie)."""
    if not evaluations:
        raise ConfigError("promote needs at least one evaluated model; none was given")
    for evaluation in evaluations:
        missing = {"model", "run_id", "accuracy", "loss", "model_sha256", "data_hash"} - set(evaluation)
        if missing:
            raise ConfigError(f"evaluation of {evaluation.get('model')!r} lacks {sorted(missing)}")
    return max(evaluations, key=lambda e: (e["accuracy"], -e["loss"]))


@dataclass
class _Context:
    registry: ModelRegistry
    artifacts: Storage
    challenger: dict[str, Any]
    data: MnistData
    run_id: str
    options: PromotionOptions


def promote(
    evaluations: list[dict[str, Any]],
    settings: PipelineSettings,
    run_id: str,
    options: PromotionOptions | None = None,
) -> dict[str, Any]:
    options = options or PromotionOptions()
    challenger = pick_challenger(evaluations)
    registry = ModelRegistry(open_storage(settings.registry_uri))
    done = find_promotion(registry.storage, run_id, challenger["model"])
    if done is not None and not options.dry_run:
        log.info("run %s already promoted %s/%s: nothing to do", run_id, done["model"], done["version"])
        return _summary(done, noop=True)
    artifacts = open_storage(settings.artifacts_uri)
    ctx = _Context(
        registry, artifacts, challenger, read_snapshot(artifacts, challenger["data_hash"]), run_id, options
    )
    event = _gate_and_swap(ctx)
    event = stamp(event) if options.dry_run else record_event(registry.storage, event)
    artifacts.write_json(f"{run_key(run_id)}/promotion.json", event | {"candidates": _ranked(evaluations)})
    log.info("promotion of %s: %s", challenger["model"], event["verdict"]["reason"])
    return _summary(event)


def _gate_and_swap(ctx: _Context) -> dict[str, Any]:
    prefix = f"{run_key(ctx.challenger['run_id'])}/{ctx.challenger['model']}"
    ours = np.load(_npy(ctx.artifacts, f"{prefix}/predictions.npy"), allow_pickle=False)
    for _ in range(MAX_ATTEMPTS):
        champion, generation = ctx.registry.champion_versioned()
        verdict = judge(
            ctx.data.y_test, ours, _champion_predictions(ctx, champion), ctx.options.gate, ctx.options.force
        )
        if ctx.options.dry_run or not verdict.promote:
            return _event(ctx, verdict, champion, promoted=False)
        try:
            lineage = {"trigger": ctx.options.trigger, "conf": ctx.options.run_conf}
            pointer = publish_challenger(
                ctx.registry, ctx.artifacts, ctx.challenger, ctx.data, ctx.run_id, lineage, verdict.to_dict()
            )
        except ServingCheckError as exc:
            record_event(
                ctx.registry.storage, _event(ctx, verdict, champion, promoted=False, blocked=str(exc))
            )
            raise
        pointer |= {"verdict": verdict.reason, "forced": verdict.forced}
        if ctx.registry.swap_champion(chain_pointer(pointer, champion), generation):
            return _event(ctx, verdict, champion, promoted=True, version=pointer["version"])
        log.warning("the champion moved while %s was being promoted: re-reading and re-gating", prefix)
    raise RegistryError(f"gave up promoting {prefix} after {MAX_ATTEMPTS} lost compare-and-swap races")


def _champion_predictions(ctx: _Context, champion: dict[str, Any] | None) -> np.ndarray | None:
    """The champion's predicted labels on this run's test set; re-evaluated if that set changed."""
    if champion is None:
        return None
    ref = VersionRef(champion["model"], champion["version"])
    if champion.get("test_hash") == ctx.data.test_hash():
        return ctx.registry.predictions(ref)
    log.info("test set changed since %s was measured: re-evaluating it", ref)
    from mnist_pipeline.evaluation import predict_probabilities
    from mnist_pipeline.model_io import load_model_bytes

    model = load_model_bytes(ctx.registry.verified_file(ref, "model.keras"))
    return predict_probabilities(model, ctx.data.x_test).argmax(axis=1)


def _event(
    ctx: _Context,
    verdict: Verdict,
    champion: dict[str, Any] | None,
    promoted: bool,
    version: str | None = None,
    blocked: str | None = None,
) -> dict[str, Any]:
    return {
        "kind": "gate",
        "run_id": ctx.run_id,
        "trigger": ctx.options.trigger,
        "model": ctx.challenger["model"],
        "version": version,
        "metrics": {"accuracy": ctx.challenger["accuracy"], "loss": ctx.challenger["loss"]},
        "verdict": verdict.to_dict() | ({"blocked": blocked} if blocked else {}),
        "promoted": promoted,
        "forced": verdict.forced and promoted,
        "dry_run": ctx.options.dry_run,
        "previous_champion": brief(champion),
    }


def _summary(event: dict[str, Any], noop: bool = False) -> dict[str, Any]:
    """What the task returns through XCom: the decision and its figures, nothing bulky."""
    keys = ("promoted", "model", "version", "forced", "dry_run", "metrics", "verdict", "previous_champion")
    return {key: event.get(key) for key in keys} | {"noop": noop}


def _ranked(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(evaluations, key=lambda e: -e["accuracy"])


def _npy(storage: Storage, key: str) -> io.BytesIO:
    return io.BytesIO(storage.read_bytes(key))
