"""No file can jam the incoming queue: broken shards of every kind, interleaved with valid ones, are
each rejected with a reason while the valid ones are accepted and the run succeeds; a shard whose
worker died after claiming it is taken over once the claim's lease has passed."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.data.incoming import (
    ACCEPTED,
    CLAIMS,
    INCOMING,
    REJECTED,
    accepted_shards,
    process_incoming,
)
from mnist_pipeline.data.mnist import MnistData
from mnist_pipeline.hashing import sha256_hex
from mnist_pipeline.storage import Storage, open_storage
from mnist_pipeline.web.link import xcom_return_value
from tests.new_digits import new_digits
from tests.test_incoming_safety import incoming_clock_at

REPO = Path(__file__).resolve().parent.parent
MAX_BYTES = 2_000_000  # small limits, so that a bomb and an oversized file are cheap to make
MAX_IMAGES = 1_000


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npy_header_only(shape: tuple[int, ...]) -> bytes:
    """An `.npy` member whose header declares `shape` (uint8) but which holds no data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def zipped(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def broken_shards(mnist: MnistData) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, a word its reason must contain): files that are not what they say they are."""
    images, labels = mnist.x_train[:20], mnist.y_train[:20]
    valid = npz(images=images, labels=labels)
    objects = np.empty(20, dtype=object)
    objects[:] = list(range(20))
    # 6.3 MB of zeros in a few kB, and no more rows than allowed: only the uncompressed-size limit,
    # checked before anything is inflated, can refuse it (past it, the float dtype would).
    bomb = zipped(
        {"images.npy": npy(np.zeros((MAX_IMAGES, 28, 28), np.float64)), "labels.npy": npy(labels)},
        zipfile.ZIP_DEFLATED,
    )
    return {
        "a-text-file.npz": (b"images,labels\n1,2\n", "not a readable .npz archive"),
        "fake-zip.npz": (b"PK\x03\x04" + b"\x00" * 200, "not a readable .npz archive"),
        "truncated.npz": (valid[: len(valid) // 2], "not a readable .npz archive"),
        "empty-file.npz": (b"", "not a readable .npz archive"),
        "no-labels.npz": (npz(images=images), "lacks arrays ['labels']"),
        "pickled-labels.npz": (
            zipped({"images.npy": npy(images), "labels.npy": npy(objects)}),
            "Python objects",
        ),
        "lying-header.npz": (
            zipped({"images.npy": npy_header_only((10**9, 28, 28)), "labels.npy": npy(labels)}),
            "declares 1000000000 rows",
        ),
        "short-member.npz": (
            zipped({"images.npy": npy_header_only((20, 28, 28)) + b"\x00" * 100, "labels.npy": npy(labels)}),
            "header declares 15680 bytes",
        ),
        "zip-bomb.npz": (bomb, "bytes uncompressed, more than the limit of 2000000"),
        "too-many-images.npz": (
            npz(images=np.repeat(images, 51, axis=0), labels=np.repeat(labels, 51)),
            "more than the limit of 1000",
        ),
        "wrong-shape.npz": (npz(images=images[:, :, :27], labels=labels), "expected (N, 28, 28)"),
        "float-pixels.npz": (npz(images=images.astype(np.float32), labels=labels), "expected uint8"),
        "nan-pixels.npz": (npz(images=np.full((20, 28, 28), np.nan, np.float32), labels=labels), "NaN"),
        "label-ten.npz": (npz(images=images, labels=np.full(20, 10)), "labels must be 0-9"),
        "one-label-short.npz": (npz(images=images, labels=labels[:19]), "20 images but 19 labels"),
        "oversized.npz": (
            b"\x00" * (MAX_BYTES + 1),
            "more than the limit of 2000000 (MNIST_MAX_SHARD_BYTES)",
        ),
        "notes.txt": (b"shards come on Mondays", "not a shard"),
        "nested/folder/shard.npz": (valid, "not a shard"),
    }


def valid_shards(mnist: MnistData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fresh training digits under names a sender might well use, interleaved with the broken."""
    names = ["b-valid.npz", "m valid ü.npz", "z-valid.npz"]
    return {
        name: (
            new_digits(mnist.x_train[-300 * (i + 1) : len(mnist.x_train) - 300 * i]),
            mnist.y_train[-300 * (i + 1) : len(mnist.y_train) - 300 * i],
        )
        for i, name in enumerate(names)
    }


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_MAX_SHARD_BYTES", str(MAX_BYTES))
    monkeypatch.setenv("MNIST_MAX_SHARD_IMAGES", str(MAX_IMAGES))


