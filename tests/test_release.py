"""Promotion as a release, in the library: the `mnist_champion` event's extra, the TF Serving export
its consumer writes, and a person's approval of the candidate. On both backends, with versions
published through the library (no model is trained: the export copies bytes, checked by sha256)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline.errors import ConflictError, RegistryError
from mnist_pipeline.registry.aliases import CANDIDATE, alias_history, read_alias, set_alias
from mnist_pipeline.registry.approval import (
    VERSION_PAGE,
    ApprovalAnswer,
    approval_request,
    approve_candidate,
    decline_candidate,
    released,
)
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import SliceVerdict, Verdict
from mnist_pipeline.registry.history import list_events
from mnist_pipeline.registry.log import commit_key
from mnist_pipeline.registry.operations import promote_version
from mnist_pipeline.registry.promotion import APPROVAL_PENDING, PromotionOutcome
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent, VersionSummary
from mnist_pipeline.registry.release import CHAMPION_ASSET_NAME, Release, release_from_extras
from mnist_pipeline.registry.serving_export import SERVING_ROOT, export_release, serving_exports
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.runs import utc_now
from mnist_pipeline.storage import Storage, open_storage
from tests.registry_helpers import record_event, snapshot

REPO = Path(__file__).resolve().parent.parent
RUN = "manual__2026-01-01T00:00:00+00:00"
GRAPH, INDEX, DATA = "saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001"


def publish(registry: Registry, folders: Path, i: int) -> VersionRef:
    """Version `i` of the DNN: a model file, metrics.json and a SavedModel's three files."""
    ref = VersionRef("dnn", f"20260101T{i:06d}Z-{i:08x}")
    folder = folders / ref.version
    for name, data in ((GRAPH, b"graph"), (INDEX, b"index"), (DATA, b"weights")):
        (folder / "saved_model" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "saved_model" / name).write_bytes(data + f" {i}".encode())
    (folder / "model.keras").write_bytes(f"keras {i}".encode())
    figures = {"accuracy": 0.9 + i / 100, "loss": 0.1}
    (folder / "metrics.json").write_text(json.dumps(figures | {"test_hash": "t" * 64}))
    registry.publish(ref, folder, {"metrics": figures | {"test_hash": "t" * 64}, "data_hash": "d" * 64})
    return ref


@pytest.fixture
def registry(storage_uri: str) -> Registry:
    return Registry(open_storage(storage_uri))


@pytest.fixture
def versions(registry: Registry, tmp_path: Path) -> list[VersionRef]:
    return [publish(registry, tmp_path / "folders", i) for i in range(1, 3)]


def crown(registry: Registry, ref: VersionRef) -> Release:
    promote_version(registry, ref, "test", "test:alice")
    champion = registry.champion()
    assert champion is not None
    return Release.of(champion)


def serving_files(storage: Storage) -> dict[str, bytes]:
    return {key: storage.read_bytes(key) for key in storage.list_keys(f"{SERVING_ROOT}/")}


# --- the event's extra ---------------------------------------------------------------------------


def test_the_extra_names_the_champion_and_the_newest_event_wins(registry, versions) -> None:
    first, second = (crown(registry, ref).to_dict() for ref in versions)
    assert CHAMPION_ASSET_NAME == "mnist_champion"
    assert set(first) == {"model", "version", "uri", "metrics"}
    assert first["uri"] == registry.uri(versions[0]) and first["metrics"]["accuracy"] == pytest.approx(0.91)
    assert release_from_extras([first, second]) == Release.from_extra(second)
    assert release_from_extras([]) is None  # a run started by hand: the consumer exports the champion


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"model": "dnn", "uri": "gs://b/x", "metrics": {}}, "lacks the field 'version'"),
        ({"model": "dnn", "version": 7, "uri": "gs://b/x", "metrics": {}}, "version must be a string, got 7"),
        ({"model": "dnn", "version": "v", "uri": "gs://b/x", "metrics": [1]}, "metrics must be"),
        ({"model": "dnn", "version": "../../x", "uri": "gs://b/x", "metrics": {}}, "version name '../../x'"),
        ("dnn/v1", "expected a JSON object"),
        ({}, "is empty"),
    ],
)
def test_a_malformed_extra_is_refused_naming_the_field(extra: object, named: str) -> None:
    with pytest.raises(RegistryError, match=re.escape(named)) as refused:
        release_from_extras([extra])
    assert "mnist_champion event's extra" in str(refused.value) or "version name" in str(refused.value)


