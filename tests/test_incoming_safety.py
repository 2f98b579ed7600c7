"""Incoming data that cannot harm the store: links, folders, devices and FIFOs set aside unread
(their targets byte-identical), every name ingested or set aside with a reason, no entry's
OSError failing the run, duplicates set aside naming the original, and shards whose labels the
champion confidently contradicts quarantined, with no false alarm on honest new digits."""

from __future__ import annotations

import io
import os
import socket
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.data.incoming import (
    ACCEPTED,
    INCOMING,
    QUARANTINED,
    REJECTED,
    ShardReport,
    accepted_shards,
    process_incoming,
)
from mnist_pipeline.data.incoming_summary import read_summary
from mnist_pipeline.data.label_check import Champion
from mnist_pipeline.data.mnist import MnistData
from mnist_pipeline.data.names import name_problem, stored_name
from mnist_pipeline.data.shifts import redrawn_with_another_pen
from mnist_pipeline.errors import StorageError
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import Verdict
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent, VersionSummary
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.steps import process_new_data
from mnist_pipeline.storage import Storage, open_storage
from tests.new_digits import new_digits
from tests.registry_helpers import publish_version, record_event


def npz(images: np.ndarray, labels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, images=images, labels=labels)
    return buffer.getvalue()


def fresh(mnist: MnistData, start: int, count: int = 100) -> tuple[np.ndarray, np.ndarray]:
    return new_digits(mnist.x_train[start : start + count]), mnist.y_train[start : start + count]


def drop(storage: Storage, name: str, shard: tuple[np.ndarray, np.ndarray]) -> None:
    storage.write_bytes(f"{INCOMING}{name}", npz(*shard))


def reasons(report: ShardReport) -> dict[str, str]:
    return {item["shard"]: item["reason"] for item in report.rejected}


def reason_file(storage: Storage, stored: str, folder: str = REJECTED) -> str:
    return storage.read_bytes(f"{folder}{stored}.reason.txt").decode()


def stored_of(report: ShardReport, shard: str) -> str:
    return next(item["stored"] for item in report.rejected if item["shard"] == shard)


# --- links, folders, devices and FIFOs (a file system's own entries) --------------------------------


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, Storage]:
    return tmp_path / "store", open_storage(str(tmp_path / "store"))


def test_links_are_set_aside_unread_and_their_targets_stay_byte_identical(
    store: tuple[Path, Storage], tmp_path: Path, mnist: MnistData
) -> None:
    root, storage = store
    drop(storage, "first.npz", fresh(mnist, 0))
    process_incoming(storage, "run-1", mnist)
    accepted_file = root / ACCEPTED / accepted_shards(storage)[0]["shard"]
    registry = Registry(open_storage(str(root / "registry")))
    ref = publish_version(registry, tmp_path / "folders", 1)
    model = root / "registry" / ref.prefix / "model.keras"
    outside = tmp_path / "outside.npz"
    outside.write_bytes(npz(*fresh(mnist, 100)))
    links = {
        "to-accepted.npz": accepted_file,
        "to-model.npz": model,
        "outside.npz": outside,
        "dangling.npz": tmp_path / "nowhere.npz",
        "to-folder": root / ACCEPTED,
        "relative.npz": Path("..") / ACCEPTED / accepted_file.name,
    }
    for name, target in links.items():
        (root / INCOMING / name).symlink_to(target)
    targets = {path: path.read_bytes() for path in (accepted_file, model, outside)}
    drop(storage, "second.npz", fresh(mnist, 200))

    report = process_incoming(storage, "run-2", mnist)

    assert {path: path.read_bytes() for path in targets} == targets  # never read, moved or deleted
    assert [shard["source"] for shard in report.accepted] == ["second.npz"]
    for name, target in links.items():
        reason = reasons(report)[name]
        assert "a symbolic link" in reason and repr(str(target)) in reason, reason
        assert reason_file(storage, stored_of(report, name)).strip() == reason
        assert (root / REJECTED / stored_of(report, name)).is_symlink()  # the link itself, moved
    assert list((root / INCOMING).iterdir()) == []
    drop(storage, "third.npz", fresh(mnist, 300))  # every later ingest still works
    assert [s["source"] for s in process_incoming(storage, "run-3", mnist).accepted] == ["third.npz"]


