#!/usr/bin/env python3
"""`make airflow`: the Airflow UI with this project's DAGs and plugin, on this machine, in one command.

    airflow_ui.py [--port PORT] [--host HOST] [--timeout SECONDS]

Runs `airflow standalone` (api-server, scheduler, dag-processor and triggerer, LocalExecutor, SQLite)
with the settings of `make demo`: AIRFLOW_HOME `.local/airflow`, the DAGs of `dags/`, the plugin of
`plugins/`, no example DAGs, and the `MNIST_*` variables of this environment (unset, the defaults
of `mnist_pipeline/config.py`: the registry in `.local/registry`). It waits until
`/api/v2/monitor/health` reports every component healthy, then prints the address, the user and
its password. Airflow's own output goes to `<AIRFLOW_HOME>/standalone.log`.

Ctrl-C (SIGINT) or SIGTERM stops every process Airflow started, task runs included (SIGTERM, then
SIGKILL after 30 s), and exits 0. A taken port, another instance on the same AIRFLOW_HOME or a
malformed `MNIST_*` variable stops it before anything starts; Airflow exiting by itself prints the
log's last lines; both exit 1.

Task runs at once: two per CPU core this process may use, at most 4 (`AIRFLOW__CORE__PARALLELISM`).
The LocalExecutor forks that many workers at start-up and keeps them, busy or idle; Airflow's own
default, 32, held 6.6 GB RSS on a 2-core machine doing nothing (with 4: 2.3 GB, 13 processes).

Environment: AIRFLOW_PORT (default 8080), AIRFLOW_HOME (default `.local/airflow`);
AIRFLOW__CORE__DAGS_FOLDER, AIRFLOW__CORE__PLUGINS_FOLDER, AIRFLOW__CORE__LOAD_EXAMPLES and
AIRFLOW__CORE__PARALLELISM keep values already set.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from mnist_pipeline.config import settings
from mnist_pipeline.errors import ConfigError
from mnist_pipeline.web.addresses import NAV_ROUTE, URL_PREFIX

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
USERNAME = "admin"
# SimpleAuthManager's file of generated passwords in AIRFLOW_HOME (unless configured elsewhere).
PASSWORDS_FILE = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE") or (
    "simple_auth_manager_passwords.json.generated"
)
LOG_NAME = "standalone.log"
STOP_TIMEOUT_S = 30.0  # scheduler and api-server need a few seconds to close; then SIGKILL
POLL_S = 0.2
WILDCARD_HOSTS = ("", "0.0.0.0")
# The scheduler's and the triggerer's log servers, with Airflow's default ports.
LOG_SERVER_PORTS = {
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": 8793,
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": 8794,
}


@dataclass(frozen=True)
class Endpoint:
    """Where the api-server listens."""

    host: str
    port: int

    @property
    def reachable_host(self) -> str:
        """An address it certainly answers on, for our own requests and the task runs'."""
        return "127.0.0.1" if self.host in WILDCARD_HOSTS else self.host

    @property
    def url(self) -> str:
        return f"http://{self.reachable_host}:{self.port}"

    @property
    def address(self) -> str:
        """What to open in a browser on this machine."""
        local = self.host in (*WILDCARD_HOSTS, "127.0.0.1", "localhost")
        return f"http://{'localhost' if local else self.host}:{self.port}"


class StopRequest:
    """The signal that asked us to stop, set by the handler; the loops check it between polls.

    The handler only records the signal (no exception), so it can never interrupt a half-done
    start or shutdown."""

    signal: int | None = None

    @classmethod
    def handle(cls, signum: int, _frame: object) -> None:
        cls.signal = signum

    @classmethod
    def requested(cls) -> bool:
        return cls.signal is not None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("AIRFLOW_PORT") or 8080),
        help="port of the UI and API (default: $AIRFLOW_PORT, else 8080)",
    )
    # Loopback only by default: SimpleAuthManager is for development and keeps passwords in plaintext.
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for Airflow to be ready (default 300)"
    )
    return parser.parse_args(argv)


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or REPO / ".local" / "airflow").resolve()