# --- the export for TF Serving -------------------------------------------------------------------


def test_each_new_champion_gets_the_next_number_and_a_rerun_writes_nothing(registry, versions) -> None:
    storage = registry.storage
    first = export_release(registry, crown(registry, versions[0]))
    assert (first.number, first.written, first.version) == (1, True, versions[0].version)
    exported = serving_files(storage)
    folder = f"{SERVING_ROOT}/1"
    assert set(exported) == {f"{folder}.json", *(f"{folder}/{name}" for name in (GRAPH, INDEX, DATA))}
    original = storage.read_bytes(f"{versions[0].prefix}/saved_model/{INDEX}")
    assert exported[f"{folder}/{INDEX}"] == original
    assert first.files[-1] == GRAPH  # written last: a server never lists a folder without all else

    again = export_release(registry, crown(registry, versions[0]))  # the same champion version
    assert (again.number, again.written, again.files) == (1, False, [])
    assert serving_files(storage) == exported

    second = export_release(registry, crown(registry, versions[1]))
    assert (second.number, second.written) == (2, True)
    assert [(e.number, e.version, e.uri) for e in serving_exports(storage)] == [
        (1, versions[0].version, registry.uri(versions[0])),
        (2, versions[1].version, registry.uri(versions[1])),
    ]
    back = export_release(registry, crown(registry, versions[0]))  # champion again: served again
    assert (back.number, back.written) == (3, True)


def test_without_an_event_the_current_champion_is_exported(registry, versions) -> None:
    with pytest.raises(RegistryError, match="no champion yet"):
        export_release(registry, None)
    crown(registry, versions[1])
    outcome = export_release(registry, None)
    assert (outcome.number, outcome.version) == (1, versions[1].version)


def test_a_release_already_superseded_is_not_exported(registry, versions) -> None:
    stale = crown(registry, versions[0])
    crown(registry, versions[1])
    outcome = export_release(registry, stale)
    assert outcome.number is None and not outcome.written and "no longer the champion" in outcome.note
    assert serving_files(registry.storage) == {}


def test_a_tampered_file_or_a_foreign_uri_stops_the_export_before_anything_is_written(
    registry, versions
) -> None:
    release = crown(registry, versions[0])
    registry.storage.write_bytes(f"{versions[0].prefix}/saved_model/{DATA}", b"tampered")
    with pytest.raises(RegistryError, match="does not match its recorded sha256"):
        export_release(registry, release)
    with pytest.raises(RegistryError, match="this registry holds"):
        export_release(registry, Release(release.model, release.version, "gs://elsewhere/x", {}))
    assert serving_files(registry.storage) == {}


def test_numbers_taken_by_hand_are_skipped_and_a_cut_short_export_is_completed(registry, versions) -> None:
    storage = registry.storage
    storage.write_bytes(f"{SERVING_ROOT}/4/{GRAPH}", b"someone else's model")  # no record: not ours
    release = crown(registry, versions[0])
    assert export_release(registry, release).number == 5
    storage.delete(f"{SERVING_ROOT}/5/{GRAPH}")  # as if the export died before its last file
    resumed = export_release(registry, release)
    assert (resumed.number, resumed.written, resumed.files) == (5, True, [GRAPH])


