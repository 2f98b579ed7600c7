"""Settings are read once, where a process starts (a CLI command, a task, the registry page's app),
and passed down: a bad value fails there, once, naming the variable, the value and what is
allowed; nothing below reads the environment again, so a value changed later breaks nothing that
is running."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mnist_pipeline.cli import main
from mnist_pipeline.config import ENVIRONMENT_VARIABLES, PipelineSettings
from mnist_pipeline.errors import ConfigError
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.storage import GcsStorage, compare_and_swap, open_storage
from mnist_pipeline.web.app import create_app
from mnist_pipeline.workers import hostname_of, worker_hostname
from tests.registry_helpers import publish_version

PACKAGE = Path(__file__).resolve().parent.parent / "mnist_pipeline"
BAD_TRIALS = "environment variable MNIST_MAX_TRIALS must be a positive integer, got 'abc'"
# A bad value of every setting that has a rule, and the words that say what is allowed.
BAD_VALUES = {
    "MNIST_MAX_TRAIN_IMAGES": ("-1", "0 (all) or a positive integer"),
    "MNIST_MIN_NEW_IMAGES": ("ten", "a positive integer"),
    "MNIST_MAX_SHARD_BYTES": ("0", "a positive integer"),
    "MNIST_MAX_SHARD_IMAGES": ("1.5", "a positive integer"),
    "MNIST_CLAIM_LEASE_SECONDS": ("soon", "a positive number"),
    "MNIST_SCHEDULE": ("  ", "a cron expression or 'none'"),
    "MNIST_TRAIN_QUEUE": ("gpu;rm", "a plain name"),
    "MNIST_TRAIN_POOL": ("gpu pool", "a plain name"),
    "MNIST_WORKER_NAME": ("a/b", "a plain name"),
    "MNIST_STORAGE_RETRY_DEADLINE": ("nan", "a positive number"),
    "MNIST_STALE_UPLOAD_SECONDS": ("inf", "a positive number"),
    "MNIST_REGISTRY_PAGE_TIMEOUT": ("0", "a positive number"),
    "MNIST_APPROVAL": ("maybe", "'none' or 'required'"),
    "MNIST_MAX_TRIALS": ("abc", "a positive integer"),
}
# Where the environment may be read: config itself, and the entry points (by module, function).
ENTRY_POINTS = {
    ("config.py", None),
    ("cli/__init__.py", "main"),
    ("web/app.py", "create_app"),
    ("workers.py", "worker_hostname"),  # Airflow's hostname_callable, called without arguments
}


@pytest.mark.parametrize("variable", sorted(BAD_VALUES))
def test_a_bad_value_names_the_variable_the_value_and_what_is_allowed(variable: str) -> None:
    value, allowed = BAD_VALUES[variable]
    with pytest.raises(ConfigError) as refused:
        PipelineSettings.from_env({variable: value})
    assert str(refused.value) == f"environment variable {variable} must be {allowed}, got {value!r}"


def test_every_rule_has_a_bad_value_above() -> None:
    from mnist_pipeline.config import _RULES

    assert {ENVIRONMENT_VARIABLES[name] for name in _RULES} == set(BAD_VALUES)


def test_a_gcs_storage_keeps_the_settings_it_was_opened_with(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = PipelineSettings(storage_retry_deadline=7, storage_emulator_host="http://127.0.0.1:9")
    storage = open_storage("gs://bucket/prefix", settings)
    monkeypatch.setenv("MNIST_STORAGE_RETRY_DEADLINE", "abc")
    monkeypatch.setenv("MNIST_MAX_TRIALS", "abc")
    assert isinstance(storage, GcsStorage) and storage.retry_deadline == 7
    assert storage._retry().timeout == 7 and storage.client.api_endpoint == "http://127.0.0.1:9"


def test_gcs_calls_work_after_a_bad_value_is_set(gcs_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = open_storage(f"gs://{gcs_bucket}/work", PipelineSettings.from_env())
    monkeypatch.setenv("MNIST_MAX_TRIALS", "abc")
    monkeypatch.setenv("MNIST_STORAGE_RETRY_DEADLINE", "-1")
    storage.write_bytes("a.txt", b"one")
    assert compare_and_swap(storage, "a.txt", lambda current: ((current or b"") + b"+two", "won")) == "won"
    assert storage.read_bytes("a.txt") == b"one+two" and storage.list_keys() == ["a.txt"]


def test_a_registry_keeps_its_stale_upload_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = PipelineSettings(registry_uri=str(tmp_path / "registry"), stale_upload_seconds=5)
    registry = Registry.from_settings(settings)
    monkeypatch.setenv("MNIST_STALE_UPLOAD_SECONDS", "abc")
    assert registry.files.stale_upload_seconds == 5
    assert Registry(registry.storage).files.stale_upload_seconds == PipelineSettings().stale_upload_seconds


@pytest.fixture
def page(tmp_path: Path) -> Iterator[TestClient]:
    """The registry page's app over a registry holding one version, created with its settings."""
    settings = PipelineSettings(
        registry_uri=str(tmp_path / "registry"), artifacts_uri=str(tmp_path / "artifacts")
    )
    publish_version(Registry.from_settings(settings), tmp_path / "folders", 1)
    with TestClient(create_app(access=lambda: None, settings=settings)) as client:
        yield client


