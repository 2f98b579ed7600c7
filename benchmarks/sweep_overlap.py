"""Sweep trials side by side: two workers on the training queue, the `gpu` pool at 2 slots, then 1.

    MNIST_SOURCE=../shared/data/mnist.npz nice -n 19 .venv/bin/python benchmarks/sweep_overlap.py

Brings up the native cluster (`scripts/local_cluster.py`: PostgreSQL, CeleryExecutor on Redis,
fake-gcs-server) in a home of its own under /tmp, with a database and broker number of its own,
and starts a second Celery worker on the `gpu` queue (`MNIST_WORKER_NAME=gpu-2`) exactly as the
cluster starts its first one, registered in the cluster's state so `down` stops it too. Then, for
pool slots 2 and then 1 (set through PATCH /api/v2/pools/gpu), triggers one tiny run of
`mnist_training` with a 4-trial sweep of the linear model (a dry run: the registry is untouched),
waits for it, and reads the mapped `linear.train` instances (start, end, host name). Prints a table,
whether any two trials of a run overlapped in time and which workers ran them (issue 18: with 2
slots trials overlap on both workers, with 1 slot never), writes
benchmarks/results/sweep_overlap.json, and always brings the cluster down, checking that no
process of it is left.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import local_cluster as lc
from _common import mnist_source, write_result

DAG_ID = "mnist_training"
SECOND_WORKER = "gpu-2"  # MNIST_WORKER_NAME of the extra worker: its task instances say `gpu-2@host`
RUN_TIMEOUT_S = 1500
TRIALS = [0.001, 0.002, 0.003, 0.004]
CONF = {
    "models": ["linear"],
    "max_train_images": 2000,
    "epochs": 2,
    "sweep": {"linear": {"learning_rate": TRIALS}},
    "dry_run": True,  # decide, write nothing to the registry
    "approval": "none",
}


class Api:
    """The Airflow REST API (v2) with a bearer token from /auth/token."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url
        token = self.call("POST", "/auth/token", {"username": username, "password": password}, auth=False)
        self.token = token["access_token"]

    def call(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> Any:
        request = urllib.request.Request(self.base_url + path, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        data = json.dumps(body).encode() if body is not None else None
        try:
            with urllib.request.urlopen(request, data=data, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            exc.msg = f"{exc.msg} ({method} {path}): {exc.read().decode(errors='replace')[:500]}"
            raise

    def found(self, path: str) -> bool:
        try:
            self.call("GET", path)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise
        return True


def celery_name(worker: str) -> str:
    return f"{worker}@{socket.gethostname()}"


def worker_answers(cluster: lc.Cluster, name: str) -> bool:
    """The Celery worker `name` replies to a ping through the broker."""
    app = "airflow.providers.celery.executors.celery_executor.app"
    command = [str(lc.BIN / "celery"), "--app", app, "inspect", "ping", "--json", "-d", name]
    env = lc.airflow_env(cluster)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    return name in result.stdout


def start_second_worker(cluster: lc.Cluster) -> None:
    """A second worker on the training queue: the first one's command line and environment, with
    its own Celery host name, MNIST_WORKER_NAME and log-server port; its PID in the cluster's state."""
    command, own = lc.services(cluster)["worker-gpu"]
    command = list(command)
    command[command.index("--celery-hostname") + 1] = celery_name(SECOND_WORKER)
    own = own | {
        "MNIST_WORKER_NAME": SECOND_WORKER,
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(lc.free_port()),
    }
    lc.start(cluster, f"worker-{SECOND_WORKER}", command, lc.airflow_env(cluster) | own)
    name = celery_name(SECOND_WORKER)
    lc.wait_for(f"worker {name}", lambda: worker_answers(cluster, name), lc.HEALTH_TIMEOUT_S, cluster)


def set_pool_slots(api: Api, slots: int) -> int:
    """PATCH the training pool's slots (the API validates a named pool's body whole: name, slots and
    include_deferred, so the current values travel along; the mask keeps the change to the slots)."""
    path = f"/api/v2/pools/{lc.TRAIN_QUEUE}"
    pool = api.call("GET", path)
    body = {"pool": pool["name"], "slots": slots, "include_deferred": pool["include_deferred"]}
    return api.call("PATCH", f"{path}?update_mask=slots", body)["slots"]


def run_path(run_id: str) -> str:
    return f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"


def trigger_and_wait(api: Api, conf: dict[str, Any]) -> dict[str, Any]:
    run = api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while run["state"] not in ("success", "failed") and time.monotonic() < deadline:
        time.sleep(5)
        run = api.call("GET", run_path(run["dag_run_id"]))
    return run


def mapped_trials(api: Api, run_id: str) -> list[dict[str, Any]]:
    """The mapped `linear.train` instances of the run: index, worker, start and end."""
    path = f"{run_path(run_id)}/taskInstances/linear.train/listMapped?limit=100"
    keys = ("map_index", "rendered_map_index", "hostname", "state", "try_number", "start_date", "end_date")
    rows = [{key: ti.get(key) for key in keys} for ti in api.call("GET", path)["task_instances"]]
    return sorted(rows, key=lambda row: row["map_index"])


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def overlaps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pair of trials whose [start, end] intervals intersect, and for how long."""
    timed = [row for row in rows if row["start_date"] and row["end_date"]]
    pairs = []
    for a, b in itertools.combinations(timed, 2):
        start = max(when(a["start_date"]), when(b["start_date"]))
        end = min(when(a["end_date"]), when(b["end_date"]))
        if start < end:
            seconds = round((end - start).total_seconds(), 1)
            pairs.append({"map_indexes": [a["map_index"], b["map_index"]], "seconds": seconds})
    return pairs


def one_setting(api: Api, slots: int) -> dict[str, Any]:
    """Set the pool, run the sweep once, and say whether its trials overlapped and where they ran."""
    set_to = set_pool_slots(api, slots)
    started = time.monotonic()
    run = trigger_and_wait(api, CONF)
    wall = round(time.monotonic() - started, 1)
    rows = mapped_trials(api, run["dag_run_id"])
    pairs = overlaps(rows)
    return {
        "pool_slots": set_to,
        "run_id": run["dag_run_id"],
        "run_state": run["state"],
        "run_seconds": wall,
        "trials": rows,
        "overlapping_pairs": pairs,
        "overlap": bool(pairs),
        "hostnames": sorted({row["hostname"] for row in rows if row["hostname"]}),
    }


def print_table(results: list[dict[str, Any]]) -> None:
    header = f"{'slots':>5}  {'map_index':>9}  {'hostname':<28} {'start':<32} {'end':<32} {'s':>6}  state"
    print(header)
    print("-" * len(header))
    for result in results:
        for row in result["trials"]:
            start, end = row["start_date"] or "-", row["end_date"] or "-"
            seconds = (when(end) - when(start)).total_seconds() if "-" not in (start, end) else 0.0
            print(
                f"{result['pool_slots']:>5}  {row['map_index']:>9}  {row['hostname'] or '-':<28} "
                f"{start:<32} {end:<32} {seconds:>6.1f}  {row['state']}"
            )
    for result in results:
        pairs = ", ".join(f"{p['map_indexes']} {p['seconds']} s" for p in result["overlapping_pairs"])
        print(
            f"slots {result['pool_slots']}: run {result['run_state']} in {result['run_seconds']} s; "
            f"overlap: {'YES' if result['overlap'] else 'no'}{f' ({pairs})' if pairs else ''}; "
            f"workers: {', '.join(result['hostnames'])}"
        )


def sweep_on_cluster(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Bring the cluster up with a second training worker and run the sweep once per slot count."""
    cluster = lc.up(args.home, args.database, args.redis_db, gpus=1)
    start_second_worker(cluster)
    api = Api(cluster.api_url, cluster.username, cluster.password)
    deadline = time.monotonic() + 300
    while not api.found(f"/api/v2/dags/{DAG_ID}"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{DAG_ID} not parsed after 300 s")
        time.sleep(3)
    api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    return [one_setting(api, slots) for slots in args.slots]


def bring_down(home: Path) -> dict[str, Any]:
    """`down`, then the check the cluster tests make: no process of the cluster, no state file."""
    left = lc.down(home)
    left += [pid for pid in lc.processes_of(str(home.resolve())) if pid not in left]
    clean = not left and not lc.state_file(home).exists()
    print(f"cluster down: {'no process left' if clean else f'still running: {left}'}")
    return {"processes_left": left, "clean": clean}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None, help="cluster home (default: new dir in /tmp)")
    parser.add_argument("--database", default="mnist_airflow_sweep", help="PostgreSQL database (recreated)")
    parser.add_argument("--redis-db", type=int, default=8, help="Redis database number (flushed)")
    parser.add_argument("--slots", type=int, nargs="+", default=[2, 1], help="pool slots, one run each")
    args = parser.parse_args()
    args.home = args.home or Path(tempfile.mkdtemp(prefix="sweep-overlap-", dir="/tmp"))
    os.environ["MNIST_SOURCE"] = mnist_source()  # the cluster's processes inherit it
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    try:
        results = sweep_on_cluster(args)
    finally:
        cleanup = bring_down(args.home)
    wall = round(time.monotonic() - started, 1)
    print_table(results)
    print(f"wall time {wall} s (cluster up, {len(results)} runs, down); home {args.home}")
    path = write_result(
        "sweep_overlap",
        {"conf": CONF, "second_worker": SECOND_WORKER, "results": results, "wall_seconds": wall} | cleanup,
    )
    print(f"wrote {path}")
    return 0 if cleanup["clean"] and all(r["run_state"] == "success" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
