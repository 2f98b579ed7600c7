"""Promotion as a release on the native cluster (`scripts/local_cluster.py`: PostgreSQL, Celery on
Redis, fake-gcs-server), driven only through the REST API, as a person and a deploy job see it.

A run triggered with `approval=required` waits in its approval task while the champion stays as
it was; approving it through the API moves the champion (one `approval` commit, based on the run's
gate decision), history names the approver, exactly one `mnist_champion` event appears and
`mnist_serving_export` runs on it and writes the serving copy. A second run, rejected, moves
nothing and emits nothing; nor does a third that nobody answers before its timeout. Each run is a
tiny linear model (2,000 images, 1 epoch) forced past the accuracy floor: the gate still decides,
and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests import test_cluster
from tests.airflow_api import AirflowApi

pytestmark = pytest.mark.slow
TINY_APPROVED_RUN = {
    "models": ["linear"],
    "max_train_images": 2000,
    "epochs": 1,
    "force_promote": True,  # past the 0.90 floor, recorded as forced
    "approval": "required",
}
WAIT_S = 900
TRAINING, EXPORT = "mnist_training", "mnist_serving_export"


def cluster_command(command: str, home: Path) -> subprocess.CompletedProcess:
    # A database and broker number of their own: neither a developer's cluster nor test_cluster's.
    return test_cluster.cluster_command(command, home, "mnist_airflow_approval", redis_db=7)


@pytest.fixture(scope="module")
def cluster(cluster_services, tmp_path_factory: pytest.TempPathFactory):
    """Skipped without PostgreSQL and Redis on 127.0.0.1 (a failure under CI=true)."""
    home = tmp_path_factory.mktemp("approval-cluster")
    result = cluster_command("up", home)
    assert result.returncode == 0, result.stdout + result.stderr
    yield json.loads((home / "cluster.json").read_text())
    result = cluster_command("down", home)
    assert result.returncode == 0 and "no process left" in result.stdout, result.stdout + result.stderr


@pytest.fixture(scope="module")
def api(cluster: dict[str, Any]) -> AirflowApi:
    api = AirflowApi.signed_in(cluster["api_url"], cluster["username"], cluster["password"])
    for dag_id in (TRAINING, EXPORT):  # training starts paused; unpausing the active consumer is a no-op
        wait_until(f"{dag_id} parsed", lambda d=dag_id: get_or_none(api, f"/api/v2/dags/{d}"), 180)
        api.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
    return api


@pytest.fixture(scope="module")
def registry(cluster: dict[str, Any]) -> Iterator[Any]:
    """The cluster's registry, read from this process too: the emulator setting points at the
    cluster's fake-gcs-server while this module runs, and at the suite's own one again after."""
    from mnist_pipeline.registry.client import Registry
    from mnist_pipeline.storage import open_storage

    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{cluster['gcs_port']}"
    try:
        yield Registry(open_storage(cluster["registry"]))
    finally:
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved


def get_or_none(api: AirflowApi, path: str) -> Any:
    import urllib.error

    try:
        return api.call("GET", path)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def wait_until(what: str, probe: Any, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while (found := probe()) in (None, False, []):
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s:.0f} s"
        time.sleep(3)
    return found


def run_path(dag_id: str, run_id: str) -> str:
    return f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"


def task(api: AirflowApi, run_id: str, task_id: str) -> dict[str, Any]:
    return api.call("GET", f"{run_path(TRAINING, run_id)}/taskInstances/{task_id}")


def finished_run(api: AirflowApi, dag_id: str, run_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        run = api.call("GET", run_path(dag_id, run_id))
        return run if run["state"] in ("success", "failed") else None

    return wait_until(f"{run_id} finished", finished)


def champion_events(api: AirflowApi) -> list[dict[str, Any]]:
    found = api.call("GET", "/api/v2/assets/events?name_pattern=mnist_champion&limit=100")
    return found["asset_events"]


def answer_commit(registry, run_id: str) -> Any:
    """The run's one approval commit (approved, rejected or timed out), checked to answer its gate
    decision: based on the decision's commit, and made after it."""
    state = registry.state()
    decided, answered = state.decision_of(run_id, "linear"), state.answer_of(run_id, "linear")
    assert decided is not None and answered is not None and decided < answered
    commit = registry.read_commit(answered)
    assert (commit.kind, commit.run_id, commit.based_on) == ("approval", run_id, decided)
    return commit


