"""Named aliases: `champion` is one alias among `candidate`, `staging`, `shadow`... Each moves by
compare-and-swap, keeps its own history and rolls back; bad names and unknown versions are refused
before anything is written; a registry written before aliases reads as it did. On both backends,
with versions published through the library (no model is trained)."""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline.cli import main as cli_main
from mnist_pipeline.errors import RegistryError
from mnist_pipeline.registry.aliases import (
    CANDIDATE,
    CHAMPION,
    alias_history,
    alias_key,
    clear_alias,
    list_aliases,
    move_alias,
    read_alias,
    rollback_alias,
    set_alias,
    validate_alias,
)
from mnist_pipeline.registry.gate import Verdict
from mnist_pipeline.registry.history import list_events
from mnist_pipeline.registry.index import read_versions
from mnist_pipeline.registry.layout import CHAMPION_KEY
from mnist_pipeline.registry.operations import promote_version
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent, VersionSummary
from mnist_pipeline.registry.store import ModelRegistry, VersionRef
from mnist_pipeline.storage import CountingStorage, Storage, open_storage
from mnist_pipeline.web.app import load_overview
from mnist_pipeline.web.templates import render

WHO = "test:alice"
STAGING, SHADOW = "staging", "shadow"


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


def publish(registry: ModelRegistry, folders: Path, i: int) -> VersionRef:
    """Version `i` of the DNN: a model file and a metrics.json, its test accuracy 0.9 + i/100."""
    ref = VersionRef("dnn", f"20260101T{i:06d}Z-{i:08x}")
    folder = folders / ref.version
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(f"weights {i}".encode())
    figures = {"accuracy": 0.9 + i / 100, "loss": 0.1}
    (folder / "metrics.json").write_text(json.dumps(figures | {"test_hash": "t" * 64}))
    registry.publish(ref, folder, {"metrics": figures, "data_hash": "d" * 64, "trained_at": f"#{i}"})
    return ref


@pytest.fixture
def registry(storage_uri: str) -> ModelRegistry:
    return ModelRegistry(open_storage(storage_uri))


@pytest.fixture
def versions(registry: ModelRegistry, tmp_path: Path) -> list[VersionRef]:
    return [publish(registry, tmp_path / "folders", i) for i in range(1, 4)]


def snapshot(storage: Storage) -> dict[str, bytes]:
    return {key: storage.read_bytes(key) for key in storage.list_keys("")}


def target(pointer: ChampionPointer | None) -> VersionRef | None:
    return VersionRef(pointer.model, pointer.version) if pointer else None


def test_aliases_point_at_versions_and_are_listed_with_the_champion(registry, versions) -> None:
    v1, v2, v3 = versions
    set_alias(registry, CHAMPION, v1, WHO, "the best so far")
    set_alias(registry, STAGING, v3, WHO, "smoke tests")
    event = set_alias(registry, CANDIDATE, v2, WHO, "next in line", run_id="scheduled__1")
    assert (event.kind, event.alias, event.trigger) == ("alias-set", CANDIDATE, WHO)
    assert event.run_id == "scheduled__1"
    assert (event.model, event.version, event.previous_champion) == ("dnn", v2.version, None)

    aliases = list_aliases(registry)
    assert list(aliases) == [CHAMPION, CANDIDATE, STAGING]  # the champion first, then by name
    assert {alias: target(pointer) for alias, pointer in aliases.items()} == {
        CHAMPION: v1,
        CANDIDATE: v2,
        STAGING: v3,
    }
    candidate = aliases[CANDIDATE]
    assert (candidate.verdict, candidate.set_by, candidate.run_id) == ("next in line", WHO, "scheduled__1")
    assert candidate.metrics == {"accuracy": 0.92, "loss": 0.1} and candidate.uri == registry.uri(v2)
    assert (candidate.test_hash, candidate.data_hash) == ("t" * 64, "d" * 64)
    assert read_alias(registry, STAGING) == aliases[STAGING] and read_alias(registry, SHADOW) is None
    assert read_alias(registry, CHAMPION) == registry.champion()
    assert registry.storage.exists("mnist/aliases/candidate.json")


