"""The registry's indexes: readers cost a bounded number of storage calls whatever the registry's
size, a missing, corrupt or stale index is rebuilt from the objects, history comes a page at a
time, and concurrent writers lose no entry. On both backends, with registries written through the
library (no model is trained)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline.cli import main as cli_main
from mnist_pipeline.errors import RegistryError
from mnist_pipeline.registry import index
from mnist_pipeline.registry.gate import Verdict
from mnist_pipeline.registry.history import (
    event_key,
    find_promotion,
    history_page,
    list_events,
    record_event,
)
from mnist_pipeline.registry.operations import promote_version
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent, VersionSummary
from mnist_pipeline.registry.store import ModelRegistry, VersionRef
from mnist_pipeline.storage import CountingStorage, Storage, open_storage
from mnist_pipeline.web.app import load_overview, load_version

INDEX_PREFIX = "mnist/index/"
SHARD_PREFIX = "mnist/index/history/"


class RacingStorage(CountingStorage):
    """Lets `rival` write first, the first time anyone writes `key`: the writer under test then
    finds the object changed since it read it, as when another process wins the race."""

    def __init__(self, inner: Storage, key: str, rival: Callable[[], Any]) -> None:
        super().__init__(inner)
        self.key, self.rival, self.raced, self.lost = key, rival, False, 0

    def write_if_generation(self, key: str, data: bytes, generation: str) -> bool:
        if key == self.key and not self.raced:
            self.raced = True
            self.rival()
        won = super().write_if_generation(key, data, generation)
        self.lost += not won
        return won


def version_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "version"
    if not folder.is_dir():
        folder.mkdir()
        (folder / "model.keras").write_bytes(b"weights")
    return folder


def publish(registry: ModelRegistry, folder: Path, i: int) -> VersionRef:
    ref = VersionRef("dnn", f"20260101T{i:06d}Z-{i:08x}")
    metadata = {"metrics": {"accuracy": 0.9 + i / 1000, "loss": 0.1}, "trained_at": f"2026-01-01 #{i}"}
    registry.publish(ref, folder, metadata)
    return ref


def promoting_event(ref: VersionRef, i: int) -> HistoryEvent:
    return HistoryEvent(
        kind="gate",
        model=ref.model,
        version=ref.version,
        run_id=f"scheduled__2026-01-01T{i:02d}:00:00+00:00",
        verdict=Verdict(True, f"better #{i}"),
        promoted=True,
    )


def build_registry(storage: Storage, tmp_path: Path, n: int) -> ModelRegistry:
    """`n` versions, each promoted by a gate decision, with a refusal between them; the last is champion."""
    registry = ModelRegistry(storage)
    for i in range(n):
        ref = publish(registry, version_folder(tmp_path), i)
        record_event(storage, promoting_event(ref, i))
        refused = HistoryEvent(kind="gate", model="dnn", verdict=Verdict(False, "not better"), promoted=False)
        record_event(storage, refused)
    pointer = ChampionPointer.for_version(
        VersionSummary("dnn", ref.version, {"accuracy": 0.99, "loss": 0.1}), "uri", "now", "better"
    )
    registry.move_champion(lambda current: (pointer, None))
    return registry


def overview(storage: Storage, before: str | None = None) -> dict[str, Any]:
    return load_overview(ModelRegistry(storage), lambda ref: f"/versions/{ref}", before)


def calls_of(storage: Storage, read: Callable[[Storage], Any]) -> int:
    counted = CountingStorage(storage)
    read(counted)
    return counted.total


@pytest.fixture
def two_sizes(storage_uri: str, tmp_path: Path) -> tuple[Storage, Storage]:
    """A registry of 3 versions (6 events) and one of 30 (60 events), on one backend."""
    small, large = open_storage(f"{storage_uri}/small"), open_storage(f"{storage_uri}/large")
    build_registry(small, tmp_path, 3)
    build_registry(large, tmp_path, 30)
    return small, large


def test_readers_cost_the_same_storage_calls_for_3_or_30_versions(two_sizes) -> None:
    small, large = two_sizes
    readers: dict[str, Callable[[Storage], Any]] = {
        "overview": overview,
        "version page": lambda s: load_version(
            ModelRegistry(s), VersionRef("dnn", "20260101T000002Z-00000002"), str
        ),
        "history page": lambda s: history_page(s, limit=5),
        "promoted run": lambda s: find_promotion(s, "scheduled__2026-01-01T01:00:00+00:00", "dnn"),
        "other run": lambda s: find_promotion(s, "never", "dnn"),
    }
    costs = {name: (calls_of(small, read), calls_of(large, read)) for name, read in readers.items()}
    assert all(at_3 == at_30 for at_3, at_30 in costs.values()), costs
    assert costs["overview"][1] <= 10 and costs["other run"][1] <= 3, costs
    assert costs["promoted run"][1] == 1, costs  # the run's index key, nothing else
    shown = overview(large)
    assert len(shown["versions"]) == 30 and len(shown["history"]) == 50 and shown["older_history"]
    assert shown["versions"][0]["verdict"] == "better #29" and shown["versions"][0]["is_champion"]


def test_the_overview_shows_what_the_objects_say(storage_uri: str, tmp_path: Path) -> None:
    storage = open_storage(storage_uri)
    registry = build_registry(storage, tmp_path, 4)
    champion = registry.champion()
    manual = promote_version_without_files(registry, VersionRef("dnn", "20260101T000001Z-00000001"))
    shown = overview(storage)
    events = list_events(storage)
    assert [row["time"] for row in shown["history"]] == [event.time for event in reversed(events)]
    assert [row["version"] for row in shown["versions"]] == sorted(
        (ref.version for ref in registry.versions()), reverse=True
    )
    rows = {row["version"]: row for row in shown["versions"]}
    # A version the gate promoted keeps the gate's verdict after a manual promotion.
    assert rows[manual.version]["verdict"] == "better #1" and rows[manual.version]["is_champion"]
    assert rows[champion.version]["accuracy"] == pytest.approx(0.903)


def promote_version_without_files(registry: ModelRegistry, ref: VersionRef) -> HistoryEvent:
    """A manual promotion (its event through `record_event`), of a version published without
    metrics.json: the pointer is moved as `promote_version` would move it."""
    pointer = ChampionPointer.for_version(VersionSummary(ref.model, ref.version, {}), "uri", "now", "manual")
    registry.move_champion(lambda current: (pointer.succeeding(current), None))
    event = HistoryEvent(
        kind="manual-promotion",
        model=ref.model,
        version=ref.version,
        verdict=Verdict(True, "manual promotion: pin", forced=True),
        promoted=True,
        forced=True,
    )
    return record_event(registry.storage, event)


def test_a_manual_promotion_records_its_event_in_the_index(storage_uri: str, tmp_path: Path) -> None:
    storage = open_storage(storage_uri)
    registry = ModelRegistry(storage)
    folder = version_folder(tmp_path)
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.95, "loss": 0.2}))
    ref = publish(registry, folder, 7)
    event = promote_version(registry, ref, "pin it", who="cli:tester")
    (row,) = overview(storage)["versions"]
    assert row["verdict"] == "pin it" and row["is_champion"]  # the manual decision's reason
    assert history_page(storage).events == [event]


DAMAGES: dict[str, Callable[[Storage], None]] = {
    "no index at all": lambda storage: storage.delete(INDEX_PREFIX),
    "versions index missing": lambda storage: storage.delete(index.VERSIONS_KEY),
    "versions index not JSON": lambda storage: storage.write_bytes(
        index.VERSIONS_KEY, b'{"format": 1, "vers'
    ),
    "versions index of another format": lambda storage: storage.write_json(
        index.VERSIONS_KEY, {"format": 99, "versions": []}
    ),
    "versions index stale": lambda storage: storage.write_json(
        index.VERSIONS_KEY, {"format": index.INDEX_FORMAT, "versions": []}
    ),
    "months list missing": lambda storage: storage.delete(index.MONTHS_KEY),
    "months list malformed": lambda storage: storage.write_json(
        index.MONTHS_KEY, {"format": 1, "months": ["x"]}
    ),
    "history shard missing": lambda storage: storage.delete(SHARD_PREFIX),
    "history shard with a malformed event": lambda storage: [
        storage.write_json(key, {"format": 1, "events": [{"key": "k", "event": {"kind": "gate"}}]})
        for key in storage.list_keys(SHARD_PREFIX)
    ],
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_index_is_rebuilt_with_a_warning_and_the_page_is_unchanged(
    damage: str, storage_uri: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = open_storage(storage_uri)
    build_registry(storage, tmp_path, 3)
    before, version = (
        overview(storage),
        load_version(ModelRegistry(storage), VersionRef("dnn", "20260101T000001Z-00000001"), str),
    )
    DAMAGES[damage](storage)
    with caplog.at_level(logging.WARNING, logger="mnist_pipeline.registry.index"):
        assert overview(storage) == before
    assert "rebuilding it from" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mnist_pipeline.registry.index"):
        assert overview(storage) == before  # stored again: no second rebuild
        assert (
            load_version(ModelRegistry(storage), VersionRef("dnn", "20260101T000001Z-00000001"), str)
            == version
        )
    assert caplog.text == ""


def test_a_registry_without_an_index_finds_its_promotions(storage_uri: str, tmp_path: Path, caplog) -> None:
    storage = open_storage(storage_uri)
    build_registry(storage, tmp_path, 3)
    storage.delete(INDEX_PREFIX)  # as the registry's code before the index left it
    with caplog.at_level(logging.WARNING):
        found = find_promotion(storage, "scheduled__2026-01-01T02:00:00+00:00", "dnn")
    assert found is not None and found.version == "20260101T000002Z-00000002"
    assert "index" in caplog.text and "is missing" in caplog.text
    assert calls_of(storage, lambda s: find_promotion(s, "scheduled__2026-01-01T02:00:00+00:00", "dnn")) == 1


def test_a_promotion_whose_event_was_not_indexed_is_still_found(storage_uri: str, tmp_path: Path) -> None:
    """A crash between the event's object and its index: the champion names the run, so the
    idempotence check rebuilds the history index instead of letting the run promote twice."""
    storage = open_storage(storage_uri)
    registry = build_registry(storage, tmp_path, 2)
    ref = publish(registry, version_folder(tmp_path), 5)
    event = promoting_event(ref, 5)
    pointer = ChampionPointer.for_version(
        VersionSummary("dnn", ref.version, {"accuracy": 0.9}), "uri", "now", "better", run_id=event.run_id
    )
    registry.move_champion(lambda current: (pointer, None))
    stamped = HistoryEvent.from_dict(event.to_dict() | {"time": "2026-01-01T05:00:00.000000Z"}, "event")
    storage.write_json(event_key(stamped), stamped.to_dict())  # the object, and no index update
    found = find_promotion(storage, str(event.run_id), "dnn")
    assert found is not None and found.version == ref.version
    assert calls_of(storage, lambda s: find_promotion(s, str(event.run_id), "dnn")) == 1


def test_rebuild_index_and_the_reindex_command_restore_every_index_object(
    storage_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    storage = open_storage(storage_uri)
    build_registry(storage, tmp_path, 3)
    stored = {key: storage.read_bytes(key) for key in storage.list_keys(INDEX_PREFIX)}
    storage.delete(INDEX_PREFIX)
    monkeypatch.setenv("MNIST_REGISTRY_URI", storage_uri)
    assert cli_main(["registry", "reindex"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"versions": 3, "events": 6, "months": 1, "promotions": 3}
    assert {key: storage.read_bytes(key) for key in storage.list_keys(INDEX_PREFIX)} == stored
    assert index.rebuild_index(storage) == summary


def events_over_months(storage: Storage, start: datetime, count: int, step: timedelta) -> list[HistoryEvent]:
    """`count` events `step` apart, written as objects under their record_event keys, then indexed."""
    events = []
    for i in range(count):
        moment = start + i * step
        event = HistoryEvent(
            kind="gate",
            model="cnn",
            verdict=Verdict(False, f"decision {i}"),
            promoted=False,
            run_id=f"run-{i}",
            time=moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        )
        storage.write_json(event_key(event), event.to_dict())
        events.append(event)
    index.rebuild_index(storage)
    return events


def test_history_comes_newest_first_a_page_at_a_time(storage_uri: str) -> None:
    storage = open_storage(storage_uri)
    events = events_over_months(storage, datetime(2025, 11, 20, tzinfo=UTC), 9, timedelta(days=10))
    assert len(storage.list_keys("mnist/index/history/")) == 4  # Nov, Dec, Jan, Feb
    newest_first = list(reversed(events))
    pages, before = [], None
    while True:
        page = history_page(storage, limit=4, before=before)
        pages.append(page.events)
        if page.older is None:
            break
        before = page.older
    assert pages == [newest_first[:4], newest_first[4:8], newest_first[8:]]
    assert list_events(storage) == events  # every event, oldest first, as before
    since = history_page(storage, limit=50, since="2025-12-10T00:00:00Z")
    assert since.events == [event for event in newest_first if event.time >= "2025-12-10"] and not since.older
    assert history_page(storage, limit=2, since="2025-12-10").events == newest_first[:2]
    # A page that may read one shard stops at the month's end and says where the next starts.
    capped = history_page(storage, limit=50, max_shards=1)
    assert capped.events == newest_first[:1] and capped.older == history_page(storage, limit=1).older
    with pytest.raises(RegistryError, match="not an ISO 8601 time"):
        history_page(storage, since="last tuesday")


def test_the_history_command_takes_limit_and_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    storage = open_storage(str(tmp_path / "registry"))
    events_over_months(storage, datetime(2026, 1, 1, tzinfo=UTC), 5, timedelta(days=1))
    monkeypatch.setenv("MNIST_REGISTRY_URI", str(tmp_path / "registry"))
    assert cli_main(["registry", "history", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["2026-01-05T00:00:00", "2026-01-04T00:00:00"]
    assert lines[2].startswith("(older events: --before 20260104T000000000000Z-")
    assert cli_main(["registry", "history", "--since", "2026-01-04"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert cli_main(["registry", "history", "--since", "soon"]) == 2
    assert "not an ISO 8601 time" in capsys.readouterr().err


def test_the_overview_page_links_to_older_history(storage_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from mnist_pipeline.web.app import create_app

    storage = open_storage(storage_uri)
    events_over_months(storage, datetime(2026, 1, 1, tzinfo=UTC), 60, timedelta(hours=1))
    monkeypatch.setenv("MNIST_REGISTRY_URI", storage_uri)
    client = TestClient(create_app(access=lambda: None), base_url="http://localhost")
    newest = client.get("/")  # the app itself: Airflow mounts it under URL_PREFIX
    assert newest.status_code == 200
    assert newest.text.split('id="history"')[1].split("</table>")[0].count("decision ") == 50
    (older_link,) = [part.split('"')[0] for part in newest.text.split('id="older-history" href="')[1:]]
    older = client.get(f"/{older_link}")
    history = older.text.split('id="history"')[1].split("</table>")[0]
    assert history.count("decision ") == 10 and "decision 9<" in history and "newest events" in older.text
    assert 'id="older-history"' not in older.text


@pytest.mark.parametrize("raced", ["history shard", "versions index"])
def test_two_event_writers_racing_for_an_index_object_lose_no_entry(
    raced: str, storage_uri: str, tmp_path: Path
) -> None:
    storage = open_storage(storage_uri)
    registry = ModelRegistry(storage)
    first, rival, ours = (
        promoting_event(publish(registry, version_folder(tmp_path), i), i) for i in range(3)
    )
    record_event(storage, first)  # the index exists: the race is on updating it
    key = (
        index.shard_key(datetime.now(UTC).strftime("%Y%m"))
        if raced == "history shard"
        else index.VERSIONS_KEY
    )
    racing = RacingStorage(storage, key, lambda: record_event(storage, rival))
    record_event(racing, ours)
    assert racing.raced and racing.lost == 1
    reasons = [event.verdict.reason for event in history_page(storage).events]
    assert sorted(reasons) == ["better #0", "better #1", "better #2"]
    assert [event.verdict.reason for event in reversed(list_events(storage))] == reasons
    credited = [entry.promoted_by.reason for entry in index.read_versions(storage) if entry.promoted_by]
    assert credited == ["better #0", "better #1", "better #2"]
    for event in (first, rival, ours):
        assert find_promotion(storage, str(event.run_id), "dnn").verdict == event.verdict


def test_two_publishers_racing_for_the_versions_index_lose_no_version(
    storage_uri: str, tmp_path: Path
) -> None:
    storage = open_storage(storage_uri)
    registry = ModelRegistry(storage)
    folder = version_folder(tmp_path)
    publish(registry, folder, 1)
    racing = RacingStorage(storage, index.VERSIONS_KEY, lambda: publish(registry, folder, 2))
    publish(ModelRegistry(racing), folder, 3)
    assert racing.raced and racing.lost == 1
    listed = [entry.version for entry in index.read_versions(storage)]
    assert listed == [ref.version for ref in registry.versions()] and len(listed) == 3
