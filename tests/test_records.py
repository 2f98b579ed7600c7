"""Typed records at the storage boundary: a malformed stored object is refused with an error that
names the object and the field, and the registry around it is left as it was."""

from __future__ import annotations

import json
import re

import pytest

from mnist_pipeline.errors import ConfigError, RegistryError
from mnist_pipeline.evaluation.record import EvaluationRecord
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import Verdict
from mnist_pipeline.registry.layout import CHAMPION_KEY, STATE_KEY
from mnist_pipeline.registry.log import commit_key, encode_commit
from mnist_pipeline.registry.records import AliasMove, ChampionPointer, Commit, HistoryEvent, VersionSummary
from mnist_pipeline.registry.views import shard_key
from mnist_pipeline.storage import open_storage
from tests.registry_helpers import list_events, record_event


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


EDITS = [
    (lambda p: p.pop("version"), "lacks the field 'version'"),
    (lambda p: p.update(metrics="high"), "metrics must be an object, got 'high'"),
    (lambda p: p.update(forced="yes"), "forced must be a boolean"),
    (lambda p: p["previous"].pop("model"), "previous lacks the field 'model'"),
]


def a_champion_commit(pointer: ChampionPointer) -> Commit:
    return Commit(
        1, "promote", "2026-01-01T00:00:00.000000Z", "test", "pin", moves=[AliasMove("champion", pointer)]
    )


@pytest.mark.parametrize(("edit", "named"), EDITS)
def test_a_hand_edited_champion_commit_is_refused_naming_the_object_and_the_field(
    storage_uri: str, edit, named: str
) -> None:
    storage = open_storage(storage_uri)
    payload = json.loads(encode_commit(a_champion_commit(a_pointer("v2", previous=a_pointer("v1")))))
    edit(payload["moves"][0]["pointer"])
    storage.write_json(commit_key(1), payload)
    registry = Registry(storage)
    with pytest.raises(RegistryError, match=rf"_log/0+1\.json.*{named}"):
        registry.read_commit(1)
    # Folded as nothing, and named: the champion is not guessed from it.
    state = registry.state()
    assert state.number == 1 and registry.champion() is None
    assert (
        len(state.unreadable) == 1 and named in state.unreadable[0] and commit_key(1) in state.unreadable[0]
    )
    assert storage.read_json(commit_key(1)) == payload  # refused, not rewritten


@pytest.mark.parametrize(("edit", "named"), EDITS)
def test_a_hand_edited_champion_of_an_old_registry_is_set_aside_naming_it_and_the_field(
    storage_uri: str, edit, named: str
) -> None:
    """A registry from before the log: its champion.json is migrated; malformed, it is named in the
    migration's `set_aside` and left where it is."""
    storage = open_storage(storage_uri)
    payload = a_pointer("v2", previous=a_pointer("v1")).to_dict()
    edit(payload)
    storage.write_json(CHAMPION_KEY, payload)
    registry = Registry(storage)
    assert registry.champion() is None
    (why,) = registry.read_commit(1).set_aside
    assert why.startswith(f"{CHAMPION_KEY}: ") and "champion.json" in why and named in why
    assert storage.read_json(CHAMPION_KEY) == payload  # refused, not rewritten


def test_a_truncated_commit_is_refused_as_invalid_json(storage_uri: str) -> None:
    storage = open_storage(storage_uri)
    storage.write_bytes(commit_key(1), encode_commit(a_champion_commit(a_pointer()))[:40])
    with pytest.raises(RegistryError, match=r"_log/0+1\.json: not valid JSON"):
        Registry(storage).read_commit(1)


def test_a_truncated_champion_of_an_old_registry_is_set_aside_as_invalid_json(storage_uri: str) -> None:
    storage = open_storage(storage_uri)
    storage.write_bytes(CHAMPION_KEY, json.dumps(a_pointer().to_dict()).encode()[:40])
    registry = Registry(storage)
    assert registry.champion() is None
    (why,) = registry.read_commit(1).set_aside
    assert re.search(r"champion\.json is not valid JSON", why)


def test_history_events_round_trip_and_a_malformed_one_is_named(storage_uri: str) -> None:
    registry = Registry(open_storage(storage_uri))
    event = HistoryEvent(kind="gate", model="cnn", verdict=Verdict(True, "better"), promoted=True, run_id="r")
    stored = record_event(registry, event)
    assert list_events(registry) == [stored] and stored.time
    assert stored == HistoryEvent.from_dict(json.loads(json.dumps(stored.to_dict())), "event")
    storage = registry.storage
    number = registry.state().number
    payload = storage.read_json(commit_key(number))
    del payload["event"]["verdict"]
    storage.write_json(commit_key(number), payload)
    with pytest.raises(RegistryError, match=r"_log/.*lacks the field 'verdict'"):
        registry.read_commit(number)
    # A reader without the views folds it as nothing and names it; nothing is made up in its place.
    for view in (STATE_KEY, shard_key(stored.time.replace("-", "")[:6])):
        storage.delete(view)
    state = registry.state()
    assert list_events(registry) == [] and state.number == number
    assert len(state.unreadable) == 1 and "lacks the field 'verdict'" in state.unreadable[0]


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
