"""Named aliases: `champion` is one alias among `candidate`, `staging`, `shadow`... Each moves by
one commit of the registry's log, keeps its own history and rolls back; a writer that loses the
race for the next commit drafts again, or is refused (`ConflictError`) when the rival moved the
same alias; bad names and unknown versions are refused before anything is written; a registry
written before aliases (and before the log) reads as it did. On both backends, with versions
published through the library (no model is trained)."""

from __future__ import annotations

import getpass
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline.cli import main as cli_main
from mnist_pipeline.errors import ConflictError, RegistryError
from mnist_pipeline.registry.aliases import (
    CANDIDATE,
    CHAMPION,
    alias_history,
    alias_key,
    clear_alias,
    list_aliases,
    read_alias,
    rollback_alias,
    set_alias,
    validate_alias,
)
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import Verdict
from mnist_pipeline.registry.history import list_events
from mnist_pipeline.registry.layout import CHAMPION_KEY, LOG_PREFIX
from mnist_pipeline.registry.log import commit_number
from mnist_pipeline.registry.operations import promote_version
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent, VersionSummary
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.registry.views import LOG_VERSION
from mnist_pipeline.storage import Storage, open_storage
from mnist_pipeline.web.app import load_overview
from mnist_pipeline.web.templates import render
from tests.registry_helpers import publish_version, snapshot, upload_version
from tests.storage_helpers import CountingStorage, RacingStorage

WHO = "test:alice"
STAGING, SHADOW = "staging", "shadow"


@pytest.fixture
def registry(storage_uri: str) -> Registry:
    return Registry(open_storage(storage_uri))


@pytest.fixture
def versions(registry: Registry, tmp_path: Path) -> list[VersionRef]:
    return [publish_version(registry, tmp_path / "folders", i) for i in range(1, 4)]


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
    # An alias's moves are not champion decisions: the history shows them under their alias, but
    # they neither move the champion nor credit a version with its promotion.
    assert [(e.alias, e.version) for e in list_events(registry)] == [
        (STAGING, v1.version),
        (STAGING, v2.version),
        (CANDIDATE, v3.version),
    ]
    assert alias_history(registry, CHAMPION) == [] and registry.champion() is None
    assert all(entry.promoted_by is None for entry in registry.version_entries())


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
    assert target(read_alias(registry, CANDIDATE)) == v3
    kinds = [e.kind for e in alias_history(registry, STAGING)]
    assert kinds == ["alias-rollback", "alias-rollback", "alias-set", "alias-set", "alias-set"]
    before = snapshot(registry.storage)
    with pytest.raises(RegistryError, match="alias 'staging' has no previous target to roll back to"):
        rollback_alias(registry, STAGING, WHO)
    assert snapshot(registry.storage) == before


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


def log_numbers(storage: Storage) -> list[int]:
    return sorted(n for n in map(commit_number, storage.list_keys(LOG_PREFIX)) if n is not None)


def test_a_writer_that_loses_the_commit_race_drafts_again_on_the_rival_commit(registry, versions) -> None:
    v1, v2, _ = versions
    set_alias(registry, STAGING, v2, WHO, "first")
    rival = Registry(registry.storage)
    racing = RacingStorage(registry.storage, lambda: set_alias(rival, CANDIDATE, v1, "test:rival", "theirs"))
    head = registry.state().number
    ours = set_alias(Registry(racing), STAGING, v1, WHO, "ours")

    assert racing.lost == 1  # our first commit found the rival's at its number, so we drafted again
    assert log_numbers(registry.storage) == [*range(1, head + 3)]  # no gap, nothing written twice
    rivals, mine = registry.read_commit(head + 1), registry.read_commit(head + 2)
    assert (rivals.actor, rivals.moves[0].alias) == ("test:rival", CANDIDATE)
    assert (mine.actor, mine.moves[0].alias, mine.based_on) == (WHO, STAGING, head)
    assert mine.event == ours and ours.previous_champion.version == v2.version
    pointer = read_alias(registry, STAGING)
    assert target(pointer) == v1 and target(pointer.previous) == v2 and pointer.previous.previous is None
    assert target(read_alias(registry, CANDIDATE)) == v1  # the rival's move stands
    history = alias_history(registry, STAGING)
    assert [(e.trigger, e.version) for e in history] == [(WHO, v1.version), (WHO, v2.version)]
    assert [e.trigger for e in alias_history(registry, CANDIDATE)] == ["test:rival"]


