"""Promotion you can trust: the gate, the serving check, decisions committed to the registry's log
(refused when the champion moved since the gate judged), history, rollback.

Real models trained on small slices of real MNIST; registries on a local folder and on GCS.
"""

from __future__ import annotations

import copy
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.errors import ConflictError, RegistryError
from mnist_pipeline.evaluation.serving import ServingCheckError
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import MNIST_TEST, GateConfig, Slice, Verdict, judge, mcnemar_exact
from mnist_pipeline.registry.history import list_events
from mnist_pipeline.registry.operations import promote_version, rollback
from mnist_pipeline.registry.promotion import (
    APPROVAL_PENDING,
    PromotionOptions,
    PromotionOutcome,
    promote,
    why_not_promoted,
)
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.runs import run_key
from mnist_pipeline.storage import open_storage
from tests.trained_runs import evaluate_runs

# run id -> (model, training images, epochs): a good DNN, a second good DNN, a weak linear model.
RUNS = {"run-good": ("dnn", 6000, 2), "run-other": ("dnn", 5000, 2), "run-weak": ("linear", 500, 1)}


@pytest.fixture(scope="module")
def trained_template(tmp_path_factory: pytest.TempPathFactory, mnist_npz: Path) -> dict[str, Any]:
    """RUNS, trained once per module; tests use their own copy (`trained`), never this one."""
    artifacts = str(tmp_path_factory.mktemp("artifacts"))
    evaluations = evaluate_runs(artifacts, mnist_npz, RUNS)
    return {"artifacts": artifacts, "evaluations": evaluations}


