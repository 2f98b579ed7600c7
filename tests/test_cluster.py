"""The distributed topology, natively: PostgreSQL metadata, CeleryExecutor on Redis, a `default`
and a `gpu` worker, fake-gcs-server as registry (`scripts/local_cluster.py`).

A run is triggered through the REST API as the UI's trigger form does, and must route every
training to the `gpu` worker and everything else to the `default` worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.airflow_api import AirflowApi

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "local_cluster.py"
RUN_TIMEOUT_S = 900
# A small run that still clears the registry's 0.90 accuracy floor, so it crowns a champion.
SMALL_RUN = {"max_train_images": 6000, "epochs": 2}


def cluster_command(
    command: str, home: Path, database: str = "mnist_airflow_test", redis_db: int = 6
) -> subprocess.CompletedProcess:
    # A database and broker number of its own: a developer's cluster stays untouched.
    args = [sys.executable, str(SCRIPT), command, "--home", str(home)]
    args += ["--database", database, "--redis-db", str(redis_db)]
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
    state = json.loads((home / "cluster.json").read_text())
    state["up_seconds"] = round(time.monotonic() - started, 1)
    yield state
    result = cluster_command("down", home)
    assert result.returncode == 0 and "no process left" in result.stdout, result.stdout + result.stderr
    assert not (home / "cluster.json").exists()


def trigger_and_wait(api: AirflowApi, conf: dict[str, Any]) -> dict[str, Any]:
    api.call("PATCH", "/api/v2/dags/mnist_training", {"is_paused": False})
    run = api.call("POST", "/api/v2/dags/mnist_training/dagRuns", {"logical_date": None, "conf": conf})
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while run["state"] not in ("success", "failed") and time.monotonic() < deadline:
        time.sleep(5)
        run = api.call("GET", f"/api/v2/dags/mnist_training/dagRuns/{run['dag_run_id']}")
    return run


def task_instances(api: AirflowApi, run_id: str) -> dict[str, dict[str, Any]]:
    path = f"/api/v2/dags/mnist_training/dagRuns/{run_id}/taskInstances?limit=100"
    return {ti["task_id"]: ti for ti in api.call("GET", path)["task_instances"]}


def assert_ran_on(ti: dict[str, Any], queue: str) -> None:
    """Routed to `queue` and executed by the worker listening on it (it names itself `queue@host`)."""
    assert ti["state"] == "success", ti
    assert ti["queue"] == queue and ti["hostname"].startswith(f"{queue}@"), (ti["task_id"], ti["hostname"])


def test_a_run_triggered_through_the_rest_api_trains_on_the_gpu_worker(
    cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_pipeline.registry.client import Registry
    from mnist_pipeline.storage import open_storage

    api = AirflowApi.signed_in(cluster["api_url"], cluster["username"], cluster["password"])
    started = time.monotonic()
    run = trigger_and_wait(api, SMALL_RUN)
    assert run["state"] == "success", run
    instances = task_instances(api, run["dag_run_id"])
    trainings = {task_id for task_id in instances if task_id.endswith(".train")}
    assert trainings == {"linear.train", "dnn.train", "cnn.train"}
    for task_id, ti in sorted(instances.items()):
        if task_id == "approval":  # asks nobody: this run does not require approval
            assert ti["state"] == "skipped", ti
            continue
        assert_ran_on(ti, "gpu" if task_id in trainings else "default")
        print(f"{task_id:16} queue={ti['queue']:8} pool={ti['pool']:12} host={ti['hostname']}")
    assert {instances[task_id]["pool"] for task_id in trainings} == {"gpu"}
    print(f"cluster up in {cluster['up_seconds']} s; run took {time.monotonic() - started:.0f} s")

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{cluster['gcs_port']}")
    champion = Registry(open_storage(cluster["registry"])).champion()
    assert champion is not None and champion.run_id == run["dag_run_id"]


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
