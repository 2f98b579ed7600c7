"""Promotion you can trust: the gate, the serving check, decisions committed to the registry's log
(refused when the champion moved since the gate judged), history, rollback.

Real models trained on small slices of real MNIST; registries on a local folder and on GCS.
"""

from __future__ import annotations

import copy
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.errors import ConfigError, ConflictError, RegistryError
from mnist_pipeline.evaluation.metrics import labels_npy
from mnist_pipeline.evaluation.record import EvaluationRecord
from mnist_pipeline.evaluation.serving import ServingCheckError
from mnist_pipeline.registry import promotion
from mnist_pipeline.registry.aliases import CANDIDATE, read_alias
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import MNIST_TEST, GateConfig, Slice, Verdict, judge, mcnemar_exact
from mnist_pipeline.registry.history import list_events
from mnist_pipeline.registry.log import commit_key
from mnist_pipeline.registry.operations import promote_version, rollback
from mnist_pipeline.registry.promotion import (
    APPROVAL_PENDING,
    NEW_DATA_PREDICTIONS,
    PREDICTION_CACHE,
    PromotionOptions,
    PromotionOutcome,
    pick_challenger,
    promote,
    why_not_promoted,
)
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.runs import model_key, run_key
from mnist_pipeline.storage import Storage, open_storage
from tests.registry_helpers import publish_version
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
def settings(trained: dict[str, Any], gcs_bucket: str) -> PipelineSettings:
    """The registry on the GCS API, as in production. These tests publish real models (about 5 s
    each); the same code on a local registry: the first test here and the fast tests below."""
    return PipelineSettings(artifacts_uri=trained["artifacts"], registry_uri=f"gs://{gcs_bucket}/prefix")


@pytest.fixture
def registry(settings: PipelineSettings) -> Registry:
    return Registry(open_storage(settings.registry_uri))


@pytest.fixture
def settings_on_each_backend(trained: dict[str, Any], storage_uri: str) -> PipelineSettings:
    return PipelineSettings(artifacts_uri=trained["artifacts"], registry_uri=storage_uri)


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
def test_first_run_promotes_when_it_passes_the_floor(trained, settings_on_each_backend) -> None:
    settings = settings_on_each_backend
    registry = Registry(open_storage(settings.registry_uri))
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
    assert promoted and (champion.model, champion.version) in {(o.model, o.version) for o in promoted}
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


# --- the promotion and its commits, without training ------------------------------------------------
# Each run's evaluation is written as the evaluate step leaves it (its predicted labels on the test
# set), so that the gate judges real figures; publication, whose serving check starts TensorFlow in
# a clean process, is replaced by a plain publish of the run's files (test_publication's business).


@dataclass
class Runs:
    settings: PipelineSettings
    registry: Registry
    artifacts: Storage
    labels: np.ndarray
    test_hash: str
    data_hash: str
    folders: Path
    published: dict[str, VersionRef] = field(default_factory=dict)
    publish_calls: list[dict[str, Any]] = field(default_factory=list)

    def evaluated(self, run_id: str, wrong: int, model: str = "dnn", loss: float = 0.1) -> EvaluationRecord:
        """The run's `model`, wrong on the first `wrong` test images."""
        predictions = self.labels.copy()
        predictions[:wrong] = (predictions[:wrong] + 1) % 10
        self.artifacts.write_bytes(f"{model_key(run_id, model)}/predictions.npy", labels_npy(predictions))
        accuracy = float((predictions == self.labels).mean())
        return EvaluationRecord(
            model, run_id, accuracy, loss, self.test_hash, "", self.data_hash, "", "", 1, 0.0
        )

    def promote(self, *evaluations: EvaluationRecord, **options: Any) -> PromotionOutcome:
        return promote(list(evaluations), self.settings, evaluations[0].run_id, PromotionOptions(**options))

    def publish(self, registry, artifacts, challenger, data, lineage=None, verdict=None, run_id=None):
        self.publish_calls.append({"lineage": lineage, "verdict": verdict, "run_id": run_id, "data": data})
        number = len(self.published) + 1
        ref = self.published.setdefault(
            challenger.run_id, VersionRef(challenger.model, f"20260101T{number:06d}Z-{number:08x}")
        )
        if not registry.is_published(ref):
            folder = self.folders / ref.version
            folder.mkdir(parents=True)
            (folder / "model.keras").write_bytes(f"weights of {challenger.run_id}".encode())
            prefix = model_key(challenger.run_id, challenger.model)
            (folder / "predictions.npy").write_bytes(artifacts.read_bytes(f"{prefix}/predictions.npy"))
            metrics = {
                "accuracy": challenger.accuracy,
                "loss": challenger.loss,
                "test_hash": challenger.test_hash,
            }
            metadata = {"metrics": metrics, "data_hash": challenger.data_hash, "trained_at": ref.version}
            registry.publish(ref, folder, metadata, f"run {run_id}", run_id)
        return ref

    def promotion_json(self, run_id: str) -> dict[str, Any]:
        return self.artifacts.read_json(f"{run_key(run_id)}/promotion.json")

    def decision(self, run_id: str, model: str = "dnn"):
        number = self.registry.state().decision_of(run_id, model)
        assert number is not None
        return self.registry.read_commit(number)


