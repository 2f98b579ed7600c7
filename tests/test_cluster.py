"""The distributed topology, natively (`scripts/local_cluster.py`): PostgreSQL metadata,
CeleryExecutor on Redis, a `default` and a `gpu` worker, fake-gcs-server as registry; driven only
through the REST API, as a person, the UI's trigger form and a deploy job see it. One cluster
serves the module (starting one takes about a minute).

A run triggered with `approval=required` trains every model on the `gpu` worker (everything else
runs on `default`), then waits in its approval task while the champion stays as it was; approving
it through the API moves the champion (one `approval` commit, based on the run's gate decision),
history names the approver, exactly one `mnist_champion` event appears and `mnist_serving_export`
runs on it and writes the serving copy. A second run, rejected, moves nothing and emits nothing;
nor does a third that nobody answers before its timeout. Each run is tiny (2,000 images, 1 epoch)
and forced past the accuracy floor: the gate still decides, and says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.airflow_api import AirflowApi

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "local_cluster.py"
TINY_RUN = {
    "max_train_images": 2000,
    "epochs": 1,
    "force_promote": True,  # past the 0.90 floor, recorded as forced
    "approval": "required",
}
TINY_LINEAR_RUN = TINY_RUN | {"models": ["linear"]}
WAIT_S = 900
SCHEDULER_LOOPS_S = 5  # the scheduler loops about once a second
TRAINING, EXPORT = "mnist_training", "mnist_serving_export"
TRAININGS = {"linear.train", "dnn.train", "cnn.train"}


def cluster_command(command: str, home: Path) -> subprocess.CompletedProcess:
    # A database and broker number of its own: a developer's cluster stays untouched.
    args = [sys.executable, str(SCRIPT), command, "--home", str(home)]
    args += ["--database", "mnist_airflow_test", "--redis-db", "6"]
    if command == "up":  # down by itself if this test run is killed before its teardown
        args += ["--owner-pid", str(os.getpid())]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=os.environ.copy())


@pytest.fixture(scope="module")
def cluster(cluster_services, tmp_path_factory: pytest.TempPathFactory):
    """Skipped without PostgreSQL and Redis on 127.0.0.1 (a failure under CI=true)."""
    home = tmp_path_factory.mktemp("cluster")
    started = time.monotonic()
    result = cluster_command("up", home)
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"cluster up in {time.monotonic() - started:.0f} s")
    yield json.loads((home / "cluster.json").read_text())
    result = cluster_command("down", home)
    assert result.returncode == 0 and "no process left" in result.stdout, result.stdout + result.stderr
    assert not (home / "cluster.json").exists()


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


@dataclass(frozen=True)
class ApprovedRun:
    run_id: str
    request: dict[str, Any]  # what the approver was asked
    candidate: Any  # the candidate alias while the run waited
    response: dict[str, Any]  # the answer, as the REST API recorded it


@pytest.fixture(scope="module")
def approved(api: AirflowApi, registry) -> ApprovedRun:
    """A run of every model that waited for approval, approved through the REST API and finished."""
    from mnist_pipeline.registry.aliases import CANDIDATE, read_alias

    run_id, request, before = awaiting_approval(api, registry, TINY_RUN)
    assert before is None
    candidate = read_alias(registry, CANDIDATE)
    assert candidate is not None and candidate.run_id == run_id
    response = answer(api, run_id, "Approve")
    assert finished_run(api, TRAINING, run_id)["state"] == "success"
    return ApprovedRun(run_id, request, candidate, response)


def task_instances(api: AirflowApi, run_id: str) -> dict[str, dict[str, Any]]:
    path = f"{run_path(TRAINING, run_id)}/taskInstances?limit=100"
    return {ti["task_id"]: ti for ti in api.call("GET", path)["task_instances"]}


def assert_ran_on(ti: dict[str, Any], queue: str) -> None:
    """Routed to `queue` and executed by the worker listening on it (it names itself `queue@host`)."""
    assert ti["state"] == "success", ti
    assert ti["queue"] == queue and ti["hostname"].startswith(f"{queue}@"), (ti["task_id"], ti["hostname"])


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


def answer_commit(registry, run_id: str, model: str = "linear") -> Any:
    """The run's one approval commit (approved, rejected or timed out), checked to answer its gate
    decision: based on the decision's commit, and made after it."""
    state = registry.state()
    decided, answered = state.decision_of(run_id, model), state.answer_of(run_id, model)
    assert decided is not None and answered is not None and decided < answered
    commit = registry.read_commit(answered)
    assert (commit.kind, commit.run_id, commit.based_on) == ("approval", run_id, decided)
    return commit