@pytest.fixture
def trained(trained_template: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A copy of the trained artifacts for one test: promotions write into it, tests damage it."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(trained_template["artifacts"], artifacts)
    return {"artifacts": str(artifacts), "evaluations": copy.deepcopy(trained_template["evaluations"])}


@pytest.fixture
def settings(trained: dict[str, Any], storage_uri: str) -> PipelineSettings:
    return PipelineSettings(artifacts_uri=trained["artifacts"], registry_uri=storage_uri)


@pytest.fixture
def registry(settings: PipelineSettings) -> Registry:
    return Registry(open_storage(settings.registry_uri))


def run_promotion(trained: dict, settings: PipelineSettings, run_id: str, **options: Any) -> PromotionOutcome:
    return promote([trained["evaluations"][run_id]], settings, run_id, PromotionOptions(**options))


def assert_promoted(registry: Registry, outcome: PromotionOutcome, run_id: str) -> None:
    champion = registry.champion()
    assert outcome.promoted is True
    assert champion is not None and champion.run_id == run_id
    assert (champion.model, champion.version) == (outcome.model, outcome.version)
    assert VersionRef(champion.model, champion.version) in registry.versions()


def assert_not_promoted(
    registry: Registry, outcome: PromotionOutcome, champion_before: ChampionPointer | None
) -> None:
    assert outcome.promoted is False
    assert registry.champion() == champion_before


@pytest.mark.slow
def test_first_run_promotes_when_it_passes_the_floor(trained, settings, registry) -> None:
    outcome = run_promotion(trained, settings, "run-good")
    assert_promoted(registry, outcome, "run-good")
    assert "no champion yet" in outcome.verdict.reason and outcome.previous_champion is None
    (event,) = list_events(registry)
    assert event.promoted and event.run_id == "run-good" and event.kind == "gate"


@pytest.mark.slow
def test_a_first_model_below_the_floor_is_not_promoted(trained, settings, registry) -> None:
    outcome = run_promotion(trained, settings, "run-weak", gate=GateConfig(floor=0.99))
    assert_not_promoted(registry, outcome, None)
    assert "below the floor" in outcome.verdict.reason


@pytest.mark.slow
def test_a_worse_challenger_is_not_promoted(trained, settings, registry) -> None:
    run_promotion(trained, settings, "run-good")
    champion = registry.champion()
    outcome = run_promotion(trained, settings, "run-weak")
    assert_not_promoted(registry, outcome, champion)
    verdict = outcome.verdict
    assert "not better by the margin" in verdict.reason
    assert verdict.b > verdict.c and verdict.champion_accuracy > verdict.challenger_accuracy
    assert [event.promoted for event in list_events(registry)] == [True, False]


@pytest.mark.slow
def test_a_forced_promotion_happens_and_says_so(trained, settings, registry) -> None:
    run_promotion(trained, settings, "run-good")
    outcome = run_promotion(trained, settings, "run-weak", force=True)
    assert_promoted(registry, outcome, "run-weak")
    assert outcome.forced is True and outcome.verdict.reason.startswith("forced (gate said:")
    assert list_events(registry)[-1].forced is True


@pytest.mark.slow
def test_a_dry_run_decides_but_writes_nothing(trained, settings, registry) -> None:
    outcome = run_promotion(trained, settings, "run-good", dry_run=True)
    assert outcome.promoted is False and outcome.dry_run is True
    assert "no champion yet" in outcome.verdict.reason
    assert registry.storage.list_keys("mnist/") == []


@pytest.mark.slow
def test_rerunning_the_same_task_is_a_no_op(trained, settings, registry) -> None:
    first = run_promotion(trained, settings, "run-good")
    keys = registry.storage.list_keys("mnist/")
    again = run_promotion(trained, settings, "run-good")
    assert again.noop is True and again.version == first.version
    assert registry.storage.list_keys("mnist/") == keys  # nothing new, not even a history event


@pytest.mark.slow
def test_with_approval_required_the_version_waits_as_the_candidate(trained, settings, registry) -> None:
    from mnist_pipeline.registry.aliases import CANDIDATE, read_alias

    run_promotion(trained, settings, "run-good")
    champion = registry.champion()
    outcome = run_promotion(trained, settings, "run-weak", force=True, approval=True)
    assert outcome.awaiting_approval and not outcome.promoted and registry.champion() == champion
    assert VersionRef(outcome.model, str(outcome.version)) in registry.versions()  # published
    candidate = read_alias(registry, CANDIDATE)
    assert candidate is not None and (candidate.run_id, candidate.version) == ("run-weak", outcome.version)
    assert list_events(registry)[-1].approval == "pending"
    keys = registry.storage.list_keys("mnist/")
    again = run_promotion(trained, settings, "run-weak", force=True, approval=True)  # a retried task
    assert again.noop and again.awaiting_approval and again.version == outcome.version
    assert registry.storage.list_keys("mnist/") == keys  # nothing new, not even a history event


@pytest.mark.slow
def test_a_failed_serving_check_blocks_promotion(trained, settings, registry, tmp_path: Path) -> None:
    from mnist_pipeline.training.architectures import build_model
    from mnist_pipeline.training.model_io import export_saved_model

    artifacts = open_storage(settings.artifacts_uri)  # this test's own copy
    prefix = f"{run_key('run-good')}/dnn/saved_model"
    # An export that does not match the evaluated model: untrained weights.
    artifacts.delete(prefix)
    artifacts.upload_dir(export_saved_model(build_model("dnn"), tmp_path / "wrong"), prefix)
    with pytest.raises(ServingCheckError, match="served probabilities differ"):
        run_promotion(trained, settings, "run-good")
    assert registry.champion() is None and registry.versions() == []
    (event,) = list_events(registry)
    assert event.promoted is False and "serving check" in event.verdict.blocked


@pytest.mark.slow
def test_two_concurrent_promotions_leave_one_champion_and_two_events(trained, settings, registry) -> None:
    runs = ["run-good", "run-other"]

    def attempt(run: str) -> PromotionOutcome | ConflictError:
        try:
            return run_promotion(trained, settings, run)
        except ConflictError as refused:  # the champion moved after this gate judged
            return refused

    with ThreadPoolExecutor(max_workers=2) as pool:
        tries = dict(zip(runs, pool.map(attempt, runs), strict=True))
    refused = {run: error for run, error in tries.items() if isinstance(error, ConflictError)}
    assert len(refused) <= 1  # only a move of the champion refuses a decision: the first one commits
    for run, error in refused.items():
        (winner,) = set(runs) - {run}
        assert re.search(rf"champion changed to dnn/\S+ by run {winner} at .*re-run the gate", str(error))
        assert {event.run_id for event in list_events(registry)} == {winner}  # refused: nothing recorded
    # Airflow retries the refused task: it re-gates against the champion that moved.
    outcomes = {
        run: run_promotion(trained, settings, run) if run in refused else tried
        for run, tried in tries.items()
    }
    events = list_events(registry)
    assert sorted(event.run_id for event in events) == runs
    champion = registry.champion()
    promoted = [outcome for outcome in outcomes.values() if outcome.promoted]
    assert promoted and (champion.model, champion.version) in {
        (o.model, o.version) for o in promoted
    }
    for run in refused:
        (winner,) = set(runs) - {run}
        assert outcomes[run].previous_champion is not None
        assert outcomes[run].previous_champion.version == outcomes[winner].version
    if len(promoted) == 2:  # the later one re-gated against the earlier and won: it remembers it
        assert champion.previous.run_id != champion.run_id


@pytest.mark.slow
def test_rollback_restores_the_previous_pointer(trained, settings, registry) -> None:
    run_promotion(trained, settings, "run-good")
    first = registry.champion()
    run_promotion(trained, settings, "run-weak", force=True)
    event = rollback(registry, who="test")
    restored = registry.champion()
    assert (restored.model, restored.version, restored.run_id) == (
        first.model,
        first.version,
        first.run_id,
    )
    assert event.kind == "rollback" and event.previous_champion.version != first.version
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(registry, who="test")


@pytest.mark.slow
def test_a_manual_promotion_needs_a_known_untampered_version(trained, settings, registry) -> None:
    outcome = run_promotion(trained, settings, "run-good")
    ref = VersionRef(outcome.model, outcome.version)
    with pytest.raises(RegistryError, match="unknown version dnn/nope"):
        promote_version(registry, VersionRef("dnn", "nope"), "because", who="test")
    registry.storage.write_bytes(f"{ref.prefix}/model.keras", b"tampered")
    with pytest.raises(RegistryError, match="does not match its recorded sha256"):
        promote_version(registry, ref, "because", who="test")


@pytest.mark.slow
def test_tampered_run_artifacts_are_refused_before_publication(trained, settings, registry) -> None:
    artifacts = open_storage(settings.artifacts_uri)  # this test's own copy
    key = f"{run_key('run-other')}/dnn/model.keras"
    artifacts.write_bytes(key, artifacts.read_bytes(key)[:-10] + b"0123456789")
    with pytest.raises(RegistryError, match="does not match its recorded sha256"):
        run_promotion(trained, settings, "run-other")
    assert registry.versions() == [] and registry.champion() is None


def test_the_gate_wants_a_margin_and_significance() -> None:
    labels = np.zeros(10_000, dtype=np.uint8)
    champion = labels.copy()
    champion[:100] = 1  # wrong on 100 images
    slightly_better = champion.copy()
    slightly_better[:25] = 0  # fixes 25...
    slightly_better[200:214] = 1  # ...breaks 14: +0.11 points, p ~ 0.11
    verdict = judge([Slice(MNIST_TEST, labels, slightly_better, champion)], GateConfig())
    assert not verdict.promote and "not significant" in verdict.reason and (verdict.b, verdict.c) == (14, 25)
    clearly_better = champion.copy()
    clearly_better[:60] = 0  # fixes 60, breaks none
    assert judge([Slice(MNIST_TEST, labels, clearly_better, champion)], GateConfig()).promote
    # +0.6 < 1 point
    assert not judge([Slice(MNIST_TEST, labels, clearly_better, champion)], GateConfig(margin=0.01)).promote


def test_why_nothing_was_promoted_is_said_for_every_decision_that_moved_nothing() -> None:
    def decision(verdict: Verdict, **fields: Any) -> HistoryEvent:
        return HistoryEvent("gate", "dnn", verdict, fields.pop("promoted", False), **fields)

    options = PromotionOptions()
    kept = decision(Verdict(False, "not better by the margin", rule="not-better"))
    assert why_not_promoted(kept, options) == "the champion stays: not better by the margin"
    dry = why_not_promoted(decision(Verdict(True, "better"), dry_run=True), options)
    assert dry == "a dry run writes nothing to the registry; the gate would have promoted (better)"
    blocked = decision(Verdict(True, "better", blocked="serving check failed"))
    assert "publishing it failed: serving check failed" in str(why_not_promoted(blocked, options))
    assert why_not_promoted(decision(Verdict(True, "better"), promoted=True), options) is None
    pending = decision(Verdict(True, "better"), version="v1", approval=APPROVAL_PENDING)
    assert why_not_promoted(pending, PromotionOptions(approval=True)) is None


def test_mcnemar_matches_the_binomial_tail() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(10, 20) == pytest.approx(0.098737, abs=1e-6)
    assert mcnemar_exact(14, 25) == mcnemar_exact(25, 14)