@pytest.fixture(scope="module")
def snapshot_template(tmp_path_factory: pytest.TempPathFactory, mnist_npz: Path) -> dict[str, Any]:
    """One real snapshot of MNIST, ingested once per module; tests copy it."""
    from mnist_pipeline.data.snapshot import read_snapshot
    from mnist_pipeline.steps import ingest

    artifacts = tmp_path_factory.mktemp("snapshot")
    # The whole test set, a sliver of the training set: the gate reads only the test set.
    settings = PipelineSettings(source=str(mnist_npz), artifacts_uri=str(artifacts), max_train_images=1000)
    snapshot = ingest(settings, "run-ingest")
    data = read_snapshot(open_storage(str(artifacts)), snapshot.data_hash)
    return {
        "artifacts": artifacts,
        "data_hash": snapshot.data_hash,
        "labels": data.y_test,
        "test_hash": data.test_hash(),
    }


@pytest.fixture
def runs(snapshot_template: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Runs:
    return make_runs(snapshot_template, tmp_path, monkeypatch)


def make_runs(template: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Runs:
    """A copy of the snapshot `template` and an empty registry, publication stubbed."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(template["artifacts"], artifacts)
    settings = PipelineSettings(artifacts_uri=str(artifacts), registry_uri=str(tmp_path / "registry"))
    made = Runs(
        settings,
        Registry(open_storage(settings.registry_uri)),
        open_storage(str(artifacts)),
        np.array(template["labels"]),
        template["test_hash"],
        template["data_hash"],
        tmp_path / "published",
    )
    monkeypatch.setattr(promotion, "publish_challenger", made.publish)
    return made


def test_a_first_model_above_the_floor_becomes_the_champion_and_its_commit_says_who_and_why(runs) -> None:
    good = runs.evaluated("run-a", wrong=500)  # 95%
    outcome = runs.promote(good, trigger="scheduled", run_conf={"epochs": 1}, attempt=2)
    ref = runs.published["run-a"]
    assert (outcome.promoted, outcome.model, outcome.version, outcome.noop) == (
        True,
        "dnn",
        ref.version,
        False,
    )
    assert outcome.metrics == {"accuracy": 0.95, "loss": 0.1} and outcome.previous_champion is None
    assert outcome.approval is None and not outcome.forced and not outcome.dry_run
    assert outcome.verdict.reason == "no champion yet; accuracy 0.9500 reaches the floor 0.9"
    champion = runs.registry.champion()
    assert champion is not None and (champion.model, champion.version, champion.run_id) == (
        "dnn",
        ref.version,
        "run-a",
    )
    assert (champion.test_hash, champion.data_hash) == (runs.test_hash, runs.data_hash)
    assert champion.verdict == outcome.verdict.reason and not champion.forced
    assert champion.metrics == {"accuracy": 0.95, "loss": 0.1}
    commit = runs.decision("run-a")
    assert (commit.kind, commit.actor, commit.reason, commit.based_on) == (
        "gate",
        "run run-a",
        champion.verdict,
        0,
    )
    assert (commit.run_id, commit.model, commit.try_number) == ("run-a", "dnn", 2)
    assert [move.alias for move in commit.moves] == ["champion"]
    event = commit.event
    assert (event.kind, event.trigger, event.promoted, event.forced, event.dry_run) == (
        "gate",
        "scheduled",
        True,
        False,
        False,
    )
    (call,) = runs.publish_calls
    assert call.pop("data").test_hash() == runs.test_hash  # the snapshot the run was judged on
    assert call == {
        "lineage": {"trigger": "scheduled", "conf": {"epochs": 1}},
        "verdict": outcome.verdict,
        "run_id": "run-a",
    }
    written = runs.promotion_json("run-a")
    assert (
        written["why_not_promoted"] is None and written["promoted"] is True and written["run_id"] == "run-a"
    )
    assert written["candidates"] == [good.to_dict()]


def test_a_worse_challenger_is_kept_and_the_run_says_why(runs) -> None:
    runs.promote(runs.evaluated("run-a", wrong=500))
    champion = runs.registry.champion()
    linear, dnn = runs.evaluated("run-b", 700, "linear"), runs.evaluated("run-b", 600)
    outcome = runs.promote(linear, dnn)  # the better of the two is the challenger
    assert (outcome.promoted, outcome.model, outcome.version) == (False, "dnn", None)
    assert outcome.previous_champion == champion.summary() and runs.registry.champion() == champion
    assert (outcome.verdict.b, outcome.verdict.c, outcome.verdict.rule) == (100, 0, "not-better")
    commit = runs.decision("run-b")
    assert commit.moves == [] and commit.based_on == 2 and not commit.event.promoted  # publish, gate
    written = runs.promotion_json("run-b")
    assert written["why_not_promoted"] == f"the champion stays: {outcome.verdict.reason}"
    assert [candidate["model"] for candidate in written["candidates"]] == ["dnn", "linear"]  # best first


def test_a_better_challenger_replaces_the_champion_and_remembers_it(runs) -> None:
    first = runs.promote(runs.evaluated("run-a", wrong=500))
    outcome = runs.promote(runs.evaluated("run-c", wrong=100))
    assert outcome.promoted and outcome.verdict.rule == "better"
    assert outcome.previous_champion is not None and outcome.previous_champion.version == first.version
    champion = runs.registry.champion()
    assert champion.run_id == "run-c" and champion.previous is not None
    assert (champion.previous.run_id, champion.previous.version) == ("run-a", first.version)


def test_a_forced_promotion_is_recorded_as_forced(runs) -> None:
    runs.promote(runs.evaluated("run-a", wrong=500))
    outcome = runs.promote(runs.evaluated("run-b", wrong=600), force=True)
    assert outcome.promoted and outcome.forced and outcome.verdict.rule == "forced"
    assert runs.decision("run-b").event.forced is True and runs.registry.champion().forced is True


def test_a_dry_run_judges_even_a_decided_run_and_writes_nothing_to_the_registry(runs) -> None:
    outcome = runs.promote(runs.evaluated("run-a", wrong=500), dry_run=True)
    assert (outcome.promoted, outcome.dry_run, outcome.version, outcome.noop) == (False, True, None, False)
    assert outcome.verdict.promote and runs.registry.storage.list_keys("mnist/") == []
    written = runs.promotion_json("run-a")
    assert written["time"] and written["why_not_promoted"] == (
        "a dry run writes nothing to the registry; the gate would have promoted"
        " (no champion yet; accuracy 0.9500 reaches the floor 0.9)"
    )
    runs.promote(runs.evaluated("run-a", wrong=500))
    keys = runs.registry.storage.list_keys("mnist/")
    again = runs.promote(runs.evaluated("run-a", wrong=500), dry_run=True)
    assert again.dry_run and not again.noop and runs.registry.storage.list_keys("mnist/") == keys


def test_a_retried_promotion_finds_its_decision_and_rewrites_only_the_runs_record(runs) -> None:
    first = runs.promote(runs.evaluated("run-a", wrong=500))
    keys = runs.registry.storage.list_keys("mnist/")
    runs.artifacts.delete(f"{run_key('run-a')}/promotion.json")  # the try was killed before writing it
    again = runs.promote(runs.evaluated("run-a", wrong=500))
    assert again.noop and (again.version, again.verdict, again.promoted) == (
        first.version,
        first.verdict,
        True,
    )
    assert runs.registry.storage.list_keys("mnist/") == keys and len(runs.publish_calls) == 1
    assert runs.promotion_json("run-a")["why_not_promoted"] is None


def test_with_approval_the_version_waits_as_the_candidate_and_a_retry_finds_it(runs) -> None:
    runs.promote(runs.evaluated("run-a", wrong=500))
    champion = runs.registry.champion()
    better = runs.evaluated("run-c", wrong=100)
    outcome = runs.promote(better, approval=True)
    assert outcome.awaiting_approval and not outcome.promoted and runs.registry.champion() == champion
    assert outcome.approval == APPROVAL_PENDING and outcome.version == runs.published["run-c"].version
    candidate = read_alias(runs.registry, CANDIDATE)
    assert candidate is not None and (candidate.version, candidate.run_id) == (outcome.version, "run-c")
    assert candidate.verdict == f"awaiting approval: {outcome.verdict.reason}"
    assert (candidate.set_by, candidate.test_hash, candidate.data_hash) == (
        "gate of run run-c",
        runs.test_hash,
        runs.data_hash,
    )
    assert candidate.metrics == {"accuracy": 0.99, "loss": 0.1}
    assert runs.promotion_json("run-c")["why_not_promoted"] is None
    again = runs.promote(better, approval=True)
    assert again.noop and again.awaiting_approval and again.version == outcome.version


def test_approval_required_but_a_refusing_gate_says_nobody_was_asked(runs) -> None:
    runs.promote(runs.evaluated("run-a", wrong=500))
    outcome = runs.promote(runs.evaluated("run-b", wrong=600), approval=True)
    assert not outcome.awaiting_approval and read_alias(runs.registry, CANDIDATE) is None
    assert runs.promotion_json("run-b")["why_not_promoted"] == (
        f"the champion stays: {outcome.verdict.reason}; approval was required but not asked for:"
        " it is asked only when the gate allows a promotion"
    )


def test_a_failed_serving_check_is_committed_as_blocked_and_fails_the_task(runs, monkeypatch) -> None:
    def failing(*args: Any, **kwargs: Any) -> VersionRef:
        raise ServingCheckError("served probabilities differ")

    monkeypatch.setattr(promotion, "publish_challenger", failing)
    with pytest.raises(ServingCheckError):
        runs.promote(runs.evaluated("run-a", wrong=500))
    assert runs.registry.champion() is None
    event = runs.decision("run-a").event
    assert (event.promoted, event.verdict.promote, event.verdict.blocked) == (
        False,
        True,
        "served probabilities differ",
    )
    assert why_not_promoted(event, PromotionOptions()) == (
        "the gate allowed dnn, but publishing it failed: served probabilities differ"
    )


def test_a_champion_moved_while_publishing_refuses_the_decision(runs, tmp_path: Path) -> None:
    runs.promote(runs.evaluated("run-a", wrong=500))
    hotfix = publish_version(runs.registry, tmp_path / "hotfix", 7)
    publish = runs.publish

    def racing(*args: Any, **kwargs: Any) -> VersionRef:
        promote_version(runs.registry, hotfix, "hotfix", "cli:alice")  # while the gate's run publishes
        return publish(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(promotion, "publish_challenger", racing)
        with pytest.raises(ConflictError) as refused:
            runs.promote(runs.evaluated("run-c", wrong=100))
    assert re.fullmatch(
        rf"champion changed to dnn/{hotfix.version} by cli:alice at \S+ \(promote, commit 4\) since this"
        r" run's gate \(commit 3\); re-run the gate. Nothing was changed",
        str(refused.value),
    ), refused.value
    assert runs.registry.state().decision_of("run-c", "dnn") is None


def test_a_decision_whose_commit_is_gone_is_named(runs) -> None:
    runs.promote(runs.evaluated("run-a", wrong=500))
    number = runs.registry.state().decision_of("run-a", "dnn")
    runs.registry.storage.delete(commit_key(number))
    with pytest.raises(
        RegistryError,
        match=rf"^the registry's state names commit {number} as a gate decision, but it is unreadable$",
    ):
        runs.promote(runs.evaluated("run-a", wrong=500))


def test_a_champion_measured_on_another_test_set_is_judged_by_its_cached_predictions(runs) -> None:
    old = runs.evaluated("run-a", wrong=500)
    runs.promote(EvaluationRecord.from_dict(old.to_dict() | {"test_hash": "an older test set"}, "test"))
    champion = runs.registry.champion()
    worse = runs.labels.copy()
    worse[:2000] = (worse[:2000] + 1) % 10  # what the champion predicts on this test set: 80%
    key = f"{PREDICTION_CACHE}/dnn/{champion.version}/mnist_test-{runs.test_hash}.npy"
    runs.artifacts.write_bytes(key, labels_npy(worse))
    outcome = runs.promote(runs.evaluated("run-c", wrong=1000))  # 90%: worse than the champion measured
    assert outcome.promoted and outcome.verdict.champion_accuracy == 0.8  # on its own, better here


def test_the_challenger_is_the_most_accurate_evaluation_and_the_lower_loss_breaks_a_tie(runs) -> None:
    with pytest.raises(ConfigError, match=r"^promote needs at least one evaluated model; none was given$"):
        pick_challenger([])
    high_loss, low_loss = runs.evaluated("run-a", 500, "dnn", 0.3), runs.evaluated("run-a", 500, "cnn", 0.2)
    assert pick_challenger([high_loss, low_loss]) is low_loss
    assert pick_challenger([runs.evaluated("run-a", 400, "linear", 0.9), low_loss]).model == "linear"


def test_why_a_first_model_was_not_promoted_says_what_to_change() -> None:
    def floor(accuracy: float | None) -> HistoryEvent:
        return HistoryEvent("gate", "linear", Verdict(False, "below", accuracy, rule="floor"), False)

    assert why_not_promoted(floor(0.8123), PromotionOptions()) == (
        "there is no champion yet, and the run's best model, linear, scored 0.8123 on the fixed test set,"
        " below the 0.90 a first champion must reach. Train on more images (max_train_images 0: all of"
        " them) or for more epochs, or set force_promote"
    )
    assert "scored ? on the fixed test set" in str(why_not_promoted(floor(None), PromotionOptions()))
    kept = HistoryEvent("gate", "dnn", Verdict(False, "not better"), False, dry_run=True)
    assert why_not_promoted(kept, PromotionOptions()) == (
        "a dry run writes nothing to the registry; the gate would have kept the champion (not better)"
    )


def test_a_dry_run_against_a_champion_names_it_and_the_log_says_what_was_decided(
    runs, caplog: pytest.LogCaptureFixture
) -> None:
    runs.promote(runs.evaluated("run-a", wrong=500))
    champion = runs.registry.champion()
    caplog.clear()  # only the dry run's records: the first promotion may log as well
    with caplog.at_level("INFO", logger="mnist_pipeline.registry.promotion"):
        dry = runs.promote(runs.evaluated("run-c", wrong=100), dry_run=True)
    assert dry.previous_champion == champion.summary() and dry.verdict.promote
    assert caplog.messages == [f"promotion of dnn: {dry.verdict.reason}"]


def test_a_retried_kept_decision_rewrites_why_and_logs_that_it_was_decided(
    runs, caplog: pytest.LogCaptureFixture
) -> None:
    runs.promote(runs.evaluated("run-a", wrong=500))
    kept = runs.promote(runs.evaluated("run-b", wrong=600), approval=True)
    number = runs.registry.state().decision_of("run-b", "dnn")
    runs.artifacts.delete(f"{run_key('run-b')}/promotion.json")
    caplog.clear()  # only the retry's records: the promotions before it may log as well
    with caplog.at_level("INFO", logger="mnist_pipeline.registry.promotion"):
        again = runs.promote(runs.evaluated("run-b", wrong=600), approval=True)
    assert again.noop and again.verdict == kept.verdict
    assert caplog.messages == [f"run run-b already decided on dnn (commit {number}): {kept.verdict.reason}"]
    assert runs.promotion_json("run-b")["why_not_promoted"] == (
        f"the champion stays: {kept.verdict.reason}; approval was required but not asked for:"
        " it is asked only when the gate allows a promotion"
    )


def test_a_blocked_or_pending_decision_remembers_the_champion_it_was_judged_against(
    runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs.promote(runs.evaluated("run-a", wrong=500))
    champion = runs.registry.champion().summary()
    pending = runs.promote(runs.evaluated("run-c", wrong=100), approval=True)
    assert pending.previous_champion == champion

    def failing(*args: Any, **kwargs: Any) -> VersionRef:
        raise ServingCheckError("served probabilities differ")

    monkeypatch.setattr(promotion, "publish_challenger", failing)
    with pytest.raises(ServingCheckError):
        runs.promote(runs.evaluated("run-d", wrong=50))
    assert runs.decision("run-d").event.previous_champion == champion


@pytest.fixture(scope="module")
def new_data_template(tmp_path_factory: pytest.TempPathFactory, mnist_npz: Path, mnist) -> dict[str, Any]:
    """A snapshot whose new-data slice holds the held-out part of one accepted shard."""
    import io

    from mnist_pipeline.data.incoming import INCOMING, process_incoming
    from mnist_pipeline.data.snapshot import read_snapshot
    from mnist_pipeline.steps import ingest
    from tests.new_digits import new_digits

    artifacts = tmp_path_factory.mktemp("new-data")
    storage = open_storage(str(artifacts))
    buffer = io.BytesIO()
    np.savez(buffer, images=new_digits(mnist.x_train[-3000:]), labels=mnist.y_train[-3000:])
    storage.write_bytes(f"{INCOMING}shard.npz", buffer.getvalue())
    assert process_incoming(storage, "run-incoming", mnist).accepted
    settings = PipelineSettings(source=str(mnist_npz), artifacts_uri=str(artifacts), max_train_images=1000)
    snapshot = ingest(settings, "run-ingest")
    data = read_snapshot(storage, snapshot.data_hash)
    assert len(data.y_new_test) >= 200  # enough to decide
    return {
        "artifacts": artifacts,
        "data_hash": snapshot.data_hash,
        "labels": data.y_test,
        "test_hash": data.test_hash(),
        "new_labels": data.y_new_test,
        "new_data_hash": data.new_data_hash(),
    }


def test_with_new_data_the_gate_judges_the_new_slice_on_the_champions_cached_predictions(
    new_data_template: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_pipeline.registry.promotion import NEW_DATA_PREDICTIONS

    runs = make_runs(new_data_template, tmp_path, monkeypatch)
    labels = new_data_template["new_labels"]

    def with_new_data(run_id: str, wrong: int, new_wrong: int) -> EvaluationRecord:
        evaluation = runs.evaluated(run_id, wrong)
        predictions = labels.copy()
        predictions[:new_wrong] = (predictions[:new_wrong] + 1) % 10
        key = f"{model_key(run_id, 'dnn')}/{NEW_DATA_PREDICTIONS}"
        runs.artifacts.write_bytes(key, labels_npy(predictions))
        return evaluation

    runs.promote(with_new_data("run-a", 500, 0))
    champion = runs.registry.champion()
    theirs = labels.copy()
    theirs[:100] = (theirs[:100] + 1) % 10  # the champion misses 100 new images
    key = f"{PREDICTION_CACHE}/dnn/{champion.version}/new_data-{new_data_template['new_data_hash']}.npy"
    runs.artifacts.write_bytes(key, labels_npy(theirs))
    outcome = runs.promote(with_new_data("run-c", 500, 0))  # equal on mnist_test, better on new data
    new = outcome.verdict.slice("new_data")
    assert new is not None and (new.images, new.b, new.c) == (len(labels), 0, 100)
    assert outcome.promoted and "new_data" in outcome.verdict.reason.split(":")[0]


def evaluated_with_new_data(runs: Runs, new_labels: np.ndarray, run_id: str, wrong: int, new_wrong: int):
    """The run's DNN, wrong on the first `wrong` test images and `new_wrong` new-data images."""
    evaluation = runs.evaluated(run_id, wrong)
    predictions = new_labels.copy()
    predictions[:new_wrong] = (predictions[:new_wrong] + 1) % 10
    runs.artifacts.write_bytes(f"{model_key(run_id, 'dnn')}/{NEW_DATA_PREDICTIONS}", labels_npy(predictions))
    return evaluation


def test_a_champion_never_measured_on_the_slices_is_loaded_once_evaluated_and_its_labels_cached(
    new_data_template: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mnist_pipeline.evaluation import metrics
    from mnist_pipeline.evaluation.metrics import labels_from_npy
    from mnist_pipeline.training import model_io

    runs = make_runs(new_data_template, tmp_path, monkeypatch)
    labels, new_labels = runs.labels, new_data_template["new_labels"]
    first = evaluated_with_new_data(runs, new_labels, "run-a", 500, 0)
    runs.promote(EvaluationRecord.from_dict(first.to_dict() | {"test_hash": "an older test set"}, "test"))
    champion = runs.registry.champion()
    ref = VersionRef("dnn", champion.version)
    # What the champion's model predicts: 2000 test images wrong (80%), 100 new-data images wrong.
    theirs = {len(labels): labels.copy(), len(new_labels): new_labels.copy()}
    theirs[len(labels)][:2000] = (labels[:2000] + 1) % 10
    theirs[len(new_labels)][:100] = (new_labels[:100] + 1) % 10
    loaded: list[bytes] = []

    def load_model(data: bytes) -> str:
        loaded.append(data)
        return "the champion's model"

    def predict(model: str, images: np.ndarray) -> np.ndarray:
        assert model == "the champion's model"
        return np.eye(10)[theirs[len(images)]]

    monkeypatch.setattr(model_io, "load_model_bytes", load_model)
    monkeypatch.setattr(metrics, "predict_probabilities", predict)
    better = evaluated_with_new_data(runs, new_labels, "run-c", 1000, 0)  # 90%, every new image right
    caplog.clear()  # only the dry run's records: the first promotion may log as well
    with caplog.at_level("INFO", logger="mnist_pipeline.registry.promotion"):
        dry = runs.promote(better, dry_run=True)
    assert loaded == [b"weights of run-a"]  # its verified model.keras, loaded once for both slices
    test_key = f"{PREDICTION_CACHE}/dnn/{champion.version}/mnist_test-{runs.test_hash}.npy"
    new_key = f"{PREDICTION_CACHE}/dnn/{champion.version}/new_data-{new_data_template['new_data_hash']}.npy"
    for key, expected in ((test_key, theirs[len(labels)]), (new_key, theirs[len(new_labels)])):
        assert np.array_equal(labels_from_npy(runs.artifacts.read_bytes(key)), expected)
    assert caplog.messages[:3] == [
        f"test set changed since {ref} was measured: re-evaluating it",
        f"evaluated champion {ref} on the mnist_test slice ({len(labels)} images): cached as {test_key}",
        f"evaluated champion {ref} on the new_data slice ({len(new_labels)} images): cached as {new_key}",
    ]
    mnist_test, new = dry.verdict.slice(MNIST_TEST), dry.verdict.slice("new_data")
    assert mnist_test is not None and mnist_test.champion_accuracy == 0.8
    assert new is not None and (new.images, new.b, new.c) == (len(new_labels), 0, 100)
    outcome = runs.promote(better)  # the cached labels serve: nothing is loaded again
    assert outcome.promoted and outcome.verdict == dry.verdict and len(loaded) == 1