def awaiting_approval(api: AirflowApi, registry) -> tuple[str, dict[str, Any], Any]:
    """Trigger a run that must be approved; once its approval task waits, return the run id, the
    request the approver sees, and the champion as it then is."""
    before = registry.champion()
    body = {"logical_date": None, "conf": TINY_APPROVED_RUN}
    run_id = api.call("POST", f"/api/v2/dags/{TRAINING}/dagRuns", body)["dag_run_id"]
    wait_until("the approval task waiting", lambda: waiting(api, run_id))
    request = api.call("GET", f"{run_path(TRAINING, run_id)}/taskInstances/approval/-1/hitlDetails")
    time.sleep(10)  # a few scheduler loops: still waiting, and nothing moved meanwhile
    assert task(api, run_id, "approval")["state"] == "awaiting_input"
    assert registry.champion() == before
    state = registry.state()  # the gate decided (and pointed the candidate); nobody answered yet
    assert state.decision_of(run_id, "linear") is not None and state.answer_of(run_id, "linear") is None
    return run_id, request, before


def waiting(api: AirflowApi, run_id: str) -> bool:
    """Whether the run's approval task waits for an answer; a run that ended instead fails the test."""
    state = api.call("GET", run_path(TRAINING, run_id))["state"]
    assert state in ("queued", "running"), f"run {run_id} ended {state} before asking for approval"
    return task(api, run_id, "approval")["state"] == "awaiting_input"


def answer(api: AirflowApi, run_id: str, option: str) -> dict[str, Any]:
    path = f"{run_path(TRAINING, run_id)}/taskInstances/approval/-1/hitlDetails"
    return api.call("PATCH", path, {"chosen_options": [option]})


def timeline(api: AirflowApi, run_id: str, response: dict[str, Any] | None) -> list[tuple[str, str]]:
    """When each step of the run happened, for the record (`pytest -s` prints it)."""
    run = api.call("GET", run_path(TRAINING, run_id))
    instances = api.call("GET", f"{run_path(TRAINING, run_id)}/taskInstances?limit=100")["task_instances"]
    moments = [("triggered", run["queued_at"]), (f"run {run['state']}", run["end_date"])]
    for ti in (ti for ti in instances if ti["state"] != "skipped" or ti["task_id"] == "release"):
        moments += [(f"{ti['task_id']} started", ti["start_date"])]
        moments += [(f"{ti['task_id']} {ti['state']}", ti["end_date"])]
    if response is not None:
        who = f"{response['chosen_options'][0]} by {response['responded_by']['name']}"
        moments.append((f"answered through the REST API: {who}", response["responded_at"]))
    return sorted((m for m in moments if m[1]), key=lambda m: m[1])