def port_in_use(endpoint: Endpoint) -> bool:
    """Whether something already listens on the endpoint's port (on its address or on all)."""
    with socket.socket() as sock:
        # As uvicorn does: a port with only TIME_WAIT connections left is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((endpoint.host, endpoint.port))
        except OSError:
            return True
    # Some systems let a specific address bind beside a wildcard listener; a connection tells.
    address = (endpoint.reachable_host, endpoint.port)
    with contextlib.suppress(OSError), socket.create_connection(address, timeout=1):
        return True
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_server_ports(env: dict[str, str]) -> dict[str, str]:
    """Another port for each log server whose default is taken (by a second Airflow on this machine:
    another checkout, the tests): one that cannot bind serves no logs, and Airflow carries on."""
    return {
        variable: str(free_port())
        for variable, default in LOG_SERVER_PORTS.items()
        if variable not in env and port_in_use(Endpoint("0.0.0.0", default))
    }


MAX_DEFAULT_PARALLELISM = 4  # each idle worker holds ~155 MB RSS; one CPU training uses every core


def default_parallelism() -> int:
    """Two task runs per CPU core this process may use (a container's or taskset's share), at most
    MAX_DEFAULT_PARALLELISM: the idle Airflow stays under 2.5 GB RSS on any machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(2 * (cores or 1), MAX_DEFAULT_PARALLELISM)


def lock_home(home: Path) -> IO[str] | None:
    """An exclusive lock on `home`, held while we run (two schedulers must never share one SQLite
    database); None when another instance holds it."""
    lock = open(home / "airflow-ui.lock", "w")  # noqa: SIM115 - held until the process ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def airflow_env(home: Path, endpoint: Endpoint) -> dict[str, str]:
    """`make demo`'s Airflow settings, plus where this api-server listens."""
    env = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # The LocalExecutor forks this many workers at once and keeps them: sized to the machine.
        "AIRFLOW__CORE__PARALLELISM": str(default_parallelism()),
    } | dict(os.environ)
    env |= log_server_ports(env)
    return env | {
        "AIRFLOW_HOME": str(home),
        # standalone starts its components as `airflow` from PATH: this venv's.
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "AIRFLOW__API__HOST": endpoint.host,
        "AIRFLOW__API__PORT": str(endpoint.port),
        "AIRFLOW__API__BASE_URL": endpoint.address,
        # Task runs report to the execution API; its default assumes port 8080.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{endpoint.url}/execution/",
        # The one user standalone generates a password for, and whose password we print.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
    }


def start_airflow(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`airflow standalone` in a session of its own: Ctrl-C reaches only us, and we can find and
    stop every process it starts (task runners take process groups of their own, not sessions)."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [str(BIN / "airflow"), "standalone"],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def health(url: str) -> dict[str, dict[str, str]] | None:
    """The health report, or None while the api-server does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5) as response:
            return json.load(response)
    except (OSError, ValueError):  # URLError is an OSError; ValueError: half-written JSON
        return None


def all_healthy(report: dict[str, dict[str, str]] | None) -> bool:
    return bool(report) and all(part.get("status") == "healthy" for part in report.values())


def wait_until_ready(process: subprocess.Popen[bytes], url: str, timeout_s: float) -> str:
    """'ready', 'exited' (Airflow stopped by itself), 'timeout' or 'stopped' (we were signalled)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if StopRequest.requested():
            return "stopped"
        if process.poll() is not None:
            return "exited"
        if all_healthy(health(url)):
            return "ready"
        time.sleep(1.0)
    return "timeout"


def read_password(path: Path, username: str, timeout_s: float = 30.0) -> str | None:
    """The user's password from SimpleAuthManager's file ({"user": "password"}); standalone writes
    it before it starts the components, so it is there by the time the API answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError, ValueError):
            password = json.loads(path.read_text()).get(username)
            if password:
                return str(password)
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL_S)


def print_banner(
    address: str, password: str | None, password_file: Path, log_path: Path, parallelism: str
) -> None:
    registry = settings().registry_uri
    lines = [
        "",
        f"Airflow is ready: {address}",
        f"  user:      {USERNAME}",
        f"  password:  {password or f'(not found; see {password_file})'}",
        f"  DAGs:      {REPO / 'dags'} (mnist_training and mnist_incoming start paused: unpause them)",
        f"  registry:  {registry} (the Model Registry page: {address}/plugin/{NAV_ROUTE}{URL_PREFIX}/)",
        f"  tasks:     at most {parallelism} at once (2 per core, up to 4; AIRFLOW__CORE__PARALLELISM)",
        f"  log:       {log_path}",
        "",
        "Press Ctrl-C to stop Airflow.",
    ]
    print("\n".join(lines), flush=True)


def log_tail(log_path: Path, lines: int = 40) -> str:
    with open(log_path, errors="replace") as log:
        return "".join(deque(log, maxlen=lines))


def report_failure(what: str, log_path: Path) -> int:
    print(f"\n{what}. The last lines of {log_path}:\n", file=sys.stderr)
    print(log_tail(log_path), file=sys.stderr, flush=True)
    return 1


def supervise(
    process: subprocess.Popen[bytes], endpoint: Endpoint, home: Path, timeout_s: float, parallelism: str
) -> int:
    """Wait until Airflow is ready, say how to sign in, and keep it running until we are stopped."""
    log_path = home / LOG_NAME
    password_file = home / PASSWORDS_FILE
    state = wait_until_ready(process, endpoint.url, timeout_s)
    if state == "exited":
        return report_failure(f"Airflow exited (status {process.returncode}) before it was ready", log_path)
    if state == "timeout":
        return report_failure(f"Airflow was not ready after {timeout_s:.0f} s", log_path)
    if state == "stopped":
        return 0
    password = read_password(password_file, USERNAME)
    print_banner(endpoint.address, password, password_file, log_path, parallelism)
    while not StopRequest.requested():
        if process.poll() is not None:
            return report_failure(f"Airflow exited (status {process.returncode})", log_path)
        time.sleep(POLL_S)
    return 0


def session_members(session: int) -> list[psutil.Process]:
    """Every live process of `session`; zombies are dead already (their parent reaps them)."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(proc.pid) == session and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def signal_session(session: int, signum: int) -> None:
    """`signum` to every process group of the session: standalone's, and each task runner's."""
    groups = {session}
    for proc in session_members(session):
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(proc.pid))
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signum)


