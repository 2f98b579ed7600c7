"""Incoming data that cannot harm the store: links, folders, devices and FIFOs set aside unread
(their targets byte-identical), every name ingested or set aside with a reason, no entry's
OSError failing the run, duplicates set aside naming the original, and shards whose labels the
champion confidently contradicts quarantined, with no false alarm on honest new digits."""

from __future__ import annotations

import io
import os
import re
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


@pytest.mark.slow  # its champion_registry trains a small DNN
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


@pytest.mark.slow  # its champion_registry trains a small DNN
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
    incoming = load_incoming(settings)
    assert incoming["counts"] == {"accepted": 0, "set aside": 2, "quarantined": 1}
    assert dict(incoming["categories"]) == {"duplicate": 1, "link": 1, "labels": 1}
    html = render(
        "overview", **load_overview(Registry(open_storage(champion_registry)), str), incoming=incoming
    )
    section = html.split("<h2>Incoming data</h2>")[1]
    assert '<tr data-outcome="quarantined">' in section and "labels look shifted" in section
    assert "copy base MNIST training images" in section and "a symbolic link" in section
    assert "copy-&lt;b&gt;.npz" in section and "copy-<b>" not in section  # names are escaped


# --- what each outcome says, word for word ---------------------------------------------------------


def test_a_shard_the_champion_contradicts_is_quarantined_with_its_figures_and_logged(
    store: tuple[Path, Storage], mnist: MnistData, caplog: pytest.LogCaptureFixture
) -> None:
    """A stand-in champion that knows every digit it is shown (no model is loaded or trained)."""
    _, storage = store
    honest, shifted = fresh(mnist, 0, 300), fresh(mnist, 300, 300)
    truth = {image.tobytes(): label for image, label in zip(*honest, strict=True)}
    truth |= {image.tobytes(): label for image, label in zip(*shifted, strict=True)}

    def predict(images: np.ndarray) -> np.ndarray:
        return np.eye(10)[[truth[image.tobytes()] for image in images]]

    drop(storage, "honest.npz", honest)
    cases = [("shifted.npz", (0.01,) * 10, "1.0%"), ("shifted-again.npz", None, "unknown")]
    for name, class_error, error in cases:
        drop(storage, name, (shifted[0], (shifted[1] + 1) % 10))
        with caplog.at_level("INFO", logger="mnist_pipeline.data.incoming"):
            report = process_incoming(
                storage, f"run-{error}", mnist, Champion("dnn/v1", predict, class_error)
            )
        (quarantined,) = report.quarantined
        check = quarantined["statistics"]["label_check"]
        uri = storage.uri(f"{INCOMING}{name}")
        reason = (
            f"data source {uri!r}: {check['verdict']} (the champion dnn/v1 contradicts"
            f" {check['disagreement']:.0%} of its {check['confident']} confident predictions; its own test"
            f" error on these classes is {error}; quarantined at {check['threshold']:.0%} or more)"
        )
        assert (
            quarantined["reason"] == reason and quarantined["category"] == "labels" and report.rejected == []
        )
        assert reason_file(storage, quarantined["stored"], QUARANTINED).strip() == reason
        assert f"quarantined {name!r}: {reason}" in caplog.messages
        caplog.clear()
    assert [shard["source"] for shard in accepted_shards(storage)] == ["honest.npz"]


def test_an_accepted_shards_sidecar_and_log_line_say_what_it_holds(
    store: tuple[Path, Storage], mnist: MnistData, caplog: pytest.LogCaptureFixture
) -> None:
    from mnist_pipeline.data.screening import content_hash

    _, storage = store
    images, labels = new_digits(mnist.x_train[:1000]), np.ones(1000, np.uint8)  # skewed: flagged
    drop(storage, "ones.npz", (images, labels))
    storage.write_bytes(f"{INCOMING}notes.txt", b"hello")
    with caplog.at_level("INFO", logger="mnist_pipeline.data.incoming"):
        report = process_incoming(storage, "run-sidecar", mnist)
    (info,) = report.accepted
    assert set(info) == {"shard", "source", "sha256", "content_sha256", "images", "statistics", "flags"}
    assert info["content_sha256"] == content_hash(images, labels) and info["images"] == 1000
    assert storage.read_json(f"{ACCEPTED}{info['shard']}.json") == info
    (flag,) = info["flags"]
    assert f"accepted shard 'ones.npz': 1000 images, flagged: {flag}" in caplog.messages
    reason = reasons(report)["notes.txt"]
    assert f"set aside 'notes.txt': {reason}" in caplog.messages