def awaiting_approval(api: AirflowApi, registry, conf: dict[str, Any]) -> tuple[str, dict[str, Any], Any]:
    """Trigger a run that must be approved; once its approval task waits, return the run id, the
    request the approver sees, and the champion as it then is."""
    before = registry.champion()
    body = {"logical_date": None, "conf": conf}
    run_id = api.call("POST", f"/api/v2/dags/{TRAINING}/dagRuns", body)["dag_run_id"]
    wait_until("the approval task waiting", lambda: waiting(api, run_id))
    request = api.call("GET", f"{run_path(TRAINING, run_id)}/taskInstances/approval/-1/hitlDetails")
    time.sleep(SCHEDULER_LOOPS_S)  # still waiting, and nothing moved meanwhile
    assert task(api, run_id, "approval")["state"] == "awaiting_input"
    assert registry.champion() == before
    state = registry.state()  # the gate decided (and pointed the candidate); nobody answered yet
    decided = [model for model in ("linear", "dnn", "cnn") if state.decision_of(run_id, model) is not None]
    assert len(decided) == 1 and state.answer_of(run_id, decided[0]) is None
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


def approved_release(api: AirflowApi, registry, run: ApprovedRun) -> Any:
    """The approved run moved the champion and announced it once. Returns the new champion."""
    from mnist_pipeline.registry.history import list_events

    candidate = run.candidate
    assert candidate.version in run.request["subject"] and run.request["defaults"] == ["Reject"]
    assert f"/model-registry/versions/{candidate.model}/{candidate.version}" in run.request["body"]
    assert "forced" in run.request["body"]
    assert task(api, run.run_id, "release")["state"] == "success"
    champion = registry.champion()
    assert champion is not None and (champion.run_id, champion.version) == (run.run_id, candidate.version)
    approval = list_events(registry)[-1]
    assert (approval.kind, approval.approval, approval.approver) == ("approval", "approved", "admin")
    moved = {move.alias: move for move in answer_commit(registry, run.run_id, candidate.model).moves}
    assert moved["champion"].pointer == champion and moved["candidate"].pointer is None
    (event,) = champion_events(api)
    assert (event["source_run_id"], event["source_task_id"]) == (run.run_id, "release")
    released = {"model": champion.model, "version": champion.version, "uri": champion.uri}
    assert event["extra"] == released | {"metrics": champion.metrics}
    print_timeline(f"approved run {run.run_id}", timeline(api, run.run_id, run.response))
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

    run_id, _, before = awaiting_approval(api, registry, TINY_LINEAR_RUN)
    response = answer(api, run_id, "Reject")
    assert finished_run(api, TRAINING, run_id)["state"] == "success"
    assert task(api, run_id, "release")["state"] == "skipped"
    assert registry.champion() == before == champion
    rejection = list_events(registry)[-1]
    assert (rejection.kind, rejection.approval, rejection.approver) == ("approval", "rejected", "admin")
    assert rejection.run_id == run_id and not rejection.promoted and read_alias(registry, CANDIDATE) is None
    assert [move.alias for move in answer_commit(registry, run_id).moves] == ["candidate"]
    time.sleep(SCHEDULER_LOOPS_S)  # a consumer run would have been created by now (under 1 s seen)
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
    conf = TINY_LINEAR_RUN | {"approval_timeout_hours": 0.002}  # 7.2 s
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


def test_a_run_triggered_through_the_rest_api_trains_on_the_gpu_worker(
    api: AirflowApi, approved: ApprovedRun
) -> None:
    instances = task_instances(api, approved.run_id)
    assert {task_id for task_id in instances if task_id.endswith(".train")} == TRAININGS
    for task_id, ti in sorted(instances.items()):
        if ti["state"] == "skipped":  # what this run did not need, as the DAG's own tests check
            continue
        assert_ran_on(ti, "gpu" if task_id in TRAININGS else "default")
        print(f"{task_id:16} queue={ti['queue']:8} pool={ti['pool']:12} host={ti['hostname']}")
    assert {instances[task_id]["pool"] for task_id in TRAININGS} == {"gpu"}


def test_an_approved_run_releases_and_a_rejected_one_moves_nothing(
    api: AirflowApi, registry, approved: ApprovedRun
) -> None:
    champion = approved_release(api, registry, approved)
    exported_once(api, registry, champion)
    reject_one(api, registry, champion)
    time_out_one(api, registry, champion)


def test_a_cluster_whose_owner_died_is_taken_down_by_its_watcher(tmp_path: Path) -> None:
    """A stand-in cluster (one process group that outlived its starter, as `up` leaves them)
    watched for an owner process: when the owner ends, the watcher stops the group and removes
    the state file."""
    started = subprocess.run(
        ["sh", "-c", "setsid sleep 600 >/dev/null 2>&1 & echo $!"],
        env=os.environ | {"MNIST_CLUSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    member = int(started.stdout)
    owner = subprocess.Popen(["sleep", "600"])
    (tmp_path / "logs").mkdir()
    state = {"home": str(tmp_path), "database": "unused", "redis_db": 0, "gpus": 0, "pids": {"x": member}}
    (tmp_path / "cluster.json").write_text(json.dumps(state))
    command = [sys.executable, str(SCRIPT), "watch", "--home", str(tmp_path), "--owner-pid", str(owner.pid)]
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        assert alive(member) and watcher.poll() is None, "taken down while its owner lives"
        owner.kill()
        owner.wait()
        stdout, _ = watcher.communicate(timeout=60)
        assert "no process left" in stdout and not alive(member)
        assert not (tmp_path / "cluster.json").exists()
    finally:
        owner.kill()
        watcher.kill()
        if alive(member):
            os.kill(member, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
