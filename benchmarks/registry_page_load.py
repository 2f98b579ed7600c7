"""The registry page under load: concurrent signed-in clients against a real `airflow api-server`
with the project's plugin, over a registry of N versions and N history events on fake-gcs-server.

    .venv/bin/python benchmarks/registry_page_load.py [--versions 1000] [--clients 32] [--seconds 30]

Each client requests the overview page again and again with a bearer token for `--seconds`, in
two rounds: "full" fetches the whole page every time (a 200 with the page), "revalidated" sends
the ETag it was given back in If-None-Match, as a browser does (a 304, or a 200 after a commit).
Prints, per round, requests, errors (any other answer, or none), requests per second and the p50 /
p95 / p99 latency, and the CPU; writes benchmarks/results/registry_page_load.json.

The page is rendered once per head of the registry's log, so what a request costs is Airflow's
authentication, one probe for a newer commit and one read of the incoming summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import fake_gcs_server, write_result
from registry_scale import seed_registry

REPO = Path(__file__).resolve().parents[1]
USER, PASSWORD = "reviewer", "a-known-benchmark-password"
AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    from mnist_pipeline.storage import GcsStorage

    with fake_gcs_server():
        bucket = f"mnist-load-{uuid.uuid4().hex[:8]}"
        GcsStorage(f"gs://{bucket}").client.create_bucket(bucket)
        seed_registry(GcsStorage(f"gs://{bucket}/registry"), args.versions)
        with (
            tempfile.TemporaryDirectory(prefix="mnist-load-") as home,
            ApiServer(Path(home), bucket) as base,
        ):
            url, bearer = f"{base}/model-registry/", token(base)
            rounds = {
                how: hammer(url, bearer, args.clients, args.seconds, how == "revalidated") for how in ROUNDS
            }
    result = {"versions": args.versions, "events": args.versions, "clients": args.clients}
    result |= {"cpu": cpu_model(), "cores": os.cpu_count(), "rounds": rounds}
    print_result(result)
    print(f"\nwrote {write_result('registry_page_load', result)}")


ROUNDS = ("full", "revalidated")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class ApiServer:
    """`airflow api-server` with the plugin, on a fresh SQLite home, one user with a known password."""

    def __init__(self, home: Path, bucket: str) -> None:
        passwords = home / "passwords.json"
        passwords.write_text(json.dumps({USER: PASSWORD}))
        self.port = free_port()
        self.env = os.environ | {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__AUTH_MANAGER": AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.port}/",
            "MNIST_REGISTRY_URI": f"gs://{bucket}/registry",
        }
        self.log = home / "api-server.log"

    def __enter__(self) -> str:
        airflow = str(Path(sys.executable).parent / "airflow")
        subprocess.run([airflow, "db", "migrate"], env=self.env, check=True, capture_output=True)
        command = [airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self.server = subprocess.Popen(
            command, env=self.env, stdout=self.log.open("w"), stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{self.port}"
        wait_until_serving(f"{base}/api/v2/monitor/health", self.server, self.log)
        return base

    def __exit__(self, *exc: object) -> None:
        self.server.terminate()
        self.server.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"airflow api-server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    sys.exit(f"airflow api-server did not answer within {timeout_s:g} s")


def token(base: str) -> str:
    body = json.dumps({"username": USER, "password": PASSWORD}).encode()
    request = urllib.request.Request(f"{base}/auth/token", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["access_token"]


def hammer(url: str, bearer: str, clients: int, seconds: float, revalidate: bool = False) -> dict[str, Any]:
    """`clients` threads requesting `url` until `seconds` have passed; every answer timed. With
    `revalidate`, each client sends back the ETag it last got, and a 304 counts as an answer."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        etag = ""
        while time.monotonic() < deadline:
            headers = {"Authorization": f"Bearer {bearer}", "Accept": "text/html"}
            headers |= {"If-None-Match": etag} if revalidate and etag else {}
            started = time.monotonic()
            ok, detail, etag = fetch(urllib.request.Request(url, headers=headers), etag)
            with lock:
                (latencies.append(time.monotonic() - started) if ok else errors.append(detail))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return summary(latencies, errors, elapsed)


def fetch(request: urllib.request.Request, etag: str) -> tuple[bool, str, str]:
    """(answered as it should, what went wrong, the ETag to send next)."""
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            page = response.read()
            return (
                response.status == 200 and b"Model Registry" in page,
                "unexpected page",
                response.headers["ETag"],
            )
    except urllib.error.HTTPError as exc:
        if exc.code == 304:  # urllib raises on anything but 2xx: Not Modified is the answer wanted
            return True, "", exc.headers.get("ETag") or etag
        return False, f"HTTP {exc.code}", etag
    except Exception as exc:  # an error is what is measured here, whatever its kind
        return False, f"{type(exc).__name__}: {exc}", etag


def summary(latencies: list[float], errors: list[str], elapsed: float) -> dict[str, Any]:
    ordered = sorted(latencies) or [float("nan")]

    def percentile(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3)

    return {
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "first_errors": errors[:5],
        "seconds": round(elapsed, 1),
        "requests_per_second": round((len(latencies) + len(errors)) / elapsed, 1),
        "p50_s": percentile(0.50),
        "p95_s": percentile(0.95),
        "p99_s": percentile(0.99),
        "mean_s": round(statistics.fmean(ordered), 3) if latencies else None,
    }


def print_result(result: dict[str, Any]) -> None:
    print(f"\nregistry page under load: {result['versions']} versions, {result['events']} events")
    print(f"CPU: {result['cpu']}, {result['cores']} cores")
    columns = {
        "seconds": "seconds",
        "requests": "requests",
        "errors": "errors",
        "requests_per_second": "req/s",
        "p50_s": "p50 s",
        "p95_s": "p95 s",
        "p99_s": "p99 s",
    }
    print(f"{'round':>12} {'clients':>8} " + " ".join(f"{title:>8}" for title in columns.values()))
    for how, row in result["rounds"].items():
        cells = " ".join(f"{row[key]:>8}" for key in columns)
        print(f"{how:>12} {result['clients']:>8} {cells}")
        for error in row["first_errors"]:
            print(f"error ({how}): {error}")


if __name__ == "__main__":
    main()