def wait_session_gone(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        process.poll()  # reaps standalone itself, so it does not linger as our zombie
        if process.returncode is not None and not session_members(process.pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)


def describe(procs: list[psutil.Process]) -> str:
    """'pid name' of each process (a task run's is `airflow worker -- <task instance id>`)."""
    names = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            names.append(f"{proc.pid} {' '.join(proc.cmdline())[:80] or proc.name()}")
    return ", ".join(names) or "nothing"


def stop_airflow(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to everything Airflow started; SIGKILL to what is left after STOP_TIMEOUT_S."""
    # A second Ctrl-C must not cut the cleanup short; it is bounded anyway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"\nStopping Airflow (at most {STOP_TIMEOUT_S:.0f} s)...", flush=True)
    session = process.pid  # start_new_session: the session's id is its leader's pid
    signal_session(session, signal.SIGTERM)
    if not wait_session_gone(process, STOP_TIMEOUT_S):
        print(f"Killing what did not stop in time: {describe(session_members(session))}", flush=True)
        signal_session(session, signal.SIGKILL)
        wait_session_gone(process, 10.0)
    left = session_members(session)
    if left:
        print(f"Still running: {describe(left)}", file=sys.stderr, flush=True)
    else:
        print("Airflow stopped.", flush=True)


def preflight(endpoint: Endpoint) -> str | None:
    """Why Airflow cannot start here, or None."""
    if port_in_use(endpoint):
        return (
            f"Port {endpoint.port} is already in use on {endpoint.host}: is Airflow (or something else) "
            f"running there? Stop it, or choose another port: AIRFLOW_PORT={endpoint.port + 1} make airflow"
        )
    try:
        settings()  # a malformed MNIST_* variable is refused now, not as a broken DAG in the UI
    except ConfigError as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    home, endpoint = airflow_home(), Endpoint(options.host, options.port)
    home.mkdir(parents=True, exist_ok=True)
    problem = preflight(endpoint)
    lock = None if problem else lock_home(home)
    if lock is None:
        problem = problem or f"Another `make airflow` runs with AIRFLOW_HOME={home}; stop it first."
        print(problem, file=sys.stderr)
        return 1
    signal.signal(signal.SIGINT, StopRequest.handle)
    signal.signal(signal.SIGTERM, StopRequest.handle)
    print(f"Starting Airflow on {endpoint.address} (AIRFLOW_HOME={home}, its output in {home / LOG_NAME})")
    print("The first start takes about a minute.", flush=True)
    env = airflow_env(home, endpoint)
    process = start_airflow(env, home / LOG_NAME)
    try:
        return supervise(process, endpoint, home, options.timeout, env["AIRFLOW__CORE__PARALLELISM"])
    finally:
        stop_airflow(process)
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