def test_an_incoming_folder_that_is_a_link_is_refused_naming_it(
    store: tuple[Path, Storage], tmp_path: Path, mnist: MnistData
) -> None:
    root, storage = store
    ref = publish_version(Registry(open_storage(str(tmp_path / "registry"))), tmp_path / "folders", 1)
    model = tmp_path / "registry" / ref.prefix / "model.keras"
    root.mkdir()
    (root / "incoming").symlink_to(model.parent)  # listing it would take the version's files
    with pytest.raises(StorageError, match=r"incoming/? is a symbolic link; it is never followed"):
        process_incoming(storage, "run-linked", mnist)
    assert model.read_bytes() == b"weights 1"


def test_folders_fifos_sockets_and_devices_are_set_aside_unopened(
    store: tuple[Path, Storage], mnist: MnistData
) -> None:
    root, storage = store
    drop(storage, "nested/inner.npz", fresh(mnist, 0))
    (root / INCOMING / "nested" / "link").symlink_to(root)
    os.mkfifo(root / INCOMING / "pipe.npz")  # opening it for reading would block the run
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(root / INCOMING / "socket.npz"))
        try:
            os.mknod(root / INCOMING / "device.npz", stat.S_IFCHR | 0o600, os.makedev(1, 3))
            kinds = {
                "nested": "a folder",
                "pipe.npz": "a FIFO",
                "socket.npz": "a socket",
                "device.npz": "a device",
            }
        except PermissionError:  # creating a device node needs CAP_MKNOD
            kinds = {"nested": "a folder", "pipe.npz": "a FIFO", "socket.npz": "a socket"}
        drop(storage, "valid.npz", fresh(mnist, 100))
        report = process_incoming(storage, "run-special", mnist)
    assert [shard["source"] for shard in report.accepted] == ["valid.npz"]
    for name, words in kinds.items():
        assert words in reasons(report)[name], reasons(report)
    moved = root / REJECTED / stored_of(report, "nested")
    assert (moved / "inner.npz").is_file() and (moved / "link").is_symlink()  # the folder, whole
    assert list((root / INCOMING).iterdir()) == []


def test_one_entry_that_cannot_be_moved_fails_neither_the_run_nor_the_others(
    store: tuple[Path, Storage], mnist: MnistData
) -> None:
    root, storage = store
    (root / "rejected").parent.mkdir(parents=True, exist_ok=True)
    (root / "rejected").write_bytes(b"a file where the rejected/ folder belongs")  # every move fails
    storage.write_bytes(f"{INCOMING}broken.npz", b"not an archive")
    drop(storage, "valid.npz", fresh(mnist, 0))
    report = process_incoming(storage, "run-blocked", mnist)
    assert [shard["source"] for shard in report.accepted] == ["valid.npz"]
    assert [item["shard"] for item in report.left] == ["broken.npz"]
    assert "not a readable .npz archive" in report.left[0]["reason"]
    (root / "rejected").unlink()
    retried = process_incoming(storage, "run-blocked", mnist)  # Airflow's retry: the same run id
    assert "not a readable .npz archive" in reasons(retried)["broken.npz"]


# --- names ----------------------------------------------------------------------------------------


def put(storage_uri: str, name: str, data: bytes) -> None:
    """Drop a file as a sender would: `cp` on a file system, an upload to a bucket."""
    if storage_uri.startswith("gs://"):
        open_storage(storage_uri).write_bytes(f"{INCOMING}{name}", data)
        return
    path = Path(storage_uri) / INCOMING / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    _age(path)  # written long ago: a hidden name is not still being written