def test_each_alias_keeps_its_own_history_newest_first(registry, versions) -> None:
    v1, v2, v3 = versions
    set_alias(registry, STAGING, v1, WHO, "first")
    set_alias(registry, STAGING, v2, "test:bob", "second")
    set_alias(registry, CANDIDATE, v3, WHO, "other alias")

    staging = alias_history(registry, STAGING)
    assert [(e.kind, e.version, e.trigger, e.verdict.reason) for e in staging] == [
        ("alias-set", v2.version, "test:bob", "second"),
        ("alias-set", v1.version, WHO, "first"),
    ]
    assert staging[0].previous_champion == VersionSummary("dnn", v1.version, {"accuracy": 0.91, "loss": 0.1})
    assert {e.alias for e in staging} == {STAGING} and staging[0].time > staging[1].time
    assert alias_history(registry, STAGING, limit=1) == staging[:1]
    assert [e.version for e in alias_history(registry, CANDIDATE)] == [v3.version]
    assert alias_history(registry, SHADOW) == []
    # An alias's moves are not champion decisions: the main history and its index never see them.
    assert list_events(registry.storage) == []
    assert all(entry.promoted_by is None for entry in read_versions(registry.storage))


def test_a_rollback_walks_an_alias_back_one_target_at_a_time(registry, versions) -> None:
    v1, v2, v3 = versions
    for ref in versions:
        set_alias(registry, STAGING, ref, WHO, f"try {ref.version}")
    set_alias(registry, CANDIDATE, v3, WHO, "untouched")

    event = rollback_alias(registry, STAGING, "test:bob")
    assert (event.kind, event.alias, event.trigger) == ("alias-rollback", STAGING, "test:bob")
    assert event.version == v2.version
    assert event.previous_champion.version == v3.version
    restored = read_alias(registry, STAGING)
    assert target(restored) == v2 and restored.restored_at and restored.verdict == f"try {v2.version}"
    rollback_alias(registry, STAGING, WHO)
    assert target(read_alias(registry, STAGING)) == v1
    with pytest.raises(RegistryError, match="alias 'staging' has no previous target to roll back to"):
        rollback_alias(registry, STAGING, WHO)
    assert target(read_alias(registry, CANDIDATE)) == v3
    kinds = [e.kind for e in alias_history(registry, STAGING)]
    assert kinds == ["alias-rollback", "alias-rollback", "alias-set", "alias-set", "alias-set"]


def test_a_cleared_alias_reads_unset_and_a_rollback_brings_it_back(registry, versions) -> None:
    v1, v2, v3 = versions
    set_alias(registry, STAGING, v1, WHO, "first")
    set_alias(registry, STAGING, v2, WHO, "second")

    cleared = clear_alias(registry, STAGING, "test:bob", "the tests moved to shadow")
    assert cleared is not None and (cleared.kind, cleared.alias) == ("alias-cleared", STAGING)
    assert cleared.version == v2.version  # the target it cleared
    assert not cleared.promoted and cleared.verdict.reason == "the tests moved to shadow"
    assert read_alias(registry, STAGING) is None and STAGING not in list_aliases(registry)
    before = snapshot(registry.storage)
    # Not set any more: clearing again changes nothing and records nothing.
    assert clear_alias(registry, STAGING, WHO, "again") is None
    assert snapshot(registry.storage) == before

    rollback_alias(registry, STAGING, WHO)
    assert target(read_alias(registry, STAGING)) == v2
    clear_alias(registry, STAGING, WHO, "once more")
    set_alias(registry, STAGING, v3, WHO, "after a clear")
    rollback_alias(registry, STAGING, WHO)  # a pointer set after a clear remembers the target cleared
    assert target(read_alias(registry, STAGING)) == v2
    kinds = [e.kind for e in alias_history(registry, STAGING)]
    assert kinds == [
        "alias-rollback",
        "alias-set",
        "alias-cleared",
        "alias-rollback",
        "alias-cleared",
        "alias-set",
        "alias-set",
    ]


def test_the_champion_alias_is_never_cleared(registry, versions) -> None:
    set_alias(registry, CHAMPION, versions[0], WHO, "serves")
    before = snapshot(registry.storage)
    with pytest.raises(RegistryError, match="alias 'champion' cannot be cleared"):
        clear_alias(registry, CHAMPION, WHO, "no")
    assert snapshot(registry.storage) == before


def test_two_writers_racing_on_one_alias_both_move_it_and_both_are_recorded(registry, versions) -> None:
    v1, v2, _ = versions
    rival = ModelRegistry(registry.storage)
    racing = RacingStorage(
        registry.storage, alias_key(STAGING), lambda: set_alias(rival, STAGING, v2, "test:rival", "theirs")
    )
    ours = set_alias(ModelRegistry(racing), STAGING, v1, WHO, "ours")

    assert racing.lost == 1  # our first write found the rival's pointer, so we decided again
    pointer = read_alias(registry, STAGING)
    assert target(pointer) == v1 and target(pointer.previous) == v2 and pointer.previous.previous is None
    assert ours.previous_champion.version == v2.version  # our event names the move it followed
    history = alias_history(registry, STAGING)
    assert [(e.trigger, e.version) for e in history] == [(WHO, v1.version), ("test:rival", v2.version)]
    assert history[1].previous_champion is None


