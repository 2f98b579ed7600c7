"""`docker-compose.yaml` and the `Dockerfile`, read and checked as data (no Docker engine needed).

They must agree with the DAG and the library: the queues the workers listen on are the ones the
training tasks are sent to, the pool exists, and every MNIST_* variable is one the library reads.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from mnist_pipeline.workers import DEFAULT_QUEUE

REPO = Path(__file__).resolve().parent.parent
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-gpu",
}
REQUIRED_SERVICES = AIRFLOW_SERVICES | {"postgres", "redis", "gcs"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def worker_queues(service: dict[str, Any]) -> list[str]:
    words = shlex.split(service["command"])
    assert words[:2] == ["celery", "worker"], service["command"]
    return words[words.index("--queues") + 1].split(",")


def library_variables() -> set[str]:
    """Every MNIST_* environment variable named in the library's and the DAGs' source."""
    sources = [*(REPO / "mnist_pipeline").glob("*.py"), *(REPO / "dags").glob("*.py")]
    return {name for path in sources for name in re.findall(r"\bMNIST_[A-Z_]+\b", path.read_text())}


def test_every_service_of_the_stack_is_there(services: dict[str, Any]) -> None:
    assert set(services) >= REQUIRED_SERVICES, REQUIRED_SERVICES - set(services)


def test_every_long_running_service_has_a_health_check(services: dict[str, Any]) -> None:
    for name in REQUIRED_SERVICES - {"airflow-init"}:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_worker_queues_match_the_queue_the_dag_sends_training_to(services: dict[str, Any]) -> None:
    environment = services["airflow-worker-gpu"]["environment"]
    assert worker_queues(services["airflow-worker-gpu"]) == [environment["MNIST_TRAIN_QUEUE"]]
    assert worker_queues(services["airflow-worker"]) == [DEFAULT_QUEUE]
    for name in AIRFLOW_SERVICES:  # the dag-processor decides the queue when it parses the DAG
        assert services[name]["environment"]["MNIST_TRAIN_QUEUE"] == "gpu", name


def test_the_training_pool_is_created_with_one_slot_per_gpu(services: dict[str, Any]) -> None:
    pool = services["airflow-scheduler"]["environment"]["MNIST_TRAIN_POOL"]
    init = " ".join(services["airflow-init"]["command"])
    assert re.search(rf"airflow pools set {pool} \$\{{MNIST_GPUS:-1\}}", init), init
    assert "--concurrency ${MNIST_GPUS:-1}" in services["airflow-worker-gpu"]["command"]


def test_the_gpu_worker_reserves_nvidia_gpus_and_runs_the_gpu_image(services: dict[str, Any]) -> None:
    worker = services["airflow-worker-gpu"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert worker["build"]["target"] == "gpu" and services["airflow-worker"]["build"]["target"] == "cpu"


def test_every_mnist_variable_in_the_compose_file_is_one_the_library_reads(services: dict[str, Any]) -> None:
    known = library_variables()
    assert {"MNIST_REGISTRY_URI", "MNIST_ARTIFACTS_URI", "MNIST_SOURCE", "MNIST_TRAIN_QUEUE"} <= known
    for name, service in services.items():
        for variable in service.get("environment") or {}:
            if variable.startswith("MNIST_"):
                assert variable in known, f"{name} sets {variable}, which the library never reads"


def test_the_stack_uses_celery_postgres_and_the_bundled_bucket(services: dict[str, Any]) -> None:
    environment = services["airflow-scheduler"]["environment"]
    assert environment["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert environment["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert environment["STORAGE_EMULATOR_HOST"].endswith("http://gcs:4443}")
    assert "mnist-registry" in " ".join(services["gcs"]["command"])


def test_credentials_are_mounted_read_only_and_never_baked_into_an_image(
    services: dict[str, Any], dockerfile: str
) -> None:
    mounts = services["airflow-worker-gpu"]["volumes"]
    credentials = [mount for mount in mounts if mount.split(":")[-2] == "/opt/airflow/credentials"]
    assert credentials and credentials[0].endswith(":ro")
    assert ".credentials" in (REPO / ".dockerignore").read_text()
    assert not re.search(r"(?i)(credential|\.json\b|secret|token)", _copied_sources(dockerfile))


def _copied_sources(dockerfile: str) -> str:
    return " ".join(line for line in dockerfile.splitlines() if line.startswith(("COPY", "ADD")))


def test_the_dockerfile_has_pinned_cpu_and_gpu_targets_and_a_non_root_user(dockerfile: str) -> None:
    stages = re.findall(r"^FROM (\S+) AS (\w+)$", dockerfile, flags=re.MULTILINE)
    assert {name for _, name in stages} >= {"base", "cpu", "gpu"}
    assert re.search(r"^ARG AIRFLOW_VERSION=3\.3\.\d+$", dockerfile, flags=re.MULTILINE)
    assert not any(image.endswith(":latest") for image, _ in stages)
    users = re.findall(r"^USER (\S+)$", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert '"/opt/mnist[cpu,cluster]"' in dockerfile and '"/opt/mnist[gpu,cluster]"' in dockerfile


def test_every_image_in_the_compose_file_is_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image!r} is not pinned"