def test_every_name_is_ingested_or_set_aside_with_its_reason(storage_uri: str, mnist: MnistData) -> None:
    storage = open_storage(storage_uri)
    # 250 characters; 200 on the emulator, whose file-system backend holds no longer name (a
    # bucket holds 1024 bytes): long enough that the stored name must be derived all the same.
    length = 196 if storage_uri.startswith("gs://") else 246
    long_valid, long_broken = "v" * length + ".npz", "b" * length + ".npz"
    for i, name in enumerate([long_valid, "ünïcödé digits.npz", "with space.npz", ".hidden.npz"]):
        put(storage_uri, name, npz(*fresh(mnist, 100 * i)))
    put(storage_uri, long_broken, b"not an archive")
    put(storage_uri, "a.npz", b"not an archive")  # set aside: never with the next one, its name's prefix
    put(storage_uri, "a.npz copy.npz", npz(*fresh(mnist, 1200)))
    for name in ["new\nline.npz", "tab\t.npz", "bidi\u202etxt.npz"]:
        put(storage_uri, name, npz(*fresh(mnist, 1000)))

    report = process_incoming(storage, "run-names", mnist)

    sources = {shard["source"]: shard for shard in report.accepted}
    assert set(sources) == {
        long_valid,
        "ünïcödé digits.npz",
        "with space.npz",
        ".hidden.npz",
        "a.npz copy.npz",
    }
    stored = sources[long_valid]["shard"]
    assert len(stored.encode()) <= 200 and stored.endswith("….npz")  # derived, the sender's name kept
    assert "not a readable .npz archive" in reasons(report)[long_broken]
    assert f"original name: {long_broken!r}" in reason_file(storage, stored_of(report, long_broken))
    for shown, word in [("new\\nline.npz", "'\\n'"), ("tab\\t.npz", "'\\t'"), ("bidi\\u202etxt.npz", "202e")]:
        assert "control characters" in reasons(report)[shown] and word in reasons(report)[shown]
        assert "\n" not in stored_of(report, shown) and "\t" not in stored_of(report, shown)
        assert "original name:" in reason_file(storage, stored_of(report, shown))
    assert storage.list_keys(INCOMING) == [] and report.left == []
    assert [shard["source"] for shard in accepted_shards(storage)].count(long_valid) == 1


def test_names_a_bucket_holds_but_a_file_system_cannot_are_refused_or_derived() -> None:
    # fake-gcs-server cleans `..` out of object names, which a bucket keeps as they are.
    assert name_problem("../registry/model.keras") == "its name holds the path step '..'"
    assert name_problem("a/./b.npz") == "its name holds the path step '.'"
    assert name_problem("ünïcödé .hidden name.npz") is None
    derived = stored_name("é" * 600 + ".npz", "0" * 64)  # 1204 bytes: over a bucket's limit too
    assert derived.startswith("0" * 16 + "-é") and derived.endswith("….npz") and len(derived.encode()) <= 200


def _age(path: Path) -> None:
    past = time.time() - 3600
    os.utime(path, (past, past))


def test_a_hidden_file_still_being_written_waits_and_is_reported(
    store: tuple[Path, Storage], mnist: MnistData
) -> None:
    root, storage = store
    drop(storage, ".partial.npz", fresh(mnist, 0))
    root.joinpath(INCOMING, "dangling.npz").symlink_to(root / "nowhere")
    report = process_incoming(storage, "run-hidden", mnist)
    assert report.waiting == [".partial.npz"] and "a symbolic link" in reasons(report)["dangling.npz"]
    _age(root / INCOMING / ".partial.npz")
    assert [s["source"] for s in process_incoming(storage, "run-later", mnist).accepted] == [".partial.npz"]


def test_a_name_that_is_not_utf8_is_set_aside(store: tuple[Path, Storage], mnist: MnistData) -> None:
    root, storage = store
    (root / INCOMING).mkdir(parents=True)
    with open(os.fsencode(root / INCOMING) + b"/latin-\xe9.npz", "wb") as handle:
        handle.write(npz(*fresh(mnist, 0)))
    report = process_incoming(storage, "run-bytes", mnist)
    (shown,) = reasons(report)
    assert "not UTF-8" in reasons(report)[shown] and report.accepted == []
    assert list((root / INCOMING).iterdir()) == []


# --- duplicates -----------------------------------------------------------------------------------


def test_the_same_shard_under_three_names_is_accepted_once(storage_uri: str, mnist: MnistData) -> None:
    storage = open_storage(storage_uri)
    shard = fresh(mnist, 0, 200)
    for name in ("a.npz", "b.npz", "c.npz"):
        drop(storage, name, shard)
    report = process_incoming(storage, "run-dup", mnist)
    assert [s["source"] for s in report.accepted] == ["a.npz"]
    original = report.accepted[0]["shard"]
    for name in ("b.npz", "c.npz"):
        assert (
            f"the same images and labels as the accepted shard {original!r} (sent as 'a.npz')"
            in (reasons(report)[name])
        )
    drop(storage, "again.npz", shard)  # a later run knows it too
    later = process_incoming(storage, "run-later", mnist)
    assert later.accepted == [] and original in reasons(later)["again.npz"]
    assert read_summary(storage)["categories"]["duplicate"] == 3