def test_a_rival_that_moved_the_same_alias_first_gets_ours_refused(registry, versions) -> None:
    v1, v2, _ = versions
    rival = Registry(registry.storage)
    racing = RacingStorage(registry.storage, lambda: set_alias(rival, STAGING, v2, "test:rival", "theirs"))
    head = registry.state().number
    with pytest.raises(ConflictError, match=r"staging changed to dnn/\S+ by test:rival at .*Nothing was"):
        set_alias(Registry(racing), STAGING, v1, WHO, "ours")

    assert racing.lost == 1
    assert log_numbers(registry.storage) == [*range(1, head + 2)]  # the rival's commit only
    pointer = read_alias(registry, STAGING)
    assert target(pointer) == v2 and pointer.previous is None and pointer.set_by == "test:rival"
    assert [e.trigger for e in alias_history(registry, STAGING)] == ["test:rival"]

    # Decided on the state that includes the rival's move, the same change goes through.
    event = set_alias(registry, STAGING, v1, WHO, "ours", based_on=head + 1)
    assert event.previous_champion.version == v2.version and target(read_alias(registry, STAGING)) == v1


def test_a_move_based_on_an_older_commit_is_refused_naming_what_moved_it(registry, versions) -> None:
    v1, v2, v3 = versions
    base = registry.state().number
    set_alias(registry, CANDIDATE, v3, "test:bob", "elsewhere")  # another alias: no conflict
    set_alias(registry, STAGING, v1, WHO, "based on the start", based_on=base)
    moved_at = registry.state().number
    set_alias(registry, STAGING, v2, "test:bob", "bob's")
    before = snapshot(registry.storage)
    for attempt in (
        lambda: set_alias(registry, STAGING, v3, WHO, "stale", based_on=moved_at),
        lambda: clear_alias(registry, STAGING, WHO, "stale", based_on=moved_at),
        lambda: rollback_alias(registry, STAGING, WHO, based_on=moved_at),
    ):
        with pytest.raises(
            ConflictError, match=rf"staging changed to {v2} by test:bob at .*commit {moved_at + 1}"
        ):
            attempt()
    assert snapshot(registry.storage) == before


def test_a_retried_move_with_its_request_id_finds_its_commit_and_moves_nothing(registry, versions) -> None:
    v1, v2, _ = versions
    first = set_alias(registry, STAGING, v1, WHO, "once", request_id="req-1")
    set_alias(registry, STAGING, v2, "test:bob", "then bob's")
    before = snapshot(registry.storage)
    again = set_alias(registry, STAGING, v1, WHO, "once", request_id="req-1")
    assert again == first and snapshot(registry.storage) == before
    assert target(read_alias(registry, STAGING)) == v2


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
    name: str, registry: Registry, versions: list[VersionRef]
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
    by_alias, by_hand = (Registry(open_storage(f"{storage_uri}/{name}")) for name in ("alias", "hand"))
    v1, v2 = (publish_version(by_alias, tmp_path / "a", i) for i in (1, 2))
    publish_version(by_hand, tmp_path / "h", 1)

    event = set_alias(by_alias, CHAMPION, v1, WHO, "pin")
    manual = promote_version(by_hand, v1, "pin", WHO)
    assert event.kind == "manual-promotion" and event.alias is None
    assert without(event.to_dict(), "time") == without(manual.to_dict(), "time")
    alias_pointer, manual_pointer = (
        without(registry.champion().to_dict(), "promoted_at", "uri") for registry in (by_alias, by_hand)
    )
    assert alias_pointer == manual_pointer
    assert list_events(by_alias) == [event] == alias_history(by_alias, CHAMPION)
    assert by_alias.state().alias_events == {}  # nothing outside the main history
    assert by_alias.read_commit(by_alias.state().number).kind == "promote"

    set_alias(by_alias, CHAMPION, v2, WHO, "newer")
    rolled = rollback_alias(by_alias, CHAMPION, WHO)  # operations.rollback, as before aliases
    assert rolled.kind == "rollback" and target(by_alias.champion()) == v1
    kinds = [e.kind for e in alias_history(by_alias, CHAMPION)]
    assert kinds == ["rollback", "manual-promotion", "manual-promotion"]
    with pytest.raises(RegistryError, match="there is no previous champion to roll back to"):
        rollback_alias(by_alias, CHAMPION, WHO)  # v1 was the first champion, as `rollback` would say


