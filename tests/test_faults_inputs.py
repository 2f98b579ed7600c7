"""Fault injection, bad input: every defect is refused by the pipeline step that meets it, with an
error naming the input and the defect, and the registry (which has a champion) is left
byte-identical.

The defects go in where they would arrive: the data source of `ingest`, a shard under `incoming/`,
the run parameters (the DAG's Params, the CLI) and the registry location of `promote`.
"""

from __future__ import annotations

import copy
import gzip
import runpy
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_pipeline import cli
from mnist_pipeline.config import PipelineSettings, TrainConfig
from mnist_pipeline.data.incoming import INCOMING, REJECTED, process_incoming
from mnist_pipeline.data.mnist import IDX_FILES, MnistData, load_mnist
from mnist_pipeline.data.snapshot import SnapshotInfo
from mnist_pipeline.errors import ConfigError, DataError, MnistPipelineError, StorageError, UnknownModelError
from mnist_pipeline.hashing import sha256_hex
from mnist_pipeline.registry.promotion import promote
from mnist_pipeline.steps import ingest, train
from mnist_pipeline.storage import open_storage
from tests.fault_fixtures import storage_bytes
from tests.fault_report import FaultLedger
from tests.https_server import serve_https

# Every test here runs against the registry of `registry_with_champion`, built from trained runs.
pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
IMAGES = 600  # enough of real MNIST to carry each defect


@pytest.fixture
def guarded(
    registry_with_champion: str, tmp_path: Path, fault_ledger: FaultLedger, fault_runs: dict[str, Any]
) -> Any:
    """Settings over a registry with a champion and an empty artifacts store; after the test, the
    registry must be byte-identical and no dataset snapshot may have been written."""
    settings = PipelineSettings(
        source=fault_runs["source"],
        artifacts_uri=str(tmp_path / "artifacts"),
        registry_uri=registry_with_champion,
    )
    before = storage_bytes(registry_with_champion)
    assert open_storage(registry_with_champion).exists("mnist/champion.json")
    yield settings
    assert_registry_unchanged(registry_with_champion, before, fault_ledger)
    assert open_storage(settings.artifacts_uri).list_keys("datasets/") == []


def assert_registry_unchanged(uri: str, before: dict[str, bytes], ledger: FaultLedger) -> None:
    after = storage_bytes(uri)
    ledger.compared(before, after, may_change=set())
    assert after == before, f"registry changed: {sorted(set(after) ^ set(before))} added or removed"


def assert_refused(
    ledger: FaultLedger, kind: str, error: pytest.ExceptionInfo, names: str, defect: str
) -> None:
    """The error is the pipeline's own, and names both the input and what is wrong with it."""
    message = str(error.value)
    assert isinstance(error.value, MnistPipelineError), repr(error.value)
    assert names in message, f"{kind}: {message!r} does not name {names!r}"
    assert defect in message, f"{kind}: {message!r} does not say {defect!r}"
    ledger.refused(kind)


def mnist_slice(mnist: MnistData, **changes: np.ndarray) -> dict[str, np.ndarray]:
    arrays = {
        "x_train": mnist.x_train[:IMAGES],
        "y_train": mnist.y_train[:IMAGES],
        "x_test": mnist.x_test[:IMAGES],
        "y_test": mnist.y_test[:IMAGES],
    }
    return arrays | changes


def write_source(tmp_path: Path, arrays: dict[str, np.ndarray]) -> str:
    path = tmp_path / "bad-mnist.npz"
    np.savez(path, **arrays)
    return str(path)


def labels_with(mnist: MnistData, bad_label: int) -> np.ndarray:
    labels = mnist.y_train[:IMAGES].astype(np.int64)
    labels[17] = bad_label
    return labels


def float_images(mnist: MnistData, nan: bool) -> np.ndarray:
    images = mnist.x_train[:IMAGES].astype(np.float32) / 255.0
    if nan:
        images[3, 14, 14] = np.nan
    return images