def test_a_tampered_accepted_shard_is_refused_naming_it(
    store: tuple[Path, Storage], mnist: MnistData
) -> None:
    from mnist_pipeline.data.incoming import read_accepted, shard_limits
    from mnist_pipeline.errors import DataError

    _, storage = store
    drop(storage, "valid.npz", fresh(mnist, 0))
    (sidecar,) = process_incoming(storage, "run-accept", mnist).accepted
    key = f"{ACCEPTED}{sidecar['shard']}"
    images, _ = read_accepted(storage, sidecar, shard_limits(PipelineSettings()))
    assert len(images) == 100
    storage.write_bytes(key, storage.read_bytes(key) + b"tampered")
    with pytest.raises(DataError, match=f"^{storage.uri(key)} does not match its recorded sha256"):
        read_accepted(storage, sidecar, shard_limits(PipelineSettings()))
    sidecar |= {"sha256": sidecar["sha256"].replace(sidecar["sha256"][0], "x")}
    storage.write_bytes(key, b"not an archive")
    with pytest.raises(DataError):
        read_accepted(storage, sidecar, shard_limits(PipelineSettings()))


def test_the_announcement_ledger_lists_every_shard_announced_and_names_the_flagged(
    store: tuple[Path, Storage], mnist: MnistData
) -> None:
    import json

    from mnist_pipeline.data.incoming import ANNOUNCED_KEY, announce_pending

    _, storage = store
    drop(storage, "ones.npz", (new_digits(mnist.x_train[:1000]), np.ones(1000, np.uint8)))
    drop(storage, "plain.npz", fresh(mnist, 2000, 200))
    report = process_incoming(storage, "run-announce", mnist)
    stored = {shard["source"]: shard["shard"] for shard in report.accepted}
    announcement = announce_pending(storage, threshold=1200)
    assert announcement is not None and announcement["images"] == 1200
    flag = (
        report.accepted[0]["flags"]
        if report.accepted[0]["source"] == "ones.npz"
        else report.accepted[1]["flags"]
    )
    assert announcement["flagged"] == [{"shard": stored["ones.npz"], "flags": flag}]
    ledger = {"shards": sorted(stored.values())}
    assert storage.read_bytes(ANNOUNCED_KEY) == json.dumps(ledger, indent=2).encode()


def test_a_duplicate_of_several_origins_names_the_largest_and_counts_the_rest(
    store: tuple[Path, Storage], mnist: MnistData
) -> None:
    from mnist_pipeline.data.screening import _COPIED

    _, storage = store
    first = fresh(mnist, 0, 200)
    drop(storage, "first.npz", first)
    process_incoming(storage, "run-first", mnist)
    images, labels = fresh(mnist, 1000, 200)
    images[:20] = mnist.x_train[7000:7020]  # 20 copies of base MNIST...
    images[20:30] = first[0][:10]  # ...and 10 of the shard accepted first
    drop(storage, "mixed.npz", (images, labels))
    base_only = np.concatenate([fresh(mnist, 2000, 180)[0], mnist.x_train[7100:7120]])
    drop(storage, "base.npz", (base_only, labels))
    found = reasons(process_incoming(storage, "run-mixed", mnist))
    known = f"copy images already known {_COPIED}, more than 5%"

    def source(name: str) -> str:
        return f"data source {storage.uri(INCOMING + name)!r}: "

    assert found["mixed.npz"] == source("mixed.npz") + (
        f"30 of 200 images (15%) {known}: 20 copy base MNIST training images, 10 more copy other images;"
        " set aside as a duplicate"
    )
    assert found["base.npz"] == source("base.npz") + (
        f"20 of 200 images (10%) {known}: 20 copy base MNIST training images; set aside as a duplicate"
    )