def test_copies_of_base_training_images_are_set_aside_above_five_percent(
    storage_uri: str, mnist: MnistData
) -> None:
    storage = open_storage(storage_uri)
    copies = np.roll(mnist.x_train[5000:5200], 1, axis=1)  # shifted by a pixel: still copies
    drop(storage, "copies.npz", (copies, mnist.y_train[5000:5200]))
    images, labels = fresh(mnist, 6000, 200)
    few = np.concatenate([images[:194], mnist.x_train[7000:7006]])  # 3% copies: accepted, counted
    drop(storage, "few.npz", (few, labels))
    many = np.concatenate([fresh(mnist, 8000, 180)[0], mnist.x_train[7100:7120]])  # 10% copies
    drop(storage, "many.npz", (many, labels))
    report = process_incoming(storage, "run-base-copies", mnist)
    assert "200 of 200 images (100%) copy" in reasons(report)["copies.npz"]
    assert "copy base MNIST training images" in reasons(report)["copies.npz"]
    assert "20 of 200 images (10%)" in reasons(report)["many.npz"]
    (accepted,) = report.accepted
    assert accepted["source"] == "few.npz" and accepted["statistics"]["copied_images"] == 6


# --- labels, against the champion -----------------------------------------------------------------


@pytest.fixture(scope="module")
def champion_registry(tmp_path_factory: pytest.TempPathFactory, mnist: MnistData) -> str:
    """A local registry whose champion is a small DNN trained for two epochs (about 92% on the
    test set): a weak champion, the hardest case for telling wrong labels from its own mistakes."""
    import keras

    from mnist_pipeline.evaluation.metrics import labels_npy
    from mnist_pipeline.training.model_io import model_to_bytes

    keras.utils.set_random_seed(7)
    inputs = keras.Input((28, 28), dtype="uint8")
    hidden = keras.layers.Dense(64, activation="relu")(
        keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    )
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(mnist.x_train[:20000], mnist.y_train[:20000], epochs=2, batch_size=128, verbose=0)
    folder = tmp_path_factory.mktemp("champion")
    (folder / "model.keras").write_bytes(model_to_bytes(model))
    predicted = model.predict(mnist.x_test, batch_size=2048, verbose=0).argmax(axis=1)
    (folder / "predictions.npy").write_bytes(labels_npy(predicted))
    headline = {"accuracy": float((predicted == mnist.y_test).mean()), "loss": 0.3}
    uri = str(tmp_path_factory.mktemp("registry"))
    registry, ref = Registry(open_storage(uri)), VersionRef("dnn", "20260101T000000Z-00000001")
    registry.publish(ref, folder, {"metrics": headline | {"test_hash": mnist.test_hash()}})
    event = HistoryEvent(
        "gate", "dnn", Verdict(True, "tiny champion"), True, version=ref.version, metrics=headline
    )
    record_event(
        registry,
        event,
        ChampionPointer.for_version(VersionSummary("dnn", ref.version, headline), "u", "t", "ok"),
    )
    return uri