def test_the_registry_page_reads_its_settings_once(
    page: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNIST_MAX_TRIALS", "abc")
    monkeypatch.setenv("MNIST_REGISTRY_PAGE_TIMEOUT", "abc")
    monkeypatch.setenv("MNIST_REGISTRY_URI", str(tmp_path / "elsewhere"))
    overview = page.get("/", headers={"Accept": "text/html"})
    assert overview.status_code == 200 and "20260101T000001Z-00000001" in overview.text
    assert page.get("/versions/dnn/20260101T000009Z-00000009").status_code == 404  # the same registry
    assert page.get("/runs/mnist_training/never").status_code == 404  # the artifacts store, still read


def test_the_registry_page_fails_at_creation_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_MAX_TRIALS", "abc")
    with pytest.raises(ConfigError) as refused:
        create_app(access=lambda: None)
    assert str(refused.value) == BAD_TRIALS


def test_the_cli_fails_at_once_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("MNIST_REGISTRY_URI", str(tmp_path / "registry"))
    monkeypatch.setenv("MNIST_MAX_TRIALS", "abc")
    assert main(["registry", "list"]) == 2
    assert capsys.readouterr().err == f"mnist-pipeline: error: {BAD_TRIALS}\n"
    assert not (tmp_path / "registry").exists()  # it failed before anything was opened


def test_the_cli_process_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MNIST_MAX_TRIALS": "abc", "MNIST_REGISTRY_URI": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "mnist_pipeline.cli", "registry", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stderr == f"mnist-pipeline: error: {BAD_TRIALS}\n"


def test_a_worker_names_itself_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_WORKER_NAME", "gpu")
    assert worker_hostname() == hostname_of("gpu") == f"gpu@{socket.getfqdn()}"
    assert hostname_of("") == socket.getfqdn()
    monkeypatch.setenv("MNIST_WORKER_NAME", "a/b")
    with pytest.raises(ConfigError, match="MNIST_WORKER_NAME must be a plain name, got 'a/b'"):
        worker_hostname()


def test_nothing_below_the_entry_points_reads_the_environment() -> None:
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        if (module, None) in ENTRY_POINTS:
            continue
        for function, line in _environment_reads(ast.parse(path.read_text())):
            if (module, function) not in ENTRY_POINTS:
                readers.append(f"{module}:{line} in {function}")
    assert readers == []


def _environment_reads(tree: ast.AST) -> list[tuple[str | None, int]]:
    """(enclosing function, line) of every `os.environ`, `getenv`, `settings()` and `from_env`."""
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name if function is None else function
        reads = (
            isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "from_env")
        ) or (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "settings")
        if reads:
            found.append((function, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, None)
    return found