def test_a_claim_that_cannot_be_read_is_taken_over_and_an_old_style_fresh_claim_is_respected(
    store: tuple[Path, Storage], mnist: MnistData, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    from mnist_pipeline.data.incoming import CLAIMS
    from mnist_pipeline.data.names import claim_name
    from mnist_pipeline.hashing import sha256_hex

    _, storage = store
    shards = {"garbled.npz": npz(*fresh(mnist, 0)), "fresh.npz": npz(*fresh(mnist, 100))}
    for name, data in shards.items():
        storage.write_bytes(f"{INCOMING}{name}", data)
    claims = {
        name: f"{CLAIMS}{claim_name(name, sha256_hex(data)[:16])}.json" for name, data in shards.items()
    }
    storage.write_bytes(claims["garbled.npz"], b"{not json")
    storage.write_bytes(
        claims["fresh.npz"], json.dumps({"run_id": "run-other"}).encode()
    )  # no time: its write's
    with caplog.at_level("WARNING", logger="mnist_pipeline.data.incoming"):
        report = process_incoming(storage, "run-mine", mnist)
    assert [shard["source"] for shard in report.accepted] == ["garbled.npz"] and report.skipped == [
        "fresh.npz"
    ]
    assert any(
        message.startswith(f"taking over {claims['garbled.npz']}: claimed by an unreadable claim ")
        for message in caplog.messages
    )


def test_an_entry_whose_move_fails_leaves_no_reason_file_and_says_why(
    store: tuple[Path, Storage], mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, storage = store
    storage.write_bytes(f"{INCOMING}broken.npz", b"not an archive")

    def refuse(source: str, target: str) -> None:
        raise PermissionError("read-only")

    monkeypatch.setattr(storage, "move_entry", refuse)
    report = process_incoming(storage, "run-stuck", mnist)
    (left,) = report.left
    assert (
        left["shard"] == "broken.npz"
        and "; not set aside (PermissionError: read-only): left for the next run" in left["reason"]
    )
    assert storage.list_keys(REJECTED) == [] and storage.list_keys(INCOMING) == [f"{INCOMING}broken.npz"]


def test_a_name_set_aside_is_reported_as_sent_unless_it_must_be_escaped(
    store: tuple[Path, Storage], mnist: MnistData
) -> None:
    _, storage = store
    storage.write_bytes(f"{INCOMING}back\\slash.txt", b"x")
    assert list(reasons(process_incoming(storage, "run-shown", mnist))) == ["back\\slash.txt"]


def test_a_shortened_name_keeps_a_short_extension_and_whole_characters() -> None:
    from mnist_pipeline.data.names import _shortened

    assert _shortened("abcdefg.npz", 11) == "abcdefg.npz"  # exactly the budget
    assert _shortened("x" * 30 + ".tar.npz", 20) == "x" * 13 + "….npz"  # the last extension only
    assert _shortened("x" * 30 + "." + "e" * 15, 30) == "x" * 11 + "…." + "e" * 15
    assert _shortened("x" * 30 + "." + "e" * 16, 30) == "x" * 27 + "…"  # too long to keep
    assert _shortened("x" * 10, 5) == "xx…"  # no extension at all
    assert _shortened("é" * 20, 10) == "ééé…"  # never half a character: 7 bytes hold three and a half


# --- every path an entry can take, with its category ------------------------------------------------


def test_every_entry_set_aside_carries_the_category_the_summary_counts(
    store: tuple[Path, Storage], mnist: MnistData
) -> None:
    root, storage = store
    edge = npz(*fresh(mnist, 0, 60))
    settings = PipelineSettings(max_shard_bytes=len(edge))
    storage.write_bytes(f"{INCOMING}edge.npz", edge)  # exactly the limit: accepted
    storage.write_bytes(f"{INCOMING}big.npz", b"x" * (len(edge) + 1))
    storage.write_bytes(f"{INCOMING}notes.txt", b"hello")
    storage.write_bytes(f"{INCOMING}broken.npz", b"not an archive")
    drop(storage, "tab\t.npz", fresh(mnist, 100, 50))
    (root / INCOMING / "link.npz").symlink_to(root / "nowhere")
    blank = fresh(mnist, 200, 50)
    blank[0][:5] = 0
    drop(storage, "blank.npz", blank)
    drop(storage, "base.npz", (mnist.x_train[7000:7050], mnist.y_train[7000:7050]))
    drop(storage, "test.npz", (mnist.x_test[:50], mnist.y_test[:50]))
    report = process_incoming(storage, "run-all", mnist, settings=settings)
    categories = {item["shard"]: item["category"] for item in report.rejected + report.quarantined}
    assert categories == {
        "big.npz": "invalid",
        "notes.txt": "invalid",
        "broken.npz": "invalid",
        "tab\\t.npz": "name",
        "link.npz": "link",
        "blank.npz": "blank",
        "base.npz": "duplicate",
        "test.npz": "leak",
    }
    assert [shard["source"] for shard in report.accepted] == ["edge.npz"]
    assert reasons(report)["notes.txt"] == (
        f"data source {storage.uri(INCOMING + 'notes.txt')!r}: not a shard: shards are .npz files placed"
        " directly in incoming/"
    )
    assert reasons(report)["link.npz"].endswith(
        "not a file: links are never followed, so it is set aside unread and its target is left as it is"
    )
    assert reasons(report)["test.npz"] == (
        f"data source {storage.uri(INCOMING + 'test.npz')!r}: 50 of 50 images duplicate MNIST test images"
        " (exactly, shifted by a pixel or with a few pixels changed); training on them would leak the"
        " yardstick"
    )
    assert set(report.to_dict()) == {"accepted", "rejected", "quarantined", "skipped", "waiting", "left"}
    summary = read_summary(storage)
    assert summary["categories"] == {
        "invalid": 3,
        "name": 1,
        "link": 1,
        "blank": 1,
        "duplicate": 1,
        "leak": 1,
    }


def test_an_entry_that_cannot_be_examined_is_set_aside_unread(
    store: tuple[Path, Storage], mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    _, storage = store
    drop(storage, "odd.npz", fresh(mnist, 0))
    listed = storage.entries

    def entries(prefix: str):
        return [
            replace(e, kind="unreadable", error="lstat failed") if e.key.endswith("odd.npz") else e
            for e in listed(prefix)
        ]

    monkeypatch.setattr(storage, "entries", entries)
    report = process_incoming(storage, "run-odd", mnist)
    (item,) = report.rejected
    assert item["category"] == "unreadable" and item["reason"] == (
        f"data source {storage.uri(INCOMING + 'odd.npz')!r}: could not be examined (lstat failed);"
        " set aside unread"
    )


def test_whatever_an_entry_raises_stays_with_it_and_a_storage_failure_leaves_it(
    store: tuple[Path, Storage],
    mnist: MnistData,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, storage = store
    for name in ("crash.npz", "outage.npz", "stuck.npz", "fine.npz"):
        drop(storage, name, fresh(mnist, 0 if name != "fine.npz" else 100))
    read, move = storage.read_entry, storage.move_entry

    def read_entry(key: str) -> bytes:
        if key.endswith(("crash.npz", "stuck.npz")):
            raise RuntimeError("boom")
        if key.endswith("outage.npz"):
            raise StorageError("bucket down")
        return read(key)

    def move_entry(source: str, target: str) -> None:
        if source.endswith("stuck.npz"):
            raise PermissionError("read-only")
        move(source, target)

    monkeypatch.setattr(storage, "read_entry", read_entry)
    monkeypatch.setattr(storage, "move_entry", move_entry)
    with caplog.at_level("WARNING", logger="mnist_pipeline.data.incoming"):
        report = process_incoming(storage, "run-faults", mnist)
    crash = f"data source {storage.uri(INCOMING + 'crash.npz')!r}: RuntimeError: boom"
    assert report.rejected == [
        {"shard": "crash.npz", "reason": crash, "category": "invalid", "stored": report.rejected[0]["stored"]}
    ]
    stuck = f"data source {storage.uri(INCOMING + 'stuck.npz')!r}: RuntimeError: boom"
    assert report.left == [
        {"shard": "outage.npz", "reason": "bucket down"},
        {
            "shard": "stuck.npz",
            "reason": f"{stuck}; not set aside (PermissionError: read-only): left for the next run",
        },
    ]
    assert [shard["source"] for shard in report.accepted] == ["fine.npz"]
    assert "entry 'crash.npz' could not be checked" in caplog.messages
    assert "entry 'outage.npz' left for the next run: bucket down" in caplog.messages
    assert f"entry 'stuck.npz' left for the next run: {report.left[1]['reason']}" in caplog.messages


def test_the_runs_outcomes_reach_the_summary_and_a_summary_that_fails_fails_nothing(
    store: tuple[Path, Storage],
    mnist: MnistData,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mnist_pipeline.data import incoming

    _, storage = store
    drop(storage, "fine.npz", fresh(mnist, 0))
    recorded: list[tuple] = []

    def failing(artifacts: Storage, report: dict, run_id: str) -> None:
        recorded.append((artifacts, report, run_id))
        raise StorageError("summary bucket down")

    monkeypatch.setattr(incoming, "record_outcomes", failing)
    with caplog.at_level("WARNING", logger="mnist_pipeline.data.incoming"):
        report = process_incoming(storage, "run-summary", mnist)
    assert recorded == [(storage, report.to_dict(), "run-summary")] and len(report.accepted) == 1
    assert caplog.messages == ["the incoming summary was not updated: summary bucket down"]


def write_claimed_shard(storage: Storage, mnist: MnistData, name: str, run_id: str, claimed_at: float) -> str:
    """A fresh shard `name` in the incoming folder, claimed by `run_id` at `claimed_at`; returns the
    claim's key."""
    import json

    from mnist_pipeline.data.incoming import CLAIMS
    from mnist_pipeline.data.names import claim_name
    from mnist_pipeline.hashing import sha256_hex

    data = npz(*fresh(mnist, 0))
    storage.write_bytes(f"{INCOMING}{name}", data)
    key = f"{CLAIMS}{claim_name(name, sha256_hex(data)[:16])}.json"
    storage.write_bytes(key, json.dumps({"run_id": run_id, "claimed_at": claimed_at}).encode())
    return key


def test_a_claim_names_its_run_and_time_and_a_stale_one_is_taken_over_saying_how_old(
    store: tuple[Path, Storage], mnist: MnistData, caplog: pytest.LogCaptureFixture
) -> None:
    _, storage = store
    key = write_claimed_shard(storage, mnist, "old.npz", "run-dead", time.time() - 5000)
    before = time.time()
    with caplog.at_level("WARNING", logger="mnist_pipeline.data.incoming"):
        assert process_incoming(storage, "run-alive", mnist).accepted
    assert any(f"taking over {key}: claimed by run-dead 500" in message for message in caplog.messages)
    claim = storage.read_json(key)
    assert set(claim) == {"run_id", "claimed_at"} and claim["run_id"] == "run-alive"
    assert before <= claim["claimed_at"] <= time.time()


def test_entries_are_read_in_batches_of_bounded_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from mnist_pipeline.data import incoming

    monkeypatch.setattr(incoming, "_BATCH_BYTES", 10)
    entries = [SimpleNamespace(size=size) for size in (4, 6, 1, 12, 3, 10)]
    sizes = [[entry.size for entry in batch] for batch in incoming._batches(entries)]
    assert sizes == [[4, 6], [1], [12], [3], [10]]
    # A new batch starts empty: after a cut, two entries that fill the limit exactly share one.
    refilled = [SimpleNamespace(size=size) for size in (6, 5, 5)]
    assert [[entry.size for entry in batch] for batch in incoming._batches(refilled)] == [[6], [5, 5]]
    assert incoming._batches([]) == []


def _copies_of_the_training_side(shard: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The shard's training-side digits moved a pixel: copies (its held-out ones would be leaks)."""
    from mnist_pipeline.data.slices import held_out_mask

    kept = ~held_out_mask(shard[0])
    return np.roll(shard[0][kept], 1, axis=2), shard[1][kept]


def test_a_later_batch_knows_the_shards_an_earlier_one_accepted(
    store: tuple[Path, Storage], mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_pipeline.data import incoming

    _, storage = store
    first = fresh(mnist, 0, 200)
    drop(storage, "a.npz", first)
    copy = _copies_of_the_training_side(first)
    drop(storage, "b.npz", copy)
    monkeypatch.setattr(incoming, "_BATCH_BYTES", len(npz(*first)))  # one shard per batch
    report = process_incoming(storage, "run-batches", mnist)
    assert [shard["source"] for shard in report.accepted] == ["a.npz"]
    stored = report.accepted[0]["shard"]
    count = len(copy[1])
    assert f"{count} copy the accepted shard {stored!r} (sent as 'a.npz')" in reasons(report)["b.npz"]


def test_in_one_batch_a_shard_copying_another_is_set_aside_and_none_copies_itself(
    store: tuple[Path, Storage], mnist: MnistData
) -> None:
    _, storage = store
    first = fresh(mnist, 0, 200)
    copy = _copies_of_the_training_side(first)
    own = fresh(mnist, 1000, 100)
    drop(storage, "a.npz", first)
    drop(storage, "b.npz", copy)
    drop(
        storage, "c.npz", (np.concatenate([own[0], own[0]]), np.concatenate([own[1], own[1]]))
    )  # twice its own
    report = process_incoming(storage, "run-one-batch", mnist)
    stored = {shard["source"]: shard["shard"] for shard in report.accepted}
    assert set(stored) == {"a.npz", "c.npz"}
    count = len(copy[1])
    assert (
        f"{count} copy the accepted shard {stored['a.npz']!r} (sent as 'a.npz')" in reasons(report)["b.npz"]
    )


def test_held_out_images_of_a_shard_accepted_earlier_are_copies_of_the_yardstick(
    store: tuple[Path, Storage], mnist: MnistData
) -> None:
    from mnist_pipeline.data.slices import held_out_mask

    _, storage = store
    first = new_digits(mnist.x_train[-2000:])
    drop(storage, "first.npz", (first, mnist.y_train[-2000:]))
    assert process_incoming(storage, "run-first", mnist).accepted
    held = np.roll(first[held_out_mask(first)][:50], 1, axis=2)
    drop(storage, "again.npz", (held, np.zeros(len(held), np.uint8)))
    assert (
        "50 of 50 images duplicate held-out new-data images"
        in reasons(process_incoming(storage, "run-2", mnist))["again.npz"]
    )


def test_a_champion_that_cannot_predict_skips_the_label_check_saying_why(
    store: tuple[Path, Storage], mnist: MnistData, caplog: pytest.LogCaptureFixture
) -> None:
    _, storage = store
    drop(storage, "fine.npz", fresh(mnist, 0))

    def broken(images: np.ndarray) -> np.ndarray:
        raise RuntimeError("no model")

    with caplog.at_level("ERROR", logger="mnist_pipeline.data.screening"):
        (accepted,) = process_incoming(storage, "run-broken", mnist, Champion("dnn/v1", broken)).accepted
    check = accepted["statistics"]["label_check"]
    assert (check["champion"], check["skipped"]) == (
        "dnn/v1",
        "the champion could not predict (RuntimeError: no model)",
    )
    assert caplog.messages == ["the champion dnn/v1 could not check the labels"]


def test_only_accepted_shards_sidecars_are_listed(store: tuple[Path, Storage], mnist: MnistData) -> None:
    _, storage = store
    drop(storage, "fine.npz", fresh(mnist, 0))
    storage.write_bytes(f"{INCOMING}meta.npz.json", b'{"shard": "fake"}')  # set aside under its own name
    report = process_incoming(storage, "run-sidecars", mnist)
    assert "meta.npz.json" in reasons(report)
    assert [shard["source"] for shard in accepted_shards(storage)] == ["fine.npz"]


def test_stored_and_claim_names_flatten_folders_and_derive_the_unsafe(tmp_path: Path) -> None:
    import hashlib

    from mnist_pipeline.data.names import MAX_STORED_NAME_BYTES, claim_name
    from mnist_pipeline.data.screening import content_hash

    digest = "0123456789abcdef" * 4
    assert stored_name("a/b.npz", digest) == "0123456789abcdef-a__b.npz"
    assert stored_name("new\nline.npz", digest) == "0123456789abcdef-new_line.npz"
    exact = "x" * (MAX_STORED_NAME_BYTES - 17)  # 16 digest characters, a dash: exactly the limit
    assert stored_name(exact, digest) == f"0123456789abcdef-{exact}"
    assert len(stored_name(exact + "y.npz", digest).encode()) == MAX_STORED_NAME_BYTES
    assert (
        name_problem("a\tb\nc")
        == "its name holds control characters or bytes that are not UTF-8 ('\\t', '\\n')"
    )
    fits = "n" * (MAX_STORED_NAME_BYTES - 2)
    assert claim_name(fits, "t") == f"{fits}-t"
    unsafe = hashlib.sha256(b"tab\t.npz").hexdigest()[:32]
    assert claim_name("tab\t.npz", "t") == f"name-{unsafe}-t"
    images, labels = np.arange(784).reshape(1, 28, 28) % 256, np.array([3])
    assert content_hash(images, labels) == content_hash(images.astype(np.uint8), labels.astype(np.uint8))


def test_an_entry_refused_on_its_listing_and_claimed_by_another_run_is_left_to_it(
    store: tuple[Path, Storage], mnist: MnistData
) -> None:
    import json

    from mnist_pipeline.data.incoming import CLAIMS
    from mnist_pipeline.data.names import claim_name

    root, storage = store
    storage.write_bytes(f"{INCOMING}tab\t.npz", b"x")
    (root / INCOMING / "link.npz").symlink_to(root / "nowhere")
    listed = {entry.key.removeprefix(INCOMING): entry for entry in storage.entries(INCOMING)}
    tab = "tab\t.npz"
    tags = {tab: f"{listed[tab].size}-name", "link.npz": f"link-{listed['link.npz'].modified:.0f}"}
    for name, tag in tags.items():
        claim = json.dumps({"run_id": "run-other", "claimed_at": time.time()}).encode()
        storage.write_bytes(f"{CLAIMS}{claim_name(name, tag)}.json", claim)
    report = process_incoming(storage, "run-mine", mnist)
    assert sorted(report.skipped) == ["link.npz", "tab\\t.npz"] and report.rejected == []
    assert sorted(path.name for path in (root / INCOMING).iterdir()) == ["link.npz", "tab\t.npz"]


def test_a_shard_copying_exactly_five_percent_is_accepted_and_its_log_line_has_no_flag(
    store: tuple[Path, Storage], mnist: MnistData, caplog: pytest.LogCaptureFixture
) -> None:
    _, storage = store
    images, labels = fresh(mnist, 6000, 200)
    edge = np.concatenate([images[:190], mnist.x_train[7000:7010]])  # 10 of 200 copy base images
    drop(storage, "edge.npz", (edge, labels))
    with caplog.at_level("INFO", logger="mnist_pipeline.data.incoming"):
        (accepted,) = process_incoming(storage, "run-edge", mnist).accepted
    assert accepted["statistics"]["copied_images"] == 10 and accepted["flags"] == []
    assert caplog.messages == ["accepted shard 'edge.npz': 200 images"]


def test_an_accepted_shard_past_todays_limits_fails_the_run_naming_it(
    store: tuple[Path, Storage], mnist: MnistData
) -> None:
    from mnist_pipeline.errors import DataError

    _, storage = store
    drop(storage, "large.npz", fresh(mnist, 0, 100))
    (sidecar,) = process_incoming(storage, "run-accept", mnist).accepted
    drop(storage, "next.npz", fresh(mnist, 200, 10))
    uri = storage.uri(f"{ACCEPTED}{sidecar['shard']}")
    # Every later shard is compared with it, so a limit lowered below it stops the run, naming it.
    with pytest.raises(DataError, match=f"^data source {re.escape(repr(uri))}: "):
        process_incoming(storage, "run-later", mnist, settings=PipelineSettings(max_shard_images=50))
    assert storage.exists(f"{INCOMING}next.npz")  # the run stopped before placing it: it waits


def incoming_clock_at(monkeypatch: pytest.MonkeyPatch, now: float) -> None:
    """The incoming module's clock stopped at `now` (seconds since the epoch)."""
    from types import SimpleNamespace

    from mnist_pipeline.data import incoming

    monkeypatch.setattr(incoming, "time", SimpleNamespace(time=lambda: now))


def test_a_claim_exactly_as_old_as_its_lease_is_still_held_and_a_moment_later_taken_over(
    store: tuple[Path, Storage], mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, storage = store
    write_claimed_shard(storage, mnist, "held.npz", "run-other", 1_000_000.0)
    settings = PipelineSettings(claim_lease_seconds=60.0)
    incoming_clock_at(monkeypatch, 1_000_060.0)
    assert process_incoming(storage, "run-mine", mnist, settings=settings).skipped == ["held.npz"]
    incoming_clock_at(monkeypatch, 1_000_060.5)
    report = process_incoming(storage, "run-mine", mnist, settings=settings)
    assert [shard["source"] for shard in report.accepted] == ["held.npz"]


def test_a_hidden_file_changed_exactly_the_grace_period_ago_is_judged(
    store: tuple[Path, Storage], mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_pipeline.data.incoming import HIDDEN_GRACE_SECONDS

    root, storage = store
    drop(storage, ".late.npz", fresh(mnist, 0))
    os.utime(root / INCOMING / ".late.npz", (1_000_000, 1_000_000))
    incoming_clock_at(monkeypatch, 1_000_000 + HIDDEN_GRACE_SECONDS - 0.5)
    assert process_incoming(storage, "run-early", mnist).waiting == [".late.npz"]
    incoming_clock_at(monkeypatch, 1_000_000 + HIDDEN_GRACE_SECONDS)
    report = process_incoming(storage, "run-grace", mnist)
    assert report.waiting == [] and [shard["source"] for shard in report.accepted] == [".late.npz"]


def claim_key_of(name: str, data: bytes) -> str:
    """Where the claim on the entry `name` holding `data` is kept."""
    from mnist_pipeline.data.incoming import CLAIMS
    from mnist_pipeline.data.names import claim_name
    from mnist_pipeline.hashing import sha256_hex

    return f"{CLAIMS}{claim_name(name, sha256_hex(data)[:16])}.json"


def test_an_old_style_claim_whose_write_time_cannot_be_found_counts_as_past_its_lease(
    store: tuple[Path, Storage], mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    _, storage = store
    data = npz(*fresh(mnist, 0))
    storage.write_bytes(f"{INCOMING}old.npz", data)
    storage.write_bytes(claim_key_of("old.npz", data), json.dumps({"run_id": "run-gone"}).encode())
    monkeypatch.setattr(storage, "modified_times", lambda prefix="": {})  # gone from the listing
    report = process_incoming(storage, "run-mine", mnist)
    assert [shard["source"] for shard in report.accepted] == ["old.npz"] and report.rejected == []


def test_an_entry_a_bucket_lists_inside_a_folder_is_set_aside_under_flat_claim_and_reason_names(
    store: tuple[Path, Storage], mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_pipeline.data.incoming import CLAIMS

    _, storage = store
    drop(storage, "nested/shard.npz", fresh(mnist, 0))
    listed = storage.entries

    def entries(prefix: str):  # as a bucket lists it: the object under its whole name, no folder
        return listed(f"{INCOMING}nested/") if prefix == INCOMING else listed(prefix)

    monkeypatch.setattr(storage, "entries", entries)
    (entry,) = entries(INCOMING)
    report = process_incoming(storage, "run-nested", mnist)
    (item,) = report.rejected
    reason = (
        f"data source {storage.uri(INCOMING + 'nested/shard.npz')!r}: not a shard: shards are .npz files"
        " placed directly in incoming/"
    )
    assert (item["shard"], item["category"], item["reason"]) == ("nested/shard.npz", "invalid", reason)
    assert item["stored"].endswith("-nested__shard.npz") and report.accepted == []
    assert reason_file(storage, item["stored"]) == f"{reason}\n"  # the name needs no recording
    assert storage.list_keys(CLAIMS) == [f"{CLAIMS}nested__shard.npz-{entry.size}.json"]


def test_a_copy_of_a_shard_whose_sidecar_predates_its_source_names_it_sent_as_nothing(
    store: tuple[Path, Storage], mnist: MnistData
) -> None:
    _, storage = store
    shard = fresh(mnist, 0)
    drop(storage, "first.npz", shard)
    (sidecar,) = process_incoming(storage, "run-first", mnist).accepted
    older = {key: value for key, value in sidecar.items() if key != "source"}  # as older runs wrote it
    storage.write_json(f"{ACCEPTED}{sidecar['shard']}.json", older)
    drop(storage, "again.npz", shard)
    reason = reasons(process_incoming(storage, "run-again", mnist))["again.npz"]
    assert f"the same images and labels as the accepted shard {sidecar['shard']!r} (sent as '')" in reason
