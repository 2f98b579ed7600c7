"""`docker-compose.yaml` and the `Dockerfile`, read as data and checked for what they make the
stack do (no Docker engine needed).

The compose file is interpolated as `docker compose` does it (no `.env`, or a given one). The DAG
file is then parsed with the environment each Airflow service gets, and its tasks must land on
queues that workers consume (training on the GPU workers, in the pool airflow-init creates with a
slot per reserved GPU); every MNIST_* variable must be one `PipelineSettings.from_env` reads and
accepts; each service must reach the database, broker and bucket it is pointed at; the images the
Dockerfile builds must install what their services run, as a non-root user, with no credential.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement

from mnist_pipeline.config import ENVIRONMENT_VARIABLES, PipelineSettings
from mnist_pipeline.errors import ConfigError
from mnist_pipeline.storage import split_gs_uri

# One worker for the module: each parse of the DAG under a service's environment (a new Python
# importing Airflow) is cached per process (`_parsed_routes`), and several tests ask for the same.
pytestmark = pytest.mark.xdist_group("test_compose")
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
# Where Docker builds and runs the images: pyproject's environment markers are evaluated for it.
IMAGE_PLATFORM = {"platform_system": "Linux", "platform_machine": "x86_64", "sys_platform": "linux"}

# --- docker-compose.yaml, interpolated ----------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(value: Any, dot_env: dict[str, str]) -> Any:
    """`value` with `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `${VAR:?error}`
    resolved the way `docker compose` resolves them against `dot_env`."""
    if isinstance(value, dict):
        return {key: interpolate(item, dot_env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, dot_env) for item in value]
    if not isinstance(value, str):
        return value

    def resolve(match: re.Match) -> str:
        escaped, name, operator, argument, bare = match.groups()
        if escaped:
            return "$"
        current = dot_env.get(name or bare)
        if operator == ":-":
            return current or argument
        if operator == "-":
            return argument if current is None else current
        if operator in (":?", "?") and (not current if operator == ":?" else current is None):
            raise AssertionError(f"compose would refuse to start: {name}: {argument}")
        return current or ""

    return _VARIABLE.sub(resolve, value)


def load_services(dot_env: dict[str, str] | None = None) -> dict[str, Any]:
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    return interpolate(compose, dot_env or {})["services"]


@pytest.fixture
def services() -> dict[str, Any]:
    return load_services()


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def command_words(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    words = shlex.split(command) if isinstance(command, str) else list(command)
    if words[:1] == ["-c"]:  # a shell script run by the entrypoint (airflow-init, gcs)
        return shlex.split(" ".join(words[1:]))
    return [word for part in words for word in shlex.split(part)]


def option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def worker_queues(services: dict[str, Any]) -> dict[str, set[str]]:
    """Celery worker service -> the queues it consumes (`airflow celery worker --queues`)."""
    workers = {}
    for name, service in services.items():
        words = command_words(service)
        if words[:2] == ["celery", "worker"]:
            default = environment(service).get("AIRFLOW__OPERATORS__DEFAULT_QUEUE", "default")
            workers[name] = set((option(words, "--queues") or default).split(","))
    return workers


def reserved_gpus(service: dict[str, Any]) -> int:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return sum(int(device.get("count", 0)) for device in devices if "gpu" in device.get("capabilities", []))


def created_pools(services: dict[str, Any]) -> dict[str, int]:
    """Pool -> slots, for each `airflow pools set NAME SLOTS ...` in airflow-init's script."""
    words = command_words(services["airflow-init"])
    return {
        words[i + 3]: int(words[i + 4])
        for i in range(len(words) - 4)
        if words[i : i + 3] == ["airflow", "pools", "set"]
    }


# The DAG file, parsed in a fresh interpreter per Airflow configuration, then once per service
# environment: queue and pool are decided when the dag-processor parses the file.
_ROUTING = """
import json, os, runpy, sys
base = dict(os.environ)
routes = []
for env in json.load(sys.stdin):
    os.environ.clear()
    os.environ.update(base | env)
    dag = runpy.run_path(sys.argv[1])["dag"]
    routes.append({task.task_id: [task.queue, task.pool] for task in dag.tasks})
print(json.dumps(routes))
"""


@functools.cache
def _parsed_routes(environments: str) -> str:
    envs = json.loads(environments)
    clean = {name: value for name, value in os.environ.items() if not name.startswith("MNIST_")}
    result = subprocess.run(
        [sys.executable, "-c", _ROUTING, str(REPO / "dags" / "mnist_training.py")],
        input=environments,
        capture_output=True,
        text=True,
        env=clean | envs[0],
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def routing(services: dict[str, Any], names: set[str]) -> dict[str, dict[str, tuple[str, str]]]:
    """Service -> {task id: (queue, pool)}, the DAG as parsed with that service's environment."""
    by_airflow_config: dict[str, list[str]] = {}
    for name in sorted(names):
        airflow = {k: v for k, v in environment(services[name]).items() if k.startswith("AIRFLOW")}
        by_airflow_config.setdefault(json.dumps(airflow, sort_keys=True), []).append(name)
    routes = {}
    for group in by_airflow_config.values():
        envs = json.dumps([environment(services[name]) for name in group], sort_keys=True)
        for name, route in zip(group, json.loads(_parsed_routes(envs)), strict=True):
            routes[name] = {task_id: tuple(where) for task_id, where in route.items()}
    return routes


def unread_mnist_variables(env: dict[str, str]) -> set[str]:
    """MNIST_* variables no field of PipelineSettings reads: typos, or settings that were removed."""
    known = set(ENVIRONMENT_VARIABLES.values())
    return {name for name in env if name.startswith("MNIST_") and name not in known}


# --- the Dockerfile, as stages -------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stage name -> Stage), comments dropped and continuations joined."""
    lines, current = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = substitute(rest, args).split()
            stage = Stage(base=words[0])
            stages[words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))] = stage
        elif stage is None:
            if keyword == "ARG":
                name, _, default = rest.partition("=")
                args[name.strip()] = default.strip()
        else:
            stage.instructions.append((keyword, substitute(rest, args)))
    return args, stages


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def stage_chain(stages: dict[str, Stage], target: str) -> list[Stage]:
    """`target` and the stages it is built FROM, the first one first."""
    chain = [stages[target]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return chain


def image_user(stages: dict[str, Stage], target: str) -> str | None:
    users = [
        rest for stage in stage_chain(stages, target) for key, rest in stage.instructions if key == "USER"
    ]
    return users[-1] if users else None


def installed_requirements(stages: dict[str, Stage], target: str) -> list[Requirement]:
    """What `pip install` brings into the target: named requirements and the project's extras."""
    requirements = []
    for stage in stage_chain(stages, target):
        for keyword, rest in stage.instructions:
            words = shlex.split(rest) if keyword == "RUN" else []
            if words[:2] != ["pip", "install"]:
                continue
            for word in words[2:]:
                local = re.fullmatch(r"/opt/mnist\[([\w,-]+)\]", word)
                if local:
                    requirements += project_extras(set(local[1].split(",")))
                elif not word.startswith("-"):
                    requirements.append(Requirement(word))
    return requirements


def project_extras(extras: set[str]) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    unknown = extras - set(optional)
    assert not unknown, f"pip would install no extra {sorted(unknown)}: pyproject has {sorted(optional)}"
    requirements = [Requirement(line) for line in project["dependencies"]]
    for extra in sorted(extras):
        for line in optional[extra]:
            requirement = Requirement(line)
            if requirement.name == project["name"]:
                requirements += project_extras(set(requirement.extras))
            elif requirement.marker is None or requirement.marker.evaluate(IMAGE_PLATFORM):
                requirements.append(requirement)
    return requirements


def copied_sources(stages: dict[str, Stage], target: str) -> list[str]:
    sources = []
    for stage in stage_chain(stages, target):
        for keyword, rest in stage.instructions:
            if keyword in ("COPY", "ADD"):
                words = [word for word in shlex.split(rest) if not word.startswith("--")]
                sources += words[:-1]
    return sources


def dockerignored(path: str) -> bool:
    """Whether `.dockerignore` keeps `path` (relative to the repository) out of the build context."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatchcase(prefix, pattern) or fnmatch.fnmatchcase(prefix, pattern.removeprefix("**/"))
        for pattern in patterns
        for prefix in prefixes
    )


def built_target(service: dict[str, Any]) -> str | None:
    build = service.get("build")
    return build.get("target") if isinstance(build, dict) else None


# --- what the stack does ---------------------------------------------------------------------------


def test_every_service_of_the_stack_is_there(services: dict[str, Any]) -> None:
    assert set(services) >= REQUIRED_SERVICES, REQUIRED_SERVICES - set(services)


def test_every_dependency_waits_for_a_condition_compose_can_observe(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if service.get("restart") == "always":  # long-running: compose must know when it is up
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on {dependency}, which is no service"
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert services[dependency].get("healthcheck", {}).get("test"), (name, dependency)
            elif condition == "service_completed_successfully":  # a one-shot job must end
                assert services[dependency].get("restart", "no") == "no", (name, dependency)


def test_every_task_goes_to_a_queue_a_worker_consumes_and_training_to_the_gpu_workers(
    services: dict[str, Any],
) -> None:
    scheduler = environment(services["airflow-scheduler"])
    assert "CeleryExecutor" in scheduler["AIRFLOW__CORE__EXECUTOR"]  # queues route only under Celery
    consumers = worker_queues(services)
    routes = routing(services, AIRFLOW_SERVICES)
    # Every component that parses the DAG file must see the same routing the dag-processor stored.
    parsed = routes["airflow-dag-processor"]
    for name, route in routes.items():
        assert route == parsed, f"{name} parses the DAG with another routing"
    trainings = {task_id: where for task_id, where in parsed.items() if task_id.endswith(".train")}
    assert trainings and len(trainings) < len(parsed)
    for task_id, (queue, _) in parsed.items():
        workers = {name for name, queues in consumers.items() if queue in queues}
        assert workers, f"{task_id} goes to queue {queue!r}, which no worker consumes"
        with_gpus = {name for name in workers if reserved_gpus(services[name])}
        if task_id in trainings:
            assert with_gpus == workers, f"{task_id} may run on a worker without a GPU: {workers}"
        else:
            assert not with_gpus, f"{task_id} would take a GPU worker's slot: {with_gpus}"


@pytest.mark.parametrize("gpus", [None, "4"], ids=["default", "MNIST_GPUS=4"])
def test_training_runs_in_the_pool_airflow_init_creates_with_a_slot_per_reserved_gpu(
    gpus: str | None,
) -> None:
    services = load_services({"MNIST_GPUS": gpus} if gpus else {})
    trainings = {
        where
        for task_id, where in routing(services, {"airflow-dag-processor"})["airflow-dag-processor"].items()
        if task_id.endswith(".train")
    }
    ((queue, pool),) = trainings
    slots = created_pools(services).get(pool)
    assert slots, f"the training pool {pool!r} is not one airflow-init creates"
    gpu_workers = [name for name, queues in worker_queues(services).items() if queue in queues]
    assert gpu_workers
    for name in gpu_workers:
        concurrency = int(option(command_words(services[name]), "--concurrency") or 0)
        assert reserved_gpus(services[name]) == concurrency == slots == int(gpus or 1), name
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert all(device["driver"] == "nvidia" for device in devices)


def test_every_mnist_variable_the_compose_file_sets_is_read_and_accepted(services: dict[str, Any]) -> None:
    for name, service in services.items():
        env = environment(service)
        assert unread_mnist_variables(env) == set(), f"{name} sets variables the pipeline never reads"
        settings = PipelineSettings.from_env(env)  # a value it refuses raises ConfigError here
        for setting, variable in ENVIRONMENT_VARIABLES.items():
            if env.get(variable):
                value = getattr(settings, setting)
                assert value == type(value)(env[variable]), f"{name}: {variable} was not applied"


def test_an_mnist_variable_no_setting_reads_is_flagged(services: dict[str, Any]) -> None:
    env = environment(services["airflow-worker-gpu"]) | {"MNIST_TRAIN_QUEUES": "gpu"}  # a typo
    assert unread_mnist_variables(env) == {"MNIST_TRAIN_QUEUES"}


def test_a_bad_value_from_dot_env_is_refused_naming_its_variable() -> None:
    env = environment(load_services({"MNIST_MIN_NEW_IMAGES": "lots"})["airflow-scheduler"])
    with pytest.raises(ConfigError, match="MNIST_MIN_NEW_IMAGES"):
        PipelineSettings.from_env(env)


def test_airflow_reaches_the_database_broker_and_bucket_the_stack_runs(services: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        env = environment(services[name])
        for variable in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
            url = urlsplit(env[variable].removeprefix("db+"))
            postgres = services[url.hostname]
            login = environment(postgres)
            assert postgres["image"].startswith("postgres:"), (name, variable)
            assert (url.username, url.password, url.path.lstrip("/")) == (
                login["POSTGRES_USER"],
                login["POSTGRES_PASSWORD"],
                login["POSTGRES_DB"],
            ), (name, variable)
        broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
        assert services[broker.hostname]["image"].startswith("redis:") and broker.port == 6379, name

        emulator = urlsplit(env["STORAGE_EMULATOR_HOST"])
        gcs = services[emulator.hostname]
        words = command_words(gcs)
        assert option(words, "-port") == str(emulator.port), name
        root = PurePosixPath(option(words, "-filesystem-root"))
        created = words[words.index("mkdir") + 1 : words.index("&&")]
        buckets = {PurePosixPath(path).relative_to(root).parts[0] for path in created if path != "-p"}
        for variable in ("MNIST_REGISTRY_URI", "MNIST_ARTIFACTS_URI"):
            bucket, _ = split_gs_uri(env[variable])
            assert bucket in buckets, f"{name}: {variable} names bucket {bucket}, which gcs never creates"
    registry_bucket, _ = split_gs_uri(environment(services["airflow-scheduler"])["MNIST_REGISTRY_URI"])
    probe = urlsplit(services["gcs"]["healthcheck"]["test"][-1])
    assert probe.path == f"/storage/v1/b/{registry_bucket}"  # healthy means the bucket is there


def test_each_image_installs_what_its_services_run() -> None:
    services = load_services()
    _, stages = dockerfile()
    training_queues = {queue for (queue, _) in _training_routes(services)}
    for name, service in services.items():
        target = built_target(service)
        if target is None:
            continue
        assert target in stages, f"{name} builds target {target!r}, which the Dockerfile lacks"
        requirements = installed_requirements(stages, target)
        names = {requirement.name for requirement in requirements}
        assert any(r.name == "apache-airflow" and "celery" in r.extras for r in requirements), name
        assert names & {"tensorflow", "tensorflow-cpu"}, f"{name} could not run a training task"
        cuda = any(r.name == "tensorflow" and "and-cuda" in r.extras for r in requirements)
        trains = bool(worker_queues({name: service}).get(name, set()) & training_queues)
        assert cuda == trains, f"{name}: CUDA TensorFlow {'missing' if trains else 'where no training runs'}"


def _training_routes(services: dict[str, Any]) -> set[tuple[str, str]]:
    parsed = routing(services, {"airflow-dag-processor"})["airflow-dag-processor"]
    return {where for task_id, where in parsed.items() if task_id.endswith(".train")}


def test_the_image_runs_the_airflow_the_tests_run_and_the_project_allows() -> None:
    from importlib.metadata import version

    from packaging.version import Version

    args, stages = dockerfile()
    image_airflow = Version(args["AIRFLOW_VERSION"])
    tested = Version(version("apache-airflow"))
    assert (image_airflow.major, image_airflow.minor) == (tested.major, tested.minor)
    for target in {built_target(service) for service in load_services().values()} - {None}:
        pins = [r for r in installed_requirements(stages, target) if r.name == "apache-airflow"]
        for requirement in pins:  # pip would refuse a conflict, or move the image's Airflow
            assert requirement.specifier.contains(image_airflow), (target, str(requirement))


def test_every_image_is_pinned(services: dict[str, Any]) -> None:
    _, stages = dockerfile()
    external = {stage.base for stage in stages.values() if stage.base not in stages}
    pulled = {service["image"] for service in services.values() if not service.get("build")}
    for image in external | pulled:
        assert "$" not in image, f"{image!r}: an ARG without a default"
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert "@sha256:" in image or re.search(r"\d", tag), f"{image!r} is not pinned to a version"


def test_long_running_services_never_run_as_root(services: dict[str, Any]) -> None:
    _, stages = dockerfile()
    for target in {built_target(service) for service in services.values()} - {None}:
        assert image_user(stages, target) not in (None, "root", "0"), f"target {target} runs as root"
    for name, service in services.items():
        target = built_target(service)
        if target is None or service.get("restart") != "always":
            continue
        user = service.get("user") or image_user(stages, target)
        assert user.split(":")[0] not in ("root", "0"), f"{name} runs as {user}"


def test_credentials_are_mounted_read_only_where_the_key_path_points() -> None:
    key = "/opt/airflow/credentials/key.json"
    services = load_services({"GCP_CREDENTIALS_DIR": "/secrets", "GOOGLE_APPLICATION_CREDENTIALS": key})
    for name in AIRFLOW_SERVICES:
        service = services[name]
        assert environment(service)["GOOGLE_APPLICATION_CREDENTIALS"] == key
        mounts = [volume.split(":") for volume in service["volumes"]]
        (mount,) = [m for m in mounts if m[1] == str(PurePosixPath(key).parent)]
        assert mount[0] == "/secrets" and mount[2:] == ["ro"], f"{name} mounts {mount}"


def test_no_credential_can_enter_an_image() -> None:
    services = load_services()
    default_source = next(v.split(":")[0] for v in services["airflow-worker"]["volumes"] if ":ro" in v)
    assert dockerignored(str(PurePosixPath(default_source) / "key.json")), default_source
    _, stages = dockerfile()
    for target in {built_target(service) for service in services.values()} - {None}:
        for source in copied_sources(stages, target):
            path = REPO / source
            assert path.exists() and not dockerignored(source), f"COPY {source}: not in the build context"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                if dockerignored(relative):
                    continue
                text = file.read_bytes()
                assert b"PRIVATE KEY-----" not in text and b'"private_key"' not in text, relative
