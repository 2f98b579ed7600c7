"""Typed records at the storage boundary: a malformed stored object is refused with an error that
names the object and the field, and the registry around it is left as it was."""

from __future__ import annotations

import json

import pytest

from mnist_pipeline.errors import ConfigError, RegistryError
from mnist_pipeline.evaluation.record import EvaluationRecord
from mnist_pipeline.registry.gate import Verdict
from mnist_pipeline.registry.history import list_events, record_event
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent, VersionSummary
from mnist_pipeline.registry.store import CHAMPION_KEY, ModelRegistry
from mnist_pipeline.storage import open_storage


def a_pointer(version: str = "v1", previous: ChampionPointer | None = None) -> ChampionPointer:
    pointer = ChampionPointer.for_version(
        VersionSummary("cnn", version, {"accuracy": 0.99, "loss": 0.03}), f"uri/{version}", "now", "test"
    )
    return pointer.succeeding(previous)


def test_a_pointer_survives_the_round_trip_through_json() -> None:
    pointer = a_pointer("v2", previous=a_pointer("v1"))
    again = ChampionPointer.from_dict(json.loads(json.dumps(pointer.to_dict())), "champion.json")
    assert again == pointer and again.previous is not None and again.previous.version == "v1"


def test_a_pointer_remembers_a_bounded_number_of_predecessors() -> None:
    pointer = None
    for number in range(25):
        pointer = a_pointer(f"v{number}", previous=pointer)
    depth = 0
    while pointer is not None:
        pointer, depth = pointer.previous, depth + 1
    assert depth == 11  # the champion and ten before it


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda p: p.pop("version"), "lacks the field 'version'"),
        (lambda p: p.update(metrics="high"), "metrics must be an object, got 'high'"),
        (lambda p: p.update(forced="yes"), "forced must be a boolean"),
        (lambda p: p["previous"].pop("model"), "previous lacks the field 'model'"),
    ],
)
def test_a_hand_edited_champion_is_refused_naming_the_object_and_the_field(
    storage_uri: str, edit, named: str
) -> None:
    storage = open_storage(storage_uri)
    payload = a_pointer("v2", previous=a_pointer("v1")).to_dict()
    edit(payload)
    storage.write_json(CHAMPION_KEY, payload)
    with pytest.raises(RegistryError, match=rf"champion\.json.*{named}"):
        ModelRegistry(storage).champion()
    assert storage.read_json(CHAMPION_KEY) == payload  # refused, not rewritten


def test_a_truncated_champion_is_refused_as_invalid_json(storage_uri: str) -> None:
    storage = open_storage(storage_uri)
    storage.write_bytes(CHAMPION_KEY, json.dumps(a_pointer().to_dict()).encode()[:40])
    with pytest.raises(RegistryError, match=r"champion\.json is not valid JSON"):
        ModelRegistry(storage).champion()


def test_history_events_round_trip_and_a_malformed_one_is_named(storage_uri: str) -> None:
    storage = open_storage(storage_uri)
    event = HistoryEvent(kind="gate", model="cnn", verdict=Verdict(True, "better"), promoted=True, run_id="r")
    stored = record_event(storage, event)
    assert list_events(storage) == [stored] and stored.time
    key = storage.list_keys("mnist/history/")[0]
    storage.write_json(key, {"kind": "gate", "model": "cnn", "promoted": True})
    with pytest.raises(RegistryError, match=r"history/.*lacks the field 'verdict'"):
        list_events(storage)


def test_an_evaluation_from_xcom_is_checked_with_the_error_the_caller_names() -> None:
    with pytest.raises(ConfigError, match=r"an evaluate task's XCom: accuracy must be a number, got 'high'"):
        EvaluationRecord.from_dict(
            {
                "model": "cnn",
                "run_id": "r",
                "data_hash": "d",
                "model_uri": "u",
                "model_sha256": "s",
                "epochs_run": 1,
                "train_seconds": 2,
                "accuracy": "high",
                "loss": 0.1,
                "test_hash": "t",
                "metrics_uri": "m",
            },
            "an evaluate task's XCom",
            ConfigError,
        )