def labelled_populations(mnist: MnistData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """500 new digits each: honest ones from shifted populations, and one shard whose labels are
    all shifted by one (every 3 labelled 4)."""

    def part(start: int) -> tuple[np.ndarray, np.ndarray]:
        return mnist.x_train[start : start + 500], mnist.y_train[start : start + 500]

    images, labels = part(40000)
    return {
        "moved-2px.npz": (new_digits(images), labels),
        "moved-down-2px.npz": (np.roll(images, (2, 2), axis=(1, 2)), labels),
        "thicker-pen.npz": (redrawn_with_another_pen(part(41000)[0], seed=1), part(41000)[1]),
        "shifted-labels.npz": (redrawn_with_another_pen(part(42000)[0], seed=2), (part(42000)[1] + 1) % 10),
    }


def test_a_shard_with_shifted_labels_is_quarantined_and_honest_new_digits_are_not(
    champion_registry: str, mnist_npz: Path, mnist: MnistData, storage_uri: str
) -> None:
    settings = PipelineSettings(
        source=str(mnist_npz), artifacts_uri=storage_uri, registry_uri=champion_registry
    )
    storage = open_storage(settings.artifacts_uri)
    for name, shard in labelled_populations(mnist).items():
        drop(storage, name, shard)
    report = process_new_data(settings, "run-labels")
    assert {s["source"] for s in report.accepted} == {
        "moved-2px.npz",
        "moved-down-2px.npz",
        "thicker-pen.npz",
    }
    (quarantined,) = report.quarantined
    reason = quarantined["reason"]
    assert quarantined["shard"] == "shifted-labels.npz" and "labels look shifted" in reason, reason
    assert " are predicted " in reason and "the champion dnn/20260101T000000Z-00000001" in reason
    assert reason_file(storage, quarantined["stored"], QUARANTINED).strip() == reason
    assert storage.exists(f"{QUARANTINED}{quarantined['stored']}")
    checks = [shard["statistics"]["label_check"] for shard in report.accepted]
    assert all(check["champion"].startswith("dnn/") and check["confident"] >= 20 for check in checks)
    assert sum(check["contradicted"] for check in checks) > 0  # single suspicious examples, counted
    assert read_summary(storage)["counts"]["quarantined"] == 1


def test_without_a_champion_the_label_check_is_skipped_and_the_statistics_say_so(
    mnist_npz: Path, mnist: MnistData, tmp_path: Path
) -> None:
    settings = PipelineSettings(
        source=str(mnist_npz),
        artifacts_uri=str(tmp_path / "artifacts"),
        registry_uri=str(tmp_path / "registry"),
    )
    drop(
        open_storage(settings.artifacts_uri), "shifted.npz", labelled_populations(mnist)["shifted-labels.npz"]
    )
    (accepted,) = process_new_data(settings, "run-no-champion").accepted
    assert accepted["statistics"]["label_check"] == {
        "champion": None,
        "skipped": "no champion in the registry yet",
        "confident": 0,
        "contradicted": 0,
        "disagreement": 0.0,
        "champion_error": None,
        "threshold": None,
        "confusion": None,
        "verdict": None,
    }


def test_the_champion_is_not_asked_when_no_shard_reaches_the_label_check(
    store: tuple[Path, Storage], mnist: MnistData
) -> None:
    _, storage = store
    asked: list[int] = []

    def predict(images: np.ndarray) -> np.ndarray:
        asked.append(len(images))
        raise AssertionError("the model must not be loaded")

    drop(storage, "test-digits.npz", (mnist.x_test[:50], mnist.y_test[:50]))
    storage.write_bytes(f"{INCOMING}broken.npz", b"not an archive")
    report = process_incoming(storage, "run-unasked", mnist, Champion("dnn/v", predict))
    assert asked == [] and len(report.rejected) == 2


def test_the_registry_page_shows_what_was_set_aside_and_quarantined(
    champion_registry: str, mnist_npz: Path, mnist: MnistData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_pipeline.web.app import load_incoming, load_overview
    from mnist_pipeline.web.templates import render

    settings = PipelineSettings(
        source=str(mnist_npz), artifacts_uri=str(tmp_path / "artifacts"), registry_uri=champion_registry
    )
    storage = open_storage(settings.artifacts_uri)
    drop(storage, "shifted.npz", labelled_populations(mnist)["shifted-labels.npz"])
    drop(storage, "copy-<b>.npz", (mnist.x_train[:100], mnist.y_train[:100]))
    (tmp_path / "artifacts" / INCOMING / "link.npz").symlink_to(tmp_path)
    process_new_data(settings, "run-page")
    monkeypatch.setenv("MNIST_ARTIFACTS_URI", settings.artifacts_uri)
    incoming = load_incoming()
    assert incoming["counts"] == {"accepted": 0, "set aside": 2, "quarantined": 1}
    assert dict(incoming["categories"]) == {"duplicate": 1, "link": 1, "labels": 1}
    html = render(
        "overview", **load_overview(Registry(open_storage(champion_registry)), str), incoming=incoming
    )
    section = html.split("<h2>Incoming data</h2>")[1]
    assert '<tr data-outcome="quarantined">' in section and "labels look shifted" in section
    assert "copy base MNIST training images" in section and "a symbolic link" in section
    assert "copy-&lt;b&gt;.npz" in section and "copy-<b>" not in section  # names are escaped