# kind -> (arrays of a Keras-layout .npz, words the error must hold)
NPZ_DEFECTS = {
    "wrong image shape": (lambda m: {"x_train": m.x_train[:IMAGES, :, :27]}, "has shape (600, 28, 27)"),
    "float images": (lambda m: {"x_train": float_images(m, nan=False)}, "dtype float32, expected uint8"),
    "NaN values": (lambda m: {"x_train": float_images(m, nan=True)}, "holds NaN values"),
    "label 10": (lambda m: {"y_train": labels_with(m, 10)}, "holds label 10; labels must be 0-9"),
    "label -1": (lambda m: {"y_train": labels_with(m, -1)}, "holds label -1; labels must be 0-9"),
    "images and labels of different lengths": (
        lambda m: {"y_train": m.y_train[: IMAGES - 1]},
        "600 train images but 599 labels",
    ),
}


@pytest.mark.parametrize("kind", sorted(NPZ_DEFECTS))
def test_ingest_refuses_a_defective_npz_and_leaves_the_registry_alone(
    kind: str, mnist: MnistData, tmp_path: Path, guarded: PipelineSettings, fault_ledger: FaultLedger
) -> None:
    changes, defect = NPZ_DEFECTS[kind]
    source = write_source(tmp_path, mnist_slice(mnist, **changes(mnist)))
    with pytest.raises(DataError) as error:
        ingest(guarded.with_overrides(source=source), "run-bad-input")
    assert_refused(fault_ledger, kind, error, source, defect)