def print_timeline(title: str, moments: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    for what, when in moments:
        print(f"  {when}  {what}")


def approve_one(api: AirflowApi, registry) -> Any:
    """The approved run: waits, then moves the champion and announces it once; the consumer
    exports it. Returns the new champion."""
    from mnist_pipeline.registry.aliases import CANDIDATE, read_alias
    from mnist_pipeline.registry.history import list_events

    run_id, request, before = awaiting_approval(api, registry)
    candidate = read_alias(registry, CANDIDATE)
    assert candidate is not None and candidate.run_id == run_id and before is None
    assert candidate.version in request["subject"] and request["defaults"] == ["Reject"]
    assert f"/model-registry/versions/linear/{candidate.version}" in request["body"]
    assert "forced" in request["body"]
    response = answer(api, run_id, "Approve")
    assert finished_run(api, TRAINING, run_id)["state"] == "success"
    assert task(api, run_id, "release")["state"] == "success"
    champion = registry.champion()
    assert champion is not None and (champion.run_id, champion.version) == (run_id, candidate.version)
    approval = list_events(registry)[-1]
    assert (approval.kind, approval.approval, approval.approver) == ("approval", "approved", "admin")
    moved = {move.alias: move for move in answer_commit(registry, run_id).moves}
    assert moved["champion"].pointer == champion and moved["candidate"].pointer is None
    (event,) = champion_events(api)
    assert (event["source_run_id"], event["source_task_id"]) == (run_id, "release")
    released = {"model": "linear", "version": champion.version, "uri": champion.uri}
    assert event["extra"] == released | {"metrics": champion.metrics}
    print_timeline(f"approved run {run_id}", timeline(api, run_id, response))
    return champion


def exported_once(api: AirflowApi, registry, champion: Any) -> None:
    """The consumer DAG ran on the one event and wrote the serving copy."""
    from mnist_pipeline.registry.serving_export import SERVING_ROOT, serving_exports

    (export_run,) = wait_until("the consumer run", lambda: champion_events(api)[0]["created_dagruns"])
    consumer = finished_run(api, EXPORT, export_run["run_id"])
    assert consumer["state"] == "success"
    assert [(e.number, e.version) for e in serving_exports(registry.storage)] == [(1, champion.version)]
    assert registry.storage.exists(f"{SERVING_ROOT}/1/saved_model.pb")
    print(f"  {consumer['start_date']}  {EXPORT} started (run {consumer['dag_run_id']})")
    print(f"  {consumer['end_date']}  {EXPORT} {consumer['state']}: {SERVING_ROOT}/1/ written")


def reject_one(api: AirflowApi, registry, champion: Any) -> None:
    """The rejected run: nothing moves, nothing is announced, the candidate is cleared."""
    from mnist_pipeline.registry.aliases import CANDIDATE, read_alias
    from mnist_pipeline.registry.history import list_events
    from mnist_pipeline.registry.serving_export import serving_exports

    run_id, _, before = awaiting_approval(api, registry)
    response = answer(api, run_id, "Reject")
    assert finished_run(api, TRAINING, run_id)["state"] == "success"
    assert task(api, run_id, "release")["state"] == "skipped"
    assert registry.champion() == before == champion
    rejection = list_events(registry)[-1]
    assert (rejection.kind, rejection.approval, rejection.approver) == ("approval", "rejected", "admin")
    assert rejection.run_id == run_id and not rejection.promoted and read_alias(registry, CANDIDATE) is None
    assert [move.alias for move in answer_commit(registry, run_id).moves] == ["candidate"]
    time.sleep(10)  # a consumer run would have been created by now
    assert len(champion_events(api)) == 1
    runs = api.call("GET", f"/api/v2/dags/{EXPORT}/dagRuns")["dag_runs"]
    assert [run["run_type"] for run in runs].count("asset_triggered") == 1  # and the clock's, if any
    assert len(serving_exports(registry.storage)) == 1
    print_timeline(f"rejected run {run_id}", timeline(api, run_id, response))


def time_out_one(api: AirflowApi, registry, champion: Any) -> None:
    """A run nobody answers: the scheduler's timeout gives the default answer, Reject."""
    from mnist_pipeline.registry.aliases import CANDIDATE, read_alias
    from mnist_pipeline.registry.history import list_events

    before = registry.champion()
    conf = TINY_APPROVED_RUN | {"approval_timeout_hours": 0.005}  # 18 s
    started = api.call("POST", f"/api/v2/dags/{TRAINING}/dagRuns", {"logical_date": None, "conf": conf})
    run = finished_run(api, TRAINING, started["dag_run_id"])
    assert run["state"] == "success" and task(api, run["dag_run_id"], "release")["state"] == "skipped"
    assert registry.champion() == before == champion and read_alias(registry, CANDIDATE) is None
    timeout = list_events(registry)[-1]
    assert (timeout.kind, timeout.approval, timeout.approver) == ("approval", "timed-out", None)
    assert [move.alias for move in answer_commit(registry, run["dag_run_id"]).moves] == ["candidate"]
    assert len(champion_events(api)) == 1
    moments = [*timeline(api, run["dag_run_id"], None), ("history: timed-out, champion stays", timeout.time)]
    print_timeline(f"unanswered run {run['dag_run_id']}", sorted(moments, key=lambda m: m[1]))


def test_an_approved_run_releases_and_a_rejected_one_moves_nothing(api: AirflowApi, registry) -> None:
    champion = approve_one(api, registry)
    exported_once(api, registry, champion)
    reject_one(api, registry, champion)
    time_out_one(api, registry, champion)