def test_an_unknown_or_tampered_version_is_refused_and_nothing_is_written(registry, versions) -> None:
    before = snapshot(registry.storage)
    with pytest.raises(
        RegistryError, match="cannot set alias 'staging' to dnn/nope: unknown version dnn/nope"
    ):
        set_alias(registry, STAGING, VersionRef("dnn", "nope"), WHO, "typo")
    assert snapshot(registry.storage) == before

    registry.storage.write_bytes(f"{versions[0].prefix}/model.keras", b"tampered")
    before = snapshot(registry.storage)
    with pytest.raises(
        RegistryError, match=r"cannot set alias 'staging' to dnn/.*does not match its recorded sha256"
    ):
        set_alias(registry, STAGING, versions[0], WHO, "tampered")
    with pytest.raises(RegistryError, match="setting alias 'staging' needs a --reason"):
        set_alias(registry, STAGING, versions[1], WHO, " ")
    assert snapshot(registry.storage) == before


@pytest.mark.parametrize(
    "name", ["Staging", "1st", "a/b", "../x", "", "x" * 41, "stag ing", "staging\n", "a_b"]
)
def test_a_bad_alias_name_is_refused_with_the_rule_and_nothing_is_written(
    name: str, registry: ModelRegistry, versions: list[VersionRef]
) -> None:
    before = snapshot(registry.storage)
    rule = rf"alias {re.escape(repr(name))} is not allowed: an alias is a lowercase letter, then up to 39"
    for attempt in (
        lambda: set_alias(registry, name, versions[0], WHO, "r"),
        lambda: clear_alias(registry, name, WHO, "r"),
        lambda: rollback_alias(registry, name, WHO),
        lambda: alias_history(registry, name),
        lambda: read_alias(registry, name),
    ):
        with pytest.raises(RegistryError, match=rule):
            attempt()
    assert snapshot(registry.storage) == before


def test_good_alias_names_map_to_their_keys() -> None:
    assert alias_key(CHAMPION) == CHAMPION_KEY == "mnist/champion.json"  # where it always was
    assert alias_key("shadow-2") == "mnist/aliases/shadow-2.json"
    assert validate_alias("a" * 40) == "a" * 40 and validate_alias(CANDIDATE) == "candidate"


def test_setting_the_champion_alias_is_a_manual_promotion(storage_uri: str, tmp_path: Path) -> None:
    by_alias, by_hand = (ModelRegistry(open_storage(f"{storage_uri}/{name}")) for name in ("alias", "hand"))
    v1, v2 = (publish(by_alias, tmp_path / "a", i) for i in (1, 2))
    publish(by_hand, tmp_path / "h", 1)

    event = set_alias(by_alias, CHAMPION, v1, WHO, "pin")
    manual = promote_version(by_hand, v1, "pin", WHO)
    assert event.kind == "manual-promotion" and event.alias is None
    assert without(event.to_dict(), "time") == without(manual.to_dict(), "time")
    alias_pointer, manual_pointer = (
        without(registry.champion().to_dict(), "promoted_at", "uri") for registry in (by_alias, by_hand)
    )
    assert alias_pointer == manual_pointer
    assert list_events(by_alias.storage) == [event] == alias_history(by_alias, CHAMPION)
    assert by_alias.storage.list_keys("mnist/alias-history/") == []  # nothing outside the main history

    set_alias(by_alias, CHAMPION, v2, WHO, "newer")
    rolled = rollback_alias(by_alias, CHAMPION, WHO)  # operations.rollback, as before aliases
    assert rolled.kind == "rollback" and target(by_alias.champion()) == v1
    kinds = [e.kind for e in alias_history(by_alias, CHAMPION)]
    assert kinds == ["rollback", "manual-promotion", "manual-promotion"]
    with pytest.raises(RegistryError, match="there is no previous champion to roll back to"):
        rollback_alias(by_alias, CHAMPION, WHO)  # v1 was the first champion, as `rollback` would say


def without(payload: dict[str, Any], *names: str) -> dict[str, Any]:
    return {key: value for key, value in payload.items() if key not in names}