def test_ingest_refuses_a_truncated_npz(
    mnist_npz: Path, tmp_path: Path, guarded: PipelineSettings, fault_ledger: FaultLedger
) -> None:
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(mnist_npz.read_bytes()[: mnist_npz.stat().st_size // 2])
    with pytest.raises(DataError) as error:
        ingest(guarded.with_overrides(source=str(truncated)), "run-bad-input")
    assert_refused(fault_ledger, "truncated .npz", error, str(truncated), "not a readable .npz file")


def test_ingest_refuses_a_corrupt_gzip_idx_file(
    mnist: MnistData, tmp_path: Path, guarded: PipelineSettings, fault_ledger: FaultLedger
) -> None:
    folder = tmp_path / "idx"
    folder.mkdir()
    for name, array in zip(IDX_FILES, mnist_slice(mnist).values(), strict=True):
        header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        (folder / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes(), compresslevel=1))
    damaged = folder / f"{IDX_FILES[1]}.gz"
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2 :] = bytes(len(raw) - len(raw) // 2)  # the second half of the stream zeroed
    damaged.write_bytes(bytes(raw))
    with pytest.raises(DataError) as error:
        ingest(guarded.with_overrides(source=str(folder)), "run-bad-input")
    assert_refused(fault_ledger, "corrupt gzip IDX file", error, str(damaged), "corrupt gzip data")


def test_ingest_refuses_an_https_download_whose_checksum_differs(
    mnist_npz: Path,
    tmp_path: Path,
    guarded: PipelineSettings,
    fault_ledger: FaultLedger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served = tmp_path / "www"
    served.mkdir()
    shutil.copy(mnist_npz, served / "mnist.npz")
    wrong = sha256_hex(b"not the served file")
    with serve_https(served, tmp_path) as (base_url, ca_file):
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        with pytest.raises(DataError) as error:
            ingest(guarded.with_overrides(source=f"{base_url}/mnist.npz#sha256={wrong}"), "run-bad-input")
    assert_refused(fault_ledger, "checksum mismatch on https download", error, base_url, "sha256 mismatch")


def test_ingest_refuses_a_plain_http_download(guarded: PipelineSettings, fault_ledger: FaultLedger) -> None:
    source = "http://127.0.0.1:9/mnist.npz#sha256=" + "0" * 64
    with pytest.raises(DataError) as error:
        ingest(guarded.with_overrides(source=source), "run-bad-input")
    assert_refused(fault_ledger, "http:// download", error, source, "only https://")


def test_an_empty_incoming_shard_is_rejected_with_its_reason(
    guarded: PipelineSettings, fault_ledger: FaultLedger
) -> None:
    artifacts = open_storage(guarded.artifacts_uri)
    path = Path(guarded.artifacts_uri) / INCOMING / "empty.npz"
    path.parent.mkdir(parents=True)
    # Both arrays present, well typed, and holding no image at all.
    np.savez(path, images=np.zeros((0, 28, 28), np.uint8), labels=np.zeros((0,), np.uint8))
    report = process_incoming(artifacts, "run-incoming", load_mnist(guarded.source))
    assert report.accepted == [] and [r["shard"] for r in report.rejected] == ["empty.npz"]
    reason = report.rejected[0]["reason"]
    assert "empty.npz" in reason and "images is empty" in reason
    (reason_key,) = [key for key in artifacts.list_keys(REJECTED) if key.endswith(".reason.txt")]
    assert artifacts.read_bytes(reason_key).decode().strip() == reason
    assert artifacts.list_keys(INCOMING) == []  # taken exactly once, not left to be retried forever
    fault_ledger.refused("empty incoming shard")


def test_promotion_to_a_bucket_that_does_not_exist_names_the_bucket(
    guarded: PipelineSettings, fault_runs: dict[str, Any], fault_ledger: FaultLedger
) -> None:
    settings = guarded.with_overrides(
        artifacts_uri=fault_runs["artifacts"], registry_uri="gs://no-such-bucket-7/r"
    )
    with pytest.raises(StorageError) as error:
        promote([fault_runs["evaluations"]["run-dnn-a"]], settings, "run-dnn-a")
    assert_refused(
        fault_ledger, "registry bucket that does not exist", error, "gs://no-such-bucket-7", "does not exist"
    )


@pytest.fixture(scope="module")
def dag_params() -> Any:
    return runpy.run_path(str(REPO / "dags" / "mnist_training.py"))["dag"].params


def validate_run_conf(dag_params: Any, conf: dict[str, Any]) -> None:
    """What Airflow does with a trigger's conf: merge it into the DAG's Params and validate."""
    params = copy.deepcopy(dag_params)
    params.update(conf)
    params.validate()


def test_an_unknown_model_name_is_refused_by_the_params_and_the_library(
    dag_params: Any, guarded: PipelineSettings, fault_runs: dict[str, Any], fault_ledger: FaultLedger
) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError, match=r"param models.*'resnet' is not one of"):
        validate_run_conf(dag_params, {"models": ["resnet"]})
    data_hash = fault_runs["evaluations"]["run-dnn-a"].data_hash
    snapshot = SnapshotInfo(data_hash, "uri", "source", 1, 1)
    with pytest.raises(UnknownModelError) as error:
        train(
            "resnet",
            snapshot,
            TrainConfig(),
            guarded.with_overrides(artifacts_uri=fault_runs["artifacts"]),
            "r",
        )
    assert_refused(fault_ledger, "unknown model name", error, "'resnet'", "unknown model")


def test_zero_epochs_are_refused_by_the_params_and_the_cli(
    dag_params: Any,
    guarded: PipelineSettings,
    fault_ledger: FaultLedger,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    monkeypatch.setenv("MNIST_ARTIFACTS_URI", guarded.artifacts_uri)
    monkeypatch.setenv("MNIST_REGISTRY_URI", guarded.registry_uri)

    for field in ("epochs", "dnn_epochs"):
        with pytest.raises(ParamValidationError, match=f"param {field}.*0 is less than the minimum of 1"):
            validate_run_conf(dag_params, {field: 0})
    with pytest.raises(ConfigError) as error:
        TrainConfig(epochs=0)
    assert_refused(fault_ledger, "epochs 0", error, "epochs", "must be a positive integer, got 0")
    assert cli.main(["--run-id", "r", "train", "dnn", "--epochs", "0"]) == 2
    assert "epochs must be a positive integer, got 0" in capsys.readouterr().err
