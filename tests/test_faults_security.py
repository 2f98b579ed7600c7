"""Fault injection, hostile input: names that would escape their folder, tampered and unsafe
models, and credentials in a worker's environment that must never reach a log or an artifact."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline import cli
from mnist_pipeline.config import PipelineSettings, TrainConfig
from mnist_pipeline.data.snapshot import SnapshotInfo
from mnist_pipeline.errors import MnistPipelineError, RegistryError, UnknownModelError
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.operations import promote_version
from mnist_pipeline.registry.promotion import PromotionOptions, promote
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.steps import evaluate, ingest, train
from mnist_pipeline.storage import open_storage
from tests.fault_fixtures import storage_bytes
from tests.fault_report import FaultLedger

# Shapes of real credentials; the scan looks for these and for the exact fake values planted.
SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "Google OAuth token": re.compile(r"ya29\.[A-Za-z0-9_\-]{10,}"),
    "AWS access key id": re.compile(r"AKIA[0-9A-Z]{16}"),
    "password assignment": re.compile(r"password=[^&\s\"']+", re.IGNORECASE),
    "bearer token": re.compile(r"Bearer\s+[A-Za-z0-9._\-]{10,}"),
}
PLANTED = {
    "GOOGLE_OAUTH_ACCESS_TOKEN": "ya29.a0FakeTokenForLeakTest0123456789",
    "AWS_ACCESS_KEY_ID": "AKIAFAKELEAKTEST0123",
    "AWS_SECRET_ACCESS_KEY": "fake/secret+LeakTest0123456789abcdefABCDEF",
    "AIRFLOW_CONN_MNIST_WAREHOUSE": "postgresql://mnist:password=FakeLeakTest42@db:5432/mnist",
    "MNIST_API_TOKEN": "Bearer FakeLeakTestBearer0123456789",
    "MNIST_SERVICE_ACCOUNT_KEY": "-----BEGIN PRIVATE KEY-----\nFakeLeakTest\n-----END PRIVATE KEY-----",
}


def assert_refused(ledger: FaultLedger, kind: str, error: BaseException, names: str, defect: str) -> None:
    assert isinstance(error, MnistPipelineError) and names in str(error) and defect in str(error), str(error)
    ledger.refused(kind)


@pytest.mark.slow
def test_names_that_would_escape_their_folder_are_refused_at_every_entry_point(
    registry_with_champion: str,
    fault_runs: dict[str, Any],
    fault_ledger: FaultLedger,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = storage_bytes(registry_with_champion)
    monkeypatch.setenv("MNIST_REGISTRY_URI", registry_with_champion)
    monkeypatch.setenv("MNIST_ARTIFACTS_URI", fault_runs["artifacts"])
    for argv in (
        ["registry", "show", "dnn/../../champion"],
        ["registry", "promote", "../x/v1", "--reason", "r"],
    ):
        assert cli.main(argv) == 2
        assert "is not allowed: use letters, digits" in capsys.readouterr().err
    for model, version in (("dnn", "a/b"), ("..", "v1"), ("dnn", "..")):
        with pytest.raises(RegistryError) as error:
            VersionRef(model, version)
        assert "no slashes, no '..'" in str(error.value)
    settings = PipelineSettings(artifacts_uri=fault_runs["artifacts"], registry_uri=registry_with_champion)
    with pytest.raises(UnknownModelError) as unknown:
        train("../dnn", SnapshotInfo("0" * 64, "uri", "source", 1, 1), TrainConfig(), settings, "run-x")
    assert_refused(fault_ledger, "model name with '..'", unknown.value, "'../dnn'", "unknown model")
    after = storage_bytes(registry_with_champion)
    fault_ledger.compared(before, after, may_change=set())
    assert after == before


@pytest.mark.slow
def test_a_tampered_or_unsafe_model_is_refused(
    registry_with_champion: str, fault_ledger: FaultLedger, tmp_path: Path
) -> None:
    import keras

    from mnist_pipeline.training.model_io import load_model_bytes, model_to_bytes

    registry = Registry(open_storage(registry_with_champion))
    champion = registry.champion()
    ref = VersionRef(champion.model, champion.version)
    key = f"{ref.prefix}/model.keras"
    original = registry.storage.read_bytes(key)
    registry.storage.write_bytes(key, original[:-8] + b"tampered")
    with pytest.raises(RegistryError) as error:
        promote_version(registry, ref, "restore it", who="test")
    assert_refused(
        fault_ledger, "tampered model", error.value, str(ref), "does not match its recorded sha256"
    )
    assert registry.champion() == champion
    # A Lambda layer would run arbitrary code when deserialised: safe_mode refuses to load it.
    unsafe = keras.Sequential([keras.Input((28, 28)), keras.layers.Lambda(lambda x: x * 2)])
    with pytest.raises(RegistryError, match="arbitrary code"):
        load_model_bytes(model_to_bytes(unsafe))
    fault_ledger.refused("model with a Lambda layer (unsafe to deserialise)")


@pytest.mark.slow
def test_no_credential_from_the_environment_reaches_logs_or_artifacts(
    mnist_npz: Path,
    tmp_path: Path,
    fault_ledger: FaultLedger,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    settings = PipelineSettings(
        source=str(mnist_npz),
        artifacts_uri=str(tmp_path / "artifacts"),
        registry_uri=str(tmp_path / "registry"),
        max_train_images=600,
    )
    with caplog.at_level(logging.DEBUG):
        snapshot = ingest(settings, "run-secrets")
        evaluation = evaluate(
            train("linear", snapshot, TrainConfig(epochs=1), settings, "run-secrets"), settings
        )
        run_conf = {"models": ["linear"], "epochs": 1, "force_promote": True}  # as the DAG's Params pass it
        options = PromotionOptions(force=True, trigger="manual", run_conf=run_conf)
        assert promote([evaluation], settings, "run-secrets", options).promoted
    captured = capfd.readouterr()
    texts = {"log records": "\n".join(r.getMessage() for r in caplog.records)}
    texts |= {"stdout": captured.out, "stderr": captured.err}
    for root in (settings.artifacts_uri, settings.registry_uri):
        texts |= {f"{root}/{key}": data.decode("latin-1") for key, data in storage_bytes(root).items()}
    assert len(texts) > 20 and any(key.endswith("metadata.json") for key in texts)
    assert_no_secrets(texts)
    fault_ledger.survived("credentials in the worker environment (none leaked)")


@pytest.mark.parametrize(
    ("source", "secret"),
    [
        ("https://mnist:FakeLeakTest42@data.example/mnist.npz#sha256=" + "0" * 64, "FakeLeakTest42"),
        ("https://data.example/mnist.npz?access_token=ya29.a0FakeTokenForLeakTest0123", "FakeToken"),
    ],
    ids=["user and password", "token parameter"],
)
def test_a_source_url_carrying_credentials_is_refused_without_echoing_them(
    source: str, secret: str, tmp_path: Path, fault_ledger: FaultLedger
) -> None:
    settings = PipelineSettings(source=source, artifacts_uri=str(tmp_path / "artifacts"))
    with pytest.raises(MnistPipelineError) as error:
        ingest(settings, "run-credentials-in-url")
    kind = "source URL carrying credentials"
    assert_refused(fault_ledger, kind, error.value, "data.example/mnist.npz", "must not carry credentials")
    assert secret not in str(error.value)
    assert not (tmp_path / "artifacts").exists()  # nothing recorded


def assert_no_secrets(texts: dict[str, str]) -> None:
    """No planted value and nothing shaped like a credential, in any log line or stored object."""
    leaks = [
        f"{where}: {label}"
        for where, text in texts.items()
        for label, pattern in SECRET_PATTERNS.items()
        if pattern.search(text)
    ]
    leaks += [
        f"{where}: ${name}" for where, text in texts.items() for name, v in PLANTED.items() if v in text
    ]
    assert leaks == []