def test_an_old_registry_without_aliases_lists_just_the_champion(registry, versions) -> None:
    """A registry written before aliases: a pointer without `set_by`, events without `alias`."""
    v1 = versions[0]
    pointer = ChampionPointer.for_version(
        VersionSummary("dnn", v1.version, {"accuracy": 0.91}), "u", "t", "better"
    )
    old_pointer = without(pointer.to_dict(), "set_by")
    registry.storage.write_json(CHAMPION_KEY, old_pointer)
    gate = HistoryEvent(
        kind="gate", model="dnn", version=v1.version, verdict=Verdict(True, "better"), promoted=True
    )
    kept = HistoryEvent(kind="gate", model="dnn", verdict=Verdict(False, "not better"), promoted=False)
    registry.storage.write_json(
        "mnist/history/20260101T000000000000Z-00000001.json", without(gate.to_dict(), "alias")
    )
    registry.storage.write_json(
        "mnist/history/20260101T000001000000Z-00000002.json", without(kept.to_dict(), "alias")
    )

    counted = CountingStorage(registry.storage)
    assert list_aliases(ModelRegistry(counted)) == {CHAMPION: pointer}
    assert dict(counted.calls) == {"read_versioned": 1, "list_keys": 1}
    moves = alias_history(registry, CHAMPION)
    assert [e.verdict.reason for e in moves] == ["better"]  # the kept decision moved nothing
    assert read_alias(registry, STAGING) is None and alias_history(registry, STAGING) == []

    set_alias(registry, STAGING, versions[1], WHO, "aliases start here")
    assert registry.storage.read_json(CHAMPION_KEY) == old_pointer  # the champion is left as it was
    assert list(list_aliases(registry)) == [CHAMPION, STAGING]


def test_listing_aliases_costs_one_listing_and_one_read_per_alias(registry, versions) -> None:
    set_alias(registry, CHAMPION, versions[0], WHO, "serves")
    for round_ in range(3):  # a history that grows must not make the listing grow
        for alias, ref in zip((CANDIDATE, STAGING, SHADOW), versions, strict=True):
            set_alias(registry, alias, ref, WHO, f"round {round_}")
    counted = CountingStorage(registry.storage)
    assert len(list_aliases(ModelRegistry(counted))) == 4
    assert dict(counted.calls) == {"read_versioned": 4, "list_keys": 1}


def test_move_alias_is_compare_and_swap_onto_published_versions_only(registry, versions) -> None:
    v1, v2, _ = versions
    pointer = ChampionPointer.for_version(
        VersionSummary("dnn", v1.version), registry.uri(v1), "now", "by code"
    )
    assert move_alias(registry, SHADOW, lambda current: (pointer.succeeding(current), current)) is None
    assert read_alias(registry, SHADOW) == pointer
    assert move_alias(registry, SHADOW, lambda current: (None, target(current))) == v1  # None leaves it

    ghost = ChampionPointer.for_version(VersionSummary("dnn", "20990101T000000Z-00000000"), "u", "now", "?")
    before = snapshot(registry.storage)
    with pytest.raises(RegistryError, match="cannot make dnn/20990101T000000Z-00000000 alias 'shadow'"):
        move_alias(registry, SHADOW, lambda current: (ghost, None))
    assert snapshot(registry.storage) == before

    champion = ChampionPointer.for_version(
        VersionSummary("dnn", v2.version), registry.uri(v2), "now", "by code"
    )
    move_alias(registry, CHAMPION, lambda current: (champion, None))
    assert registry.champion() == champion and read_alias(registry, SHADOW) == pointer