def without(payload: dict[str, Any], *names: str) -> dict[str, Any]:
    return {key: value for key, value in payload.items() if key not in names}


def test_an_old_registry_without_aliases_lists_just_the_champion(registry, tmp_path: Path) -> None:
    """A registry written before aliases (and before the log): a pointer without `set_by`, events
    without `alias`. Its first reader migrates it into commit 1."""
    v1, v2 = (upload_version(registry, tmp_path / "folders", i) for i in (1, 2))
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
        "mnist/history/20260101T000000000000Z-00000001.json",
        without(gate.to_dict(), "alias") | {"time": "2026-01-01T00:00:00.000000Z"},
    )
    registry.storage.write_json(
        "mnist/history/20260101T000001000000Z-00000002.json",
        without(kept.to_dict(), "alias") | {"time": "2026-01-01T00:00:01.000000Z"},
    )

    assert list_aliases(registry) == {CHAMPION: pointer}
    migrated = registry.read_commit(1)
    assert migrated.kind == "migrate" and migrated.set_aside == [] and registry.read_commit(2) is None
    assert registry.versions() == [v1, v2]
    moves = alias_history(registry, CHAMPION)
    assert [e.verdict.reason for e in moves] == ["better"]  # the kept decision moved nothing
    assert [e.verdict.reason for e in list_events(registry)] == ["better", "not better"]
    assert read_alias(registry, STAGING) is None and alias_history(registry, STAGING) == []

    set_alias(registry, STAGING, v2, WHO, "aliases start here")
    assert read_alias(registry, CHAMPION) == pointer  # the champion is left as it was
    # Its view, rewritten by the migration, still says what the old pointer said, and by which commit.
    assert registry.storage.read_json(CHAMPION_KEY) == pointer.to_dict() | {LOG_VERSION: 1}
    assert list(list_aliases(registry)) == [CHAMPION, STAGING]
    assert [commit.kind for commit in map(registry.read_commit, (1, 2))] == ["migrate", "alias-set"]


def test_listing_aliases_costs_the_same_however_long_the_history(registry, versions) -> None:
    def listing_cost() -> dict[str, int]:
        counted = CountingStorage(registry.storage)
        assert len(list_aliases(Registry(counted))) == 4
        return dict(counted.calls)

    set_alias(registry, CHAMPION, versions[0], WHO, "serves")
    costs = []
    for round_ in range(3):  # a history that grows must not make the listing grow
        for alias, ref in zip((CANDIDATE, STAGING, SHADOW), versions, strict=True):
            set_alias(registry, alias, ref, WHO, f"round {round_}")
        costs.append(listing_cost())
    # The state view, then one probe for a newer commit: no listing, no read per alias.
    assert costs == [{"read_versioned": 2}] * 3


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

    def overview_cost() -> dict[str, int]:
        load_overview(registry, str)  # the history shard caught up with the newest events
        counted = CountingStorage(registry.storage)
        load_overview(Registry(counted), str)
        return dict(counted.calls)

    without_aliases = overview_cost()
    set_alias(registry, CANDIDATE, v2, WHO, "next in line")
    set_alias(registry, SHADOW, v2, WHO, "mirrors traffic")
    set_alias(registry, STAGING, v3, WHO, "smoke tests")
    assert overview_cost() == without_aliases  # the aliases come with the state: no read per alias

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
    versions_table = html.split('<table id="versions">')[1].split("</table>")[0]
    version_rows = versions_table.split("<tr ")[1:]  # the header is "<tr>"
    rows = {row.split('data-version="')[1].split('"')[0]: row for row in version_rows}
    assert rows[str(v1)].startswith('class="champion"')  # the champion keeps its row style and badge
    assert '<span class="badge">champion</span>' in rows[str(v1)]
    assert badges(rows[str(v2)]) == [CANDIDATE, SHADOW] and badges(rows[str(v3)]) == [STAGING]
    assert badges(rows[str(v1)]) == []


def badges(row: str) -> list[str]:
    return [piece.split("<")[0] for piece in row.split('<span class="badge alias">')[1:]]