def drop_everything(storage: Storage, mnist: MnistData) -> tuple[dict[str, str], set[str]]:
    broken = broken_shards(mnist)
    for name, (data, _) in broken.items():
        storage.write_bytes(f"{INCOMING}{name}", data)
    valid = valid_shards(mnist)
    for name, (images, labels) in valid.items():
        storage.write_bytes(f"{INCOMING}{name}", npz(images=images, labels=labels))
    return {name: word for name, (_, word) in broken.items()}, set(valid)


def assert_every_file_placed(
    storage: Storage, report: dict, expected: dict[str, str], valid: set[str]
) -> None:
    assert {shard["source"] for shard in report["accepted"]} == valid
    reasons = {shard["shard"]: shard["reason"] for shard in report["rejected"]}
    assert set(reasons) == set(expected), set(reasons) ^ set(expected)
    for name, word in expected.items():
        assert word in reasons[name], (name, reasons[name])
        assert name.split("/")[-1] in reasons[name]  # the reason names the file
    assert storage.list_keys(INCOMING) == []
    reason_files = [key for key in storage.list_keys(REJECTED) if key.endswith(".reason.txt")]
    assert len(reason_files) == len(expected)
    assert {shard["source"] for shard in accepted_shards(storage)} == valid


@pytest.mark.slow
def test_one_incoming_run_over_poison_pills_accepts_the_valid_and_rejects_each_broken_shard(
    limits, gcs_bucket: str, mnist: MnistData, airflow_db, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    monkeypatch.setenv("MNIST_ARTIFACTS_URI", f"gs://{gcs_bucket}/work")
    monkeypatch.setenv("MNIST_MIN_NEW_IMAGES", "900")
    storage = open_storage(f"gs://{gcs_bucket}/work")
    expected, valid = drop_everything(storage, mnist)
    assert len(expected) >= 12
    dag = DagBag(dag_folder=str(REPO / "dags")).dags["mnist_incoming"]
    run = dag.test()
    assert run.state == DagRunState.SUCCESS
    (process,) = [ti for ti in run.get_task_instances() if ti.task_id == "process_shards"]
    assert process.try_number == 1  # succeeded on its first try: no file failed the task
    report = xcom_return_value(process)
    assert_every_file_placed(storage, report, expected, valid)


def test_the_poison_pills_are_judged_one_by_one_on_a_local_store(
    limits, tmp_path: Path, mnist: MnistData
) -> None:
    storage = open_storage(str(tmp_path / "work"))
    expected, valid = drop_everything(storage, mnist)
    # On a file system the nested shard's folder is the entry in incoming/: set aside whole, unread.
    del expected["nested/folder/shard.npz"]
    expected["nested"] = "a folder, not a shard"
    report = process_incoming(storage, "run-poison", mnist, settings=PipelineSettings.from_env()).to_dict()
    assert_every_file_placed(storage, report, expected, valid)
    leftovers = [path for path in (tmp_path / "work").rglob("*") if path.name.endswith(".lock")]
    assert leftovers == []  # compare-and-swap leaves no lock files behind


def write_claim(storage: Storage, name: str, run_id: str, claimed_at: float) -> None:
    digest = sha256_hex(storage.read_bytes(f"{INCOMING}{name}"))
    storage.write_json(f"{CLAIMS}{name}-{digest[:16]}.json", {"run_id": run_id, "claimed_at": claimed_at})


@pytest.mark.parametrize("lease", [1.0])
def test_a_shard_claimed_by_a_killed_worker_is_taken_over_after_its_lease(
    lease: float, tmp_path: Path, mnist: MnistData, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    settings = PipelineSettings(claim_lease_seconds=lease)
    storage = open_storage(str(tmp_path / "work"))
    orphan = npz(images=new_digits(mnist.x_train[:100]), labels=mnist.y_train[:100])
    storage.write_bytes(f"{INCOMING}orphan.npz", orphan)
    # What a worker killed between claiming and placing leaves behind: a claim, and the shard.
    write_claim(storage, "orphan.npz", "run-killed", time.time())
    early = process_incoming(storage, "run-early", mnist, settings=settings)
    assert early.skipped == ["orphan.npz"]  # still within the lease
    assert storage.exists(f"{INCOMING}orphan.npz")
    # The lease runs out: the incoming module's clock moves past it, rather than the test sleeping.
    incoming_clock_at(monkeypatch, time.time() + lease + 0.2)
    report = process_incoming(storage, "run-later", mnist, settings=settings)
    assert [shard["source"] for shard in report.accepted] == ["orphan.npz"]
    assert "taking over" in caplog.text and "run-killed" in caplog.text
    assert storage.list_keys(INCOMING) == [] and len(storage.list_keys(ACCEPTED)) == 2  # shard + sidecar
    assert process_incoming(storage, "run-after", mnist, settings=settings).accepted == []  # processed once