@pytest.mark.slow  # runs the DAG with dag.test()
def test_the_export_dag_exports_the_current_champion_when_it_first_runs_unpaused(
    airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A champion made before the DAG was active (by `make demo`, say) is exported by its first
    run, which the clock starts as soon as the DAG is parsed: it is not paused on creation."""
    import pendulum
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    monkeypatch.setenv("MNIST_REGISTRY_URI", str(tmp_path / "registry"))
    dag = DagBag(dag_folder=str(REPO / "dags" / "mnist_serving_export.py")).dags["mnist_serving_export"]
    assert dag.is_paused_upon_creation is False
    first = coerce_to_core_timetable(dag.timetable).next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=False),
    )
    assert first is not None and first.run_after <= pendulum.now("UTC")  # at once, not tomorrow

    registry = Registry(open_storage(str(tmp_path / "registry")))
    assert export_task_state(dag) == "skipped"  # no champion yet: nothing to export, nothing failed
    ref = publish(registry, tmp_path / "folders", 1)
    crown(registry, ref)
    assert export_task_state(dag) == "success"
    assert [(e.number, e.version) for e in serving_exports(registry.storage)] == [(1, ref.version)]


def export_task_state(dag: Any) -> str:
    """Run the export DAG once (no asset event, as the clock starts it); its task's final state."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dag_run = dag.test()
    assert str(dag_run.state) == "success"
    with create_session() as session:
        query = select(TaskInstance).where(TaskInstance.run_id == dag_run.run_id)
        (instance,) = session.scalars(query.where(TaskInstance.dag_id == "mnist_serving_export"))
        return str(instance.state)


# --- approval ------------------------------------------------------------------------------------


def pending(registry: Registry, ref: VersionRef, run_id: str = RUN) -> PromotionOutcome:
    """What `promote` returns and leaves when approval is required: the run's gate decision,
    pending, committed with the alias `candidate` pointing at the version."""
    test = SliceVerdict("mnist_test", 10000, 0.93, 0.91, b=40, c=240, adjusted_p_value=1e-30, better=True)
    verdict = Verdict(True, "better on mnist_test", 0.93, 0.91, rule="better", slices=[test])
    champion = registry.champion()
    metrics = {"accuracy": 0.93, "loss": 0.2}
    event = HistoryEvent(
        kind="gate",
        model=ref.model,
        verdict=verdict,
        promoted=False,
        run_id=run_id,
        trigger="manual",
        version=ref.version,
        metrics=metrics,
        previous_champion=champion.summary() if champion else None,
        approval=APPROVAL_PENDING,
    )
    candidate = ChampionPointer.for_version(
        VersionSummary(ref.model, ref.version, metrics),
        registry.uri(ref),
        utc_now(),
        "awaiting approval",
        run_id=run_id,
        set_by=f"gate of run {run_id}",
    )
    outcome = PromotionOutcome.of(record_event(registry, event, candidate, CANDIDATE, actor=f"run {run_id}"))
    assert outcome.awaiting_approval and not outcome.promoted and outcome.metrics == metrics
    return outcome


def answer(approved: bool, user: str | None = "alice", timed_out: bool = False) -> ApprovalAnswer:
    chosen = ["Approve" if approved else "Reject"]
    response = {"chosen_options": chosen, "responded_by_user": user and {"id": user, "name": user}}
    at = "2026-01-01T00:00:00Z"
    return ApprovalAnswer.from_hitl(response | {"timedout": timed_out, "responded_at": at})


def test_the_request_shows_the_verdict_the_slices_and_a_link_to_the_version(registry, versions) -> None:
    from mnist_pipeline.web.app import URL_PREFIX
    from mnist_pipeline.web.link import NAV_ROUTE

    crown(registry, versions[0])
    request = approval_request(pending(registry, versions[1]), RUN, 24, "/airflow")
    assert versions[1].version in request.subject
    page = "/airflow" + VERSION_PAGE.format(model="dnn", version=versions[1].version)
    # Framed inside the Airflow UI, as the navigation entry opens the registry, not a bare page.
    assert page.startswith(f"/airflow/plugin/{NAV_ROUTE}{URL_PREFIX}/versions/")
    assert f"]({page})" in request.body
    assert "better on mnist_test" in request.body
    assert "| mnist_test | 10000 | 0.9300 | 0.9100 | 40 / 240 |" in request.body
    assert f"`dnn/{versions[0].version}`" in request.body and "24 h" in request.body


def test_approving_moves_the_champion_names_the_approver_and_clears_the_candidate(registry, versions) -> None:
    crown(registry, versions[0])
    outcome = pending(registry, versions[1])
    release = released(registry, outcome, answer(True), RUN)
    assert release == Release("dnn", versions[1].version, registry.uri(versions[1]), outcome.metrics)
    champion = registry.champion()
    assert champion is not None and champion.is_version("dnn", versions[1].version)
    assert champion.run_id == RUN and champion.set_by == "alice" and "approved by alice" in champion.verdict
    assert champion.previous is not None and champion.previous.is_version("dnn", versions[0].version)
    event = list_events(registry)[-1]
    assert (event.kind, event.approval, event.approver) == ("approval", "approved", "alice")
    assert event.promoted and event.run_id == RUN and event.version == versions[1].version
    assert read_alias(registry, CANDIDATE) is None
    assert approve_candidate(registry, outcome, answer(True), RUN) == release  # a retried task
    assert len([e for e in list_events(registry) if e.kind == "approval"]) == 1


def test_an_approval_whose_candidate_changed_moves_nothing(registry, versions) -> None:
    crown(registry, versions[0])
    outcome = pending(registry, versions[1])
    set_alias(registry, CANDIDATE, versions[0], "test:bob", "another candidate", run_id="other-run")
    before = snapshot(registry.storage)
    moved = rf"candidate changed to dnn/{versions[0].version} by test:bob at .*since this run's gate"
    with pytest.raises(ConflictError, match=moved + r".*Nothing was changed"):
        released(registry, outcome, answer(True), RUN)
    assert snapshot(registry.storage) == before  # refused before anything was written
    champion = registry.champion()
    assert champion is not None and champion.is_version("dnn", versions[0].version)
    candidate = read_alias(registry, CANDIDATE)
    assert candidate is not None and candidate.version == versions[0].version
    assert candidate.run_id == "other-run"


def test_an_approval_after_the_champion_moved_moves_nothing(registry, versions) -> None:
    crown(registry, versions[0])
    outcome = pending(registry, versions[1])
    promote_version(registry, versions[0], "by hand, meanwhile", "test:carol")  # the champion moved
    before = snapshot(registry.storage)
    with pytest.raises(ConflictError, match=r"champion changed to dnn/.* by test:carol at .*Nothing was"):
        approve_candidate(registry, outcome, answer(True), RUN)
    assert snapshot(registry.storage) == before
    assert read_alias(registry, CANDIDATE) is not None  # still waiting: nobody answered


def test_an_answer_needs_the_runs_gate_decision(registry, versions) -> None:
    outcome = pending(registry, versions[1], run_id="the-deciding-run")
    before = snapshot(registry.storage)
    refused = re.escape(f"run {RUN} has no gate decision on dnn")
    with pytest.raises(RegistryError, match=refused):
        approve_candidate(registry, outcome, answer(True), RUN)
    with pytest.raises(RegistryError, match=refused):
        decline_candidate(registry, outcome, answer(False, "bob"), RUN)
    assert snapshot(registry.storage) == before and registry.champion() is None


@pytest.mark.parametrize(
    ("user", "timed_out", "status"), [("bob", False, "rejected"), (None, True, "timed-out")]
)
def test_a_rejection_or_a_timeout_keeps_the_champion_and_clears_the_candidate(
    registry, versions, user: str | None, timed_out: bool, status: str
) -> None:
    crown(registry, versions[0])
    before = registry.champion()
    outcome = pending(registry, versions[1])
    no = answer(False, user, timed_out)
    assert released(registry, outcome, no, RUN) is None  # no release: no asset event
    event = decline_candidate(registry, outcome, no, RUN)
    assert (event.kind, event.approval, event.approver, event.promoted) == ("approval", status, user, False)
    assert registry.champion() == before and read_alias(registry, CANDIDATE) is None
    assert decline_candidate(registry, outcome, no, RUN) == event  # a retried task answers once
    assert len([e for e in list_events(registry) if e.kind == "approval"]) == 1
    candidate_moves = alias_history(registry, CANDIDATE)  # the clearing is in the candidate's history
    assert [e.kind for e in candidate_moves[:2]] == ["approval", "gate"], [e.kind for e in candidate_moves]


def test_only_a_move_is_released(registry, versions) -> None:
    ref = versions[0]
    verdict = Verdict(True, "floor")
    moved = PromotionOutcome(True, ref.model, verdict, ref.version, metrics={"accuracy": 0.91})
    assert released(registry, moved, None, RUN) == Release(
        ref.model, ref.version, registry.uri(ref), {"accuracy": 0.91}
    )
    kept = PromotionOutcome(False, ref.model, Verdict(False, "not better"))
    dry = PromotionOutcome(False, ref.model, verdict, dry_run=True)
    assert released(registry, kept, None, RUN) is None and released(registry, dry, None, RUN) is None


# --- approval, word for word and field by field ------------------------------------------------------


def waiting(version: str = "20260101T000002Z-00000002", **fields: Any) -> PromotionOutcome:
    """A candidate's outcome, as `promote` returns it, without a registry behind it."""
    test = SliceVerdict("mnist_test", 10000, 0.93, 0.91, b=40, c=240, adjusted_p_value=1e-30, better=True)
    small = SliceVerdict("new_data", 150, 0.98, decides=False)
    verdict = Verdict(
        True, "better on mnist_test", slices=[test, small], recall_drops={"7": 0.0123, "3": 0.0, "1": 0.002}
    )
    defaults: dict[str, Any] = {
        "metrics": {"accuracy": 0.93},
        "previous_champion": VersionSummary("dnn", "20260101T000001Z-00000001", {}),
        "approval": APPROVAL_PENDING,
    }
    return PromotionOutcome(False, "dnn", verdict, version, **(defaults | fields))


def test_the_request_reads_word_for_word() -> None:
    request = approval_request(waiting(forced=True), "run-1", 1.5, "/airflow/")
    version = "dnn/20260101T000002Z-00000002"
    page = "/airflow" + VERSION_PAGE.format(model="dnn", version="20260101T000002Z-00000002")
    assert request.subject == f"Make {version} the MNIST champion?"
    assert request.body == "\n".join(
        [
            f"Run `run-1` asks to make **`{version}`** the champion"
            " (it replaces `dnn/20260101T000001Z-00000001`).",
            "",
            "**Verdict (forced):** better on mnist_test",
            "",
            "| slice | images | candidate | champion | McNemar b / c | p (Holm) | decides |",
            "|---|---:|---:|---:|---:|---:|---|",
            "| mnist_test | 10000 | 0.9300 | 0.9100 | 40 / 240 | 1e-30 | yes |",
            "| new_data | 150 | 0.9800 | - | None / None | - | no (too small) |",
            "",
            "Recall points lost per digit on mnist_test: 1: 0.20, 7: 1.23",
            "",
            f"[Open `{version}` in the Model Registry]({page})",
            "",
            "**Approve** moves the champion to it. **Reject**, or no answer within 1.5 h, keeps the champion"
            " and clears the candidate.",
        ]
    )


def test_a_first_candidates_request_shows_its_test_accuracy_or_says_it_is_unknown() -> None:
    first = Verdict(True, "no champion yet", recall_drops={"4": 0.0})
    outcome = PromotionOutcome(
        False, "dnn", first, "v1", metrics={"accuracy": 0.93}, approval=APPROVAL_PENDING
    )
    body = approval_request(outcome, "run-1", 24).body
    assert body.startswith(
        "Run `run-1` asks to make **`dnn/v1`** the champion (it replaces no champion yet).\n\n"
        "**Verdict:** no champion yet\n\nTest accuracy (mnist_test): 0.9300\n\n"
        f"[Open `dnn/v1` in the Model Registry]({VERSION_PAGE.format(model='dnn', version='v1')})\n\n"
    )
    unknown = PromotionOutcome(False, "dnn", first, "v1", approval=APPROVAL_PENDING)
    assert "\n\nTest accuracy (mnist_test): unknown\n\n[Open" in approval_request(unknown, "run-1", 24).body
    prefixed = approval_request(unknown, "run-1", 24, "/proxy/MLX/").body  # the prefix's own letters stay
    assert f"](/proxy/MLX{VERSION_PAGE.format(model='dnn', version='v1')})" in prefixed
    with pytest.raises(RegistryError, match=r"^dnn's promotion awaits no approval \(approval: None\)$"):
        approval_request(waiting(approval=None), "run-1", 24)


def test_an_answer_from_airflow_names_the_user_by_name_else_by_id() -> None:
    named = ApprovalAnswer.from_hitl(
        {"chosen_options": ["Approve"], "responded_by_user": {"id": "u1", "name": "Alice"}, "responded_at": 5}
    )
    assert named == ApprovalAnswer(True, "Alice", False, "5")
    unnamed = ApprovalAnswer.from_hitl(
        {"chosen_options": ["Reject"], "responded_by_user": {"id": "u1", "name": ""}}
    )
    assert (unnamed.approved, unnamed.user, unnamed.at, unnamed.status) == (False, "u1", None, "rejected")
    odd = ApprovalAnswer.from_hitl({"chosen_options": ["Approve", "Reject"], "responded_by_user": "alice"})
    assert (odd.approved, odd.user) == (False, None)
    timeout = ApprovalAnswer.from_hitl({"timedout": True})
    assert (timeout.status, timeout.who, timeout.at) == ("timed-out", "nobody (approval timeout)", None)


def test_an_approval_commit_and_its_event_say_who_on_which_decision(registry, versions) -> None:
    crown(registry, versions[0])
    before = registry.champion()
    outcome = pending(registry, versions[1])
    candidate = read_alias(registry, CANDIDATE)
    decided = registry.state().decision_of(RUN, "dnn")
    approve_candidate(registry, outcome, answer(True), RUN)
    state = registry.state()
    commit = registry.read_commit(state.answer_of(RUN, "dnn"))
    reason = f"{outcome.verdict.reason}; approved by alice"
    assert (commit.kind, commit.actor, commit.reason, commit.based_on) == (
        "approval",
        "alice",
        reason,
        decided,
    )
    assert (commit.run_id, commit.model, commit.time) == (RUN, "dnn", commit.event.time)
    event = commit.event
    assert (event.trigger, event.metrics, event.forced, event.verdict.promote) == (
        "alice",
        outcome.metrics,
        False,
        True,
    )
    assert event.verdict.reason == reason and event.verdict.slices == outcome.verdict.slices
    assert event.previous_champion == before.summary()
    champion = state.champion
    assert (champion.test_hash, champion.data_hash, champion.forced) == ("t" * 64, "d" * 64, False)
    assert champion.metrics == outcome.metrics and champion.verdict == reason
    cleared = state.alias(CANDIDATE).cleared
    assert (cleared.reason, cleared.cleared_by, cleared.previous) == (
        "approved: it is the champion now",
        "alice",
        candidate,
    )


def test_a_forced_candidate_approved_is_forced_and_one_declined_is_not(registry, versions, tmp_path) -> None:
    forced = pending(registry, versions[1])
    forced = PromotionOutcome.from_dict(forced.to_dict() | {"forced": True}, "outcome")
    approve_candidate(registry, forced, answer(True), RUN)
    assert list_events(registry)[-1].forced and registry.champion().forced
    other = pending(registry, versions[0], run_id="run-2")
    other = PromotionOutcome.from_dict(other.to_dict() | {"forced": True}, "outcome")
    assert decline_candidate(registry, other, answer(False, "bob"), "run-2").forced is False


def test_a_decline_says_who_and_clears_only_the_runs_own_candidate(registry, versions) -> None:
    crown(registry, versions[0])
    before = registry.champion()
    outcome = pending(registry, versions[1])
    decided = registry.state().decision_of(RUN, "dnn")
    # Meanwhile someone points the candidate at the same version, for another run.
    set_alias(registry, CANDIDATE, versions[1], "test:bob", "mine now", run_id="other-run")
    event = decline_candidate(registry, outcome, answer(False, "bob"), RUN)
    assert event.run_id == RUN and event.previous_champion == before.summary()
    assert event.verdict.promote is False and outcome.verdict.promote is True  # declined, though allowed
    assert event.verdict.reason == f"rejected by bob: the champion stays (gate: {outcome.verdict.reason})"
    commit = registry.read_commit(registry.state().answer_of(RUN, "dnn"))
    assert (commit.based_on, commit.actor, commit.moves) == (decided, "bob", [])
    assert read_alias(registry, CANDIDATE).run_id == "other-run"


@pytest.mark.parametrize(
    ("user", "timed_out", "why"), [("bob", False, "rejected"), (None, True, "timed-out")]
)
def test_a_declined_candidate_is_cleared_saying_why_and_by_whom(
    registry, versions, user, timed_out, why
) -> None:
    outcome = pending(registry, versions[1])
    candidate = read_alias(registry, CANDIDATE)
    decline_candidate(registry, outcome, answer(False, user, timed_out), RUN)
    cleared = registry.state().alias(CANDIDATE).cleared
    assert (cleared.reason, cleared.cleared_by, cleared.previous) == (
        f"{why}: the champion stays",
        user or "nobody (approval timeout)",
        candidate,
    )


def test_an_answer_given_already_is_not_given_again_and_a_lost_one_is_named(registry, versions) -> None:
    outcome = pending(registry, versions[1])
    decline_candidate(registry, outcome, answer(False, "bob"), RUN)
    refused = re.escape(f"run {RUN}'s candidate {versions[1]} was answered already, and not approved")
    with pytest.raises(RegistryError, match=f"^{refused}$"):
        approve_candidate(registry, outcome, answer(True), RUN)
    registry.storage.delete(commit_key(registry.state().answer_of(RUN, "dnn")))
    with pytest.raises(RegistryError, match=f"^{refused}$"):
        approve_candidate(registry, outcome, answer(True), RUN)
    lost = re.escape(f"run {RUN}'s answer on {versions[1]} is unreadable in the registry's log")
    with pytest.raises(RegistryError, match=f"^{lost}$"):
        decline_candidate(registry, outcome, answer(False, "bob"), RUN)


def test_a_version_published_without_figures_is_approved_without_a_test_hash(registry, tmp_path) -> None:
    ref = VersionRef("dnn", "20260101T000009Z-00000009")
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "model.keras").write_bytes(b"keras 9")
    registry.publish(ref, folder, {"data_hash": "d" * 64})
    approve_candidate(registry, pending(registry, ref), answer(True), RUN)
    champion = registry.champion()
    assert (champion.test_hash, champion.data_hash) == (None, "d" * 64)


def test_a_dry_run_or_an_unpromoted_version_is_never_released(registry, versions) -> None:
    ref, verdict = versions[0], Verdict(True, "floor")
    dry = PromotionOutcome(True, ref.model, verdict, ref.version, dry_run=True)
    kept = PromotionOutcome(False, ref.model, verdict, ref.version)
    assert released(registry, dry, None, RUN) is None and released(registry, kept, None, RUN) is None