def test_the_cli_sets_lists_shows_rolls_back_and_clears_an_alias(
    registry, versions, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    v1, v2, _ = versions
    monkeypatch.setenv("MNIST_REGISTRY_URI", registry.storage.root_uri)
    who = f"cli:{getpass.getuser()}"

    def run(*args: str) -> tuple[int, str, str]:
        status = cli_main(["registry", "alias", *args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    assert run("list") == (0, "no aliases set\n", "")
    status, out, _ = run("set", STAGING, str(v1), "--reason", "smoke tests")
    assert status == 0 and f"alias 'staging' -> {v1} (was -) by {who} [alias-set]: smoke tests" in out
    assert run("set", STAGING, str(v2), "--reason", "newer")[0] == 0
    assert run("set", CHAMPION, str(v1), "--reason", "pin")[0] == 0

    status, out, _ = run("list")
    rows = out.splitlines()
    assert status == 0 and rows[0].split()[:3] == ["alias", "model/version", "set"]
    assert [row.split()[:2] for row in rows[1:]] == [[CHAMPION, str(v1)], [STAGING, str(v2)]]
    assert f"{who}: newer" in rows[2] and f"{who}: manual promotion: pin" in rows[1]

    status, out, _ = run("history", STAGING, "--limit", "1")
    header, row = out.splitlines()
    assert status == 0 and header.split()[:4] == ["time", "(UTC)", "kind", "model/version"]
    assert row.split()[1:4] == ["alias-set", str(v2), str(v1)] and row.endswith(f"{who}: newer")

    status, out, _ = run("rollback", STAGING)
    assert status == 0 and f"alias 'staging' -> {v1} (was {v2})" in out and "[alias-rollback]" in out
    status, out, _ = run("clear", STAGING, "--reason", "done")
    assert status == 0 and f"alias 'staging' cleared (was {v1}) by {who}: done" in out
    assert run("clear", STAGING, "--reason", "done") == (
        0,
        "alias 'staging' was not set: nothing to clear\n",
        "",
    )
    assert [row.split()[0] for row in run("list")[1].splitlines()[1:]] == [CHAMPION]
    assert len(run("history", STAGING)[1].splitlines()) == 1 + 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["set", "Staging", "dnn/v1", "--reason", "r"],
            "alias 'Staging' is not allowed: an alias is a lowercase",
        ),
        (
            ["set", "staging", "dnn/nope", "--reason", "r"],
            "cannot set alias 'staging' to dnn/nope: unknown version",
        ),
        (["set", "staging", "nope", "--reason", "r"], "'nope' is not MODEL/VERSION"),
        (["clear", "champion", "--reason", "r"], "alias 'champion' cannot be cleared"),
        (["rollback", "shadow"], "alias 'shadow' has no previous target to roll back to"),
        (["history", "a/b"], "alias 'a/b' is not allowed"),
    ],
)
def test_the_cli_names_the_alias_or_version_it_refuses(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("MNIST_REGISTRY_URI", str(tmp_path / "registry"))
    assert cli_main(["registry", "alias", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "registry").exists()  # nothing was written


def test_the_installed_command_lists_aliases(registry, versions) -> None:
    set_alias(registry, CANDIDATE, versions[2], WHO, "next")
    command = Path(sys.executable).parent / "mnist-pipeline"
    env = os.environ | {"MNIST_REGISTRY_URI": registry.storage.root_uri}
    result = subprocess.run(
        [str(command), "registry", "alias", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"candidate        {versions[2]}" in result.stdout


def test_the_overview_lists_every_alias_and_badges_the_versions(registry, versions) -> None:
    v1, v2, v3 = versions
    set_alias(registry, CHAMPION, v1, WHO, "serves")

    def overview_cost() -> int:
        counted = CountingStorage(registry.storage)
        load_overview(ModelRegistry(counted), str)
        return counted.total

    without_aliases = overview_cost()
    set_alias(registry, CANDIDATE, v2, WHO, "next in line")
    set_alias(registry, SHADOW, v2, WHO, "mirrors traffic")
    set_alias(registry, STAGING, v3, WHO, "smoke tests")
    assert overview_cost() == without_aliases + 3  # one read per alias; the listing was there already

    context = load_overview(registry, lambda ref: f"/versions/{ref}")
    assert [(row["alias"], row["version"], row["by"]) for row in context["aliases"]] == [
        (CHAMPION, v1.version, WHO),
        (CANDIDATE, v2.version, WHO),
        (SHADOW, v2.version, WHO),
        (STAGING, v3.version, WHO),
    ]
    html = render("overview", **context)
    table = html.split('<table id="aliases">')[1].split("</table>")[0]
    assert html.index('id="aliases"') < html.index('id="versions"')
    assert f'<a href="/versions/{v3}">dnn / {v3.version}</a>' in table and f"{WHO}: smoke tests" in table
    version_rows = html.split('<table id="versions">')[1].split("<tr ")[1:]  # the header is "<tr>"
    rows = {row.split('data-version="')[1].split('"')[0]: row for row in version_rows}
    assert rows[str(v1)].startswith('class="champion"')  # the champion keeps its row style and badge
    assert '<span class="badge">champion</span>' in rows[str(v1)]
    assert badges(rows[str(v2)]) == [CANDIDATE, SHADOW] and badges(rows[str(v3)]) == [STAGING]
    assert badges(rows[str(v1)]) == []


def badges(row: str) -> list[str]:
    return [piece.split("<")[0] for piece in row.split('<span class="badge alias">')[1:]]
