"""The registry as one commit log: every crash and every race leaves it true.

Each scenario is a change a DAG task or a person makes (publish, gate decision, approve, reject,
promote, rollback, alias set and clear). A fault-injecting store lets the first k writes land and
then dies, for every k; the change is then retried once, as Airflow or a person would, and the
registry must equal the crash-free result, with the invariants of the log holding.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mnist_pipeline.errors import ConflictError, RegistryError, StorageError
from mnist_pipeline.registry import integrity
from mnist_pipeline.registry import log as commit_log
from mnist_pipeline.registry.aliases import CANDIDATE, CHAMPION, clear_alias, read_alias, set_alias
from mnist_pipeline.registry.approval import ApprovalAnswer, approve_candidate, decline_candidate
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import Verdict
from mnist_pipeline.registry.history import list_events
from mnist_pipeline.registry.layout import CHAMPION_KEY, LOG_PREFIX, STATE_KEY
from mnist_pipeline.registry.log import commit_key
from mnist_pipeline.registry.operations import promote_version, rollback
from mnist_pipeline.registry.promotion import APPROVAL_PENDING, PromotionOutcome, _commit_decision
from mnist_pipeline.registry.records import (
    AliasMove,
    ChampionPointer,
    Cleared,
    Commit,
    HistoryEvent,
    IndexedEvent,
    VersionEntry,
    VersionSummary,
)
from mnist_pipeline.registry.state import AliasState, RegistryState
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.registry.views import flush_shards
from mnist_pipeline.storage import Storage, open_storage
from mnist_pipeline.web.app import load_overview
from tests.registry_helpers import publish_version
from tests.registry_promoter import promote_like_the_dag
from tests.storage_helpers import CountingStorage

WHO = "cli:alice"
RUN = "scheduled__2026-12-01T03:00:00+00:00"


class Crash(BaseException):
    """The process died here: nothing in it catches this, as nothing survives a SIGKILL."""


class CrashAfter(CountingStorage):
    """A store whose first `writes` writes land; the next one kills the caller before it lands."""

    def __init__(self, inner: Storage, writes: int) -> None:
        super().__init__(inner)
        self.left = writes

    def _write(self, name: str, *args: Any) -> Any:
        if self.left <= 0:
            raise Crash(f"killed before {name}{args[:1]}")
        self.left -= 1
        return self._count(name, *args)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._write("write_bytes", key, data)

    def write_if_generation(self, key: str, data: bytes, generation: str) -> bool:
        return self._write("write_if_generation", key, data, generation)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        return self._write("create_if_absent", key, data)

    def delete(self, key: str) -> None:
        self._write("delete", key)

    def copy(self, source: str, target: str) -> None:
        self._write("copy", source, target)


# What a registry says, without the times and numbers a retry may change.


def canonical(registry: Registry) -> dict[str, Any]:
    state = registry.state()
    return {
        "aliases": {
            alias: (s.pointer.model, s.pointer.version, s.pointer.verdict) if s.pointer else None
            for alias, s in sorted(state.aliases.items())
        },
        "versions": sorted(state.versions),
        "decisions": sorted(state.decisions),
        "answers": sorted(state.answers),
        "events": [
            (e.kind, e.model, e.version, e.promoted, e.alias, e.approval, e.run_id)
            for e in list_events(registry)
        ],
    }


def assert_invariants(registry: Registry) -> None:
    """The champion is the last promote or rollback in the log; every view rebuilds equal to the
    log; a run decided at most once; numbers have no gaps."""
    state = registry.state()
    commits = [registry.read_commit(n) for n in range(1, state.number + 1)]
    assert all(commit is not None for commit in commits), "the log has a gap"
    moves = [m.pointer for c in commits if c for m in c.moves if m.alias == CHAMPION]
    assert state.champion == (moves[-1] if moves else None)
    decisions = [(c.run_id, c.model) for c in commits if c and c.kind == "gate"]
    assert len(decisions) == len(set(decisions)), f"a run decided twice: {decisions}"
    report = integrity.verify(registry)
    assert report.ok, report.to_dict()


# The scenarios: set up crash-free, then the change under test (retried as it is).


@dataclass
class Scenario:
    setup: Callable[[Registry, Path], Any]
    change: Callable[[Registry, Path, Any], Any]


def _published(registry: Registry, folders: Path) -> list[VersionRef]:
    return [publish_version(registry, folders, i) for i in (1, 2)]


def _decide(registry: Registry, ref: VersionRef, pending: bool, based_on: int | None = None) -> HistoryEvent:
    """The gate's commit for `ref` as `promotion.promote` makes it after judging (promoted, or
    pending approval with the candidate pointed at it)."""
    state = registry.state()
    verdict = Verdict(promote=True, reason="beats the champion")
    event = HistoryEvent(
        kind="gate",
        model=ref.model,
        verdict=verdict,
        promoted=not pending,
        run_id=RUN,
        version=ref.version,
        metrics={"accuracy": 0.95},
        approval=APPROVAL_PENDING if pending else None,
        previous_champion=state.champion.summary() if state.champion else None,
    )
    pointer = ChampionPointer.for_version(
        VersionSummary(ref.model, ref.version, {"accuracy": 0.95}),
        registry.uri(ref),
        "2026-12-01T03:00:00Z",
        verdict.reason,
        run_id=RUN,
    )
    ctx = SimpleNamespace(
        registry=registry,
        run_id=RUN,
        challenger=SimpleNamespace(model=ref.model),
        options=SimpleNamespace(attempt=1),
    )
    move = (CANDIDATE if pending else CHAMPION, pointer)
    return _commit_decision(ctx, state.number if based_on is None else based_on, event, move)  # type: ignore[arg-type]


def _answer(approved: bool) -> ApprovalAnswer:
    return ApprovalAnswer(approved=approved, user="bob", at="2026-12-01T04:00:00Z")


SCENARIOS = {
    "publish": Scenario(lambda r, f: None, lambda r, f, _: publish_version(r, f, 7)),
    "gate decision": Scenario(_published, lambda r, f, refs: _decide(r, refs[0], pending=False)),
    "gate decision pending": Scenario(_published, lambda r, f, refs: _decide(r, refs[0], pending=True)),
    "approve": Scenario(
        lambda r, f: _decide(r, _published(r, f)[0], pending=True),
        lambda r, f, pending: approve_candidate(r, PromotionOutcome.of(pending), _answer(True), RUN),
    ),
    "reject": Scenario(
        lambda r, f: _decide(r, _published(r, f)[0], pending=True),
        lambda r, f, pending: decline_candidate(r, PromotionOutcome.of(pending), _answer(False), RUN),
    ),
    "promote": Scenario(
        _published, lambda r, f, refs: promote_version(r, refs[1], "pin", WHO, request_id="req-1")
    ),
    "rollback": Scenario(
        lambda r, f: [promote_version(r, ref, "pin", WHO) for ref in _published(r, f)],
        lambda r, f, _: rollback(r, WHO, request_id="req-1"),
    ),
    "alias set": Scenario(
        _published, lambda r, f, refs: set_alias(r, "staging", refs[0], WHO, "qa", request_id="r1")
    ),
    "alias clear": Scenario(
        lambda r, f: set_alias(r, "staging", _published(r, f)[0], WHO, "qa"),
        lambda r, f, _: clear_alias(r, "staging", WHO, "done", request_id="req-1"),
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_change_killed_after_any_write_and_retried_equals_the_crash_free_result(
    name: str, storage_uri: str, tmp_path: Path
) -> None:
    scenario = SCENARIOS[name]
    clean = Registry(open_storage(f"{storage_uri}/clean"))
    given = scenario.setup(clean, tmp_path / "clean")
    counting = CountingStorage(clean.storage)
    scenario.change(Registry(counting), tmp_path / "clean", given)
    expected = canonical(clean)
    writes = sum(
        counting.calls[n] for n in ("write_bytes", "write_if_generation", "create_if_absent", "delete")
    )
    assert writes >= 1
    for k in range(writes):
        registry = Registry(open_storage(f"{storage_uri}/crash-{k}"))
        folders = tmp_path / f"crash-{k}"
        given = scenario.setup(registry, folders)
        with pytest.raises(Crash):
            scenario.change(Registry(CrashAfter(registry.storage, k)), folders, given)
        scenario.change(registry, folders, given)  # Airflow's retry, or the person's second try
        assert canonical(registry) == expected, f"{name}: killed after write {k}"
        assert_invariants(registry)


def test_an_uncontended_commit_writes_at_most_three_objects(tmp_path: Path) -> None:
    registry = Registry(open_storage(str(tmp_path / "registry")))
    v1, _ = _published(registry, tmp_path)
    counting = CountingStorage(registry.storage)
    promote_version(Registry(counting), v1, "pin", WHO)
    writes = sum(counting.calls[n] for n in ("write_bytes", "write_if_generation", "create_if_absent"))
    assert counting.calls["create_if_absent"] == 1  # the commit: the one write that decides
    assert writes <= 3


# Kills at random moments of a DAG-like promote, in another process (tests/registry_promoter.py).


def test_promotes_sigkilled_at_random_moments_and_retried_leave_the_registry_true(tmp_path: Path) -> None:
    root, folders = str(tmp_path / "registry"), tmp_path / "folders"
    rng, kills, start = random.Random(27), 0, 1
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    promoters = subprocess.Popen(
        [sys.executable, "-m", "tests.registry_promoter", root, str(folders)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert promoters.stdin is not None and promoters.stdout is not None
    assert promoters.stdout.readline().strip() == b"ready"
    while kills < 50:
        promoters.stdin.write(f"{start}\n".encode())
        promoters.stdin.flush()
        started, pid = promoters.stdout.readline().split()
        assert started == b"started"
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(int(pid), signal.SIGKILL)
        done = [int(line) for line in iter(promoters.stdout.readline, b"exited\n")]
        kills += 1
        start = (done[-1] + 1) if done else start  # the retry: the run it was on, again
    promoters.stdin.close()
    assert promoters.wait(timeout=60) == 0
    registry = Registry(open_storage(root))
    for i in range(1, start + 1):
        promote_like_the_dag(registry, folders, i)  # every run finished by a last retry
    assert_invariants(registry)
    state = registry.state()
    assert sorted(state.decisions) == sorted(f"manual__{i}\ndnn" for i in range(1, start + 1))
    assert state.champion is not None and state.champion.run_id == f"manual__{start}"


# People acting while a run waits.


def test_a_manual_promote_between_gate_and_approval_makes_the_approval_fail_saying_what_moved(
    storage_uri: str, tmp_path: Path
) -> None:
    registry = Registry(open_storage(storage_uri))
    v1, v2 = _published(registry, tmp_path)
    pending = _decide(registry, v1, pending=True)
    promote_version(registry, v2, "hotfix", WHO)  # while the run waits for approval
    with pytest.raises(ConflictError) as refused:
        approve_candidate(registry, PromotionOutcome.of(pending), _answer(True), RUN)
    message = str(refused.value)
    assert f"champion changed to {v2} by {WHO}" in message
    assert "since this run's gate" in message and "re-run the gate" in message
    assert registry.champion_ref() == v2  # the person's promote stands
    assert read_alias(registry, CANDIDATE) is not None  # nothing was written
    assert_invariants(registry)


def test_a_gate_decision_based_on_a_champion_that_moved_is_refused(storage_uri: str, tmp_path: Path) -> None:
    registry = Registry(open_storage(storage_uri))
    v1, v2 = _published(registry, tmp_path)
    judged_at = registry.state().number
    rollback_target = promote_version(registry, v2, "pin", WHO)
    with pytest.raises(ConflictError, match="re-run the gate"):
        _decide(registry, v1, pending=False, based_on=judged_at)
    assert registry.champion_ref() == VersionRef(rollback_target.model, str(rollback_target.version))


def test_32_concurrent_writers_all_commit(gcs_bucket: str, tmp_path: Path) -> None:
    registry = Registry(open_storage(f"gs://{gcs_bucket}/registry"))
    (v1,) = [publish_version(registry, tmp_path, 1)]
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            set_alias(Registry(open_storage(f"gs://{gcs_bucket}/registry")), f"w{i}", v1, WHO, f"writer {i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    state = registry.state()
    assert state.number == 33 and {f"w{i}" for i in range(32)} <= set(state.aliases)
    assert_invariants(registry)


# Corrupt objects: every page and command still answers, repair restores the rest.


def _busy_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Registry, list[VersionRef]]:
    monkeypatch.setattr(commit_log, "CHECKPOINT_INTERVAL", 4)
    registry = Registry(open_storage(str(tmp_path / "registry")))
    refs = [publish_version(registry, tmp_path, i) for i in (1, 2, 3)]
    promote_version(registry, refs[0], "first", WHO)
    promote_version(registry, refs[1], "second", WHO)
    set_alias(registry, "staging", refs[2], WHO, "qa")
    return registry, refs


CORRUPTIBLE = {
    "commit": lambda refs: commit_key(6),
    "event": lambda refs: "mnist/index/history/" + Registry.__name__,  # replaced below by the shard's key
    "alias": lambda refs: "mnist/aliases/staging.json",
    "index": lambda refs: STATE_KEY,
    "champion": lambda refs: CHAMPION_KEY,
    "metadata": lambda refs: f"{refs[2].prefix}/metadata.json",
    "checkpoint": lambda refs: f"{LOG_PREFIX}checkpoints/{4:020d}.json",
}


@pytest.mark.parametrize("kind", list(CORRUPTIBLE))
def test_one_corrupt_object_leaves_pages_and_commands_answering_and_repair_restores_the_rest(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnist_pipeline import cli

    registry, refs = _busy_registry(tmp_path, monkeypatch)
    before = canonical(registry)
    key = CORRUPTIBLE[kind](refs)
    if kind == "event":
        flush_shards(registry.storage, registry.state())
        key = registry.storage.list_keys("mnist/index/history/")[0]
    assert registry.storage.exists(key), key
    registry.storage.write_bytes(key, b"{ not json")
    monkeypatch.setenv("MNIST_REGISTRY_URI", registry.storage.root_uri)
    fresh = Registry(open_storage(registry.storage.root_uri))
    overview = load_overview(fresh, lambda ref: str(ref))
    assert overview["champion"]["version"] == refs[1].version
    for argv in (["registry", "list"], ["registry", "history"], ["registry", "alias", "list"]):
        assert cli.main(argv) == 0, argv
    capsys.readouterr()
    if kind in ("commit", "metadata"):  # truths that no view can restore: named, then set aside
        assert cli.main(["registry", "verify"]) == 1
        assert key in capsys.readouterr().out
    assert cli.main(["registry", "repair"]) == 0
    capsys.readouterr()
    assert cli.main(["registry", "verify"]) == 0, capsys.readouterr().out
    if kind == "commit":  # what the unreadable commit did (point staging) is lost; the rest is not
        del before["aliases"]["staging"]
    assert canonical(Registry(open_storage(registry.storage.root_uri)))["aliases"] == before["aliases"]
    assert any(k.endswith(key) for k in registry.storage.list_keys("mnist/quarantine/")) or kind in (
        "index",
        "champion",
        "alias",
        "event",
        "checkpoint",
    )


def test_an_edited_view_is_not_trusted_and_verify_names_the_difference(tmp_path: Path) -> None:
    registry = Registry(open_storage(str(tmp_path / "registry")))
    v1, v2 = _published(registry, tmp_path)
    promote_version(registry, v1, "pin", WHO)
    forged = json.loads(registry.storage.read_bytes(CHAMPION_KEY))
    registry.storage.write_bytes(CHAMPION_KEY, json.dumps(forged | {"version": v2.version}).encode())
    assert registry.champion_ref() == v1  # readers go by the log
    report = integrity.verify(registry)
    assert not report.ok and any(CHAMPION_KEY in line for line in report.differences)
    integrity.repair(registry)
    assert json.loads(registry.storage.read_bytes(CHAMPION_KEY))["version"] == v1.version
    assert integrity.verify(registry).ok


def test_a_view_behind_the_log_is_finished_by_the_next_reader(tmp_path: Path) -> None:
    registry = Registry(open_storage(str(tmp_path / "registry")))
    v1, v2 = _published(registry, tmp_path)
    promote_version(registry, v1, "pin", WHO)
    with pytest.raises(Crash):  # the commit lands, the views do not
        promote_version(Registry(CrashAfter(registry.storage, 1)), v2, "next", WHO)
    assert json.loads(registry.storage.read_bytes(CHAMPION_KEY))["version"] == v1.version  # stale view
    assert registry.champion_ref() == v2  # the reader folds the tail ...
    assert (
        json.loads(registry.storage.read_bytes(CHAMPION_KEY))["version"] == v2.version
    )  # ... and finishes it


# Reads stay flat, and an existing registry is migrated once.


def test_the_overview_reads_at_most_ten_objects_with_1000_versions_and_1000_events(tmp_path: Path) -> None:
    registry = Registry(open_storage(str(tmp_path / "registry")))
    # 1000 gate decisions appended to the log alone (through the registry each would rewrite every
    # view: a minute of seeding), then the versions in one publish, whose commit finds the views
    # missing and writes them from the log; a first reader completes the history's month. Then no
    # view disagrees with the log, and the reads counted are those of a registry kept current.
    state = RegistryState()
    for i in range(1000):
        event = HistoryEvent(
            kind="gate",
            model="dnn",
            verdict=Verdict(promote=False, reason="kept"),
            promoted=False,
            run_id=f"r{i}",
        )
        _, state = commit_log.append(
            registry.storage,
            state,
            lambda s, e=event: Commit(0, "gate", "", "test", "kept", run_id=e.run_id, model="dnn", event=e),
        )
    entries = [VersionEntry("dnn", f"20260101T{i:06d}Z-{i:08x}", 0.9, 0.1) for i in range(1000)]
    registry.commit(lambda s: Commit(0, "publish", "", "test", "seed", versions=entries))
    load_overview(registry, str)
    report = integrity.verify(registry)
    assert report.commits == 1001 and report.differences == []
    counting = CountingStorage(registry.storage)
    overview = load_overview(Registry(counting), lambda ref: str(ref))
    assert len(overview["versions"]) == 1000 and overview["history"]
    assert counting.total <= 10, dict(counting.calls)


def test_a_registry_from_before_the_log_is_migrated_once_without_losing_history(
    storage_uri: str, tmp_path: Path
) -> None:
    storage = open_storage(storage_uri)
    registry = Registry(storage)
    ref = VersionRef("dnn", "20260101T000001Z-00000001")
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "model.keras").write_bytes(b"weights")
    registry.files.upload(ref, folder, {"metrics": {"accuracy": 0.97, "loss": 0.1}})
    pointer = ChampionPointer.for_version(
        VersionSummary(ref.model, ref.version, {"accuracy": 0.97}),
        registry.uri(ref),
        "2026-01-01T00:00:00Z",
        "beats nothing",
        run_id="old",
    )
    storage.write_json(CHAMPION_KEY, pointer.to_dict())
    storage.write_json("mnist/aliases/staging.json", pointer.to_dict() | {"verdict": "qa"})
    for i in range(3):
        event = HistoryEvent(
            kind="gate",
            model="dnn",
            verdict=Verdict(promote=i == 2, reason=f"decision {i}"),
            promoted=i == 2,
            run_id=f"old{i}",
            version=ref.version,
            time=f"2026-01-0{i + 1}T00:00:00.000000Z",
        )
        storage.write_json(f"mnist/history/2026010{i + 1}T000000000000Z-0000000{i}.json", event.to_dict())
    storage.write_bytes("mnist/history/20260104T000000000000Z-broken.json", b"{")
    state = registry.state()
    assert state.number == 1 and state.champion == pointer
    assert read_alias(registry, "staging") is not None
    assert [e.verdict.reason for e in list_events(registry)] == ["decision 0", "decision 1", "decision 2"]
    migration = registry.read_commit(1)
    assert migration is not None and any("broken" in why for why in migration.set_aside)
    assert registry.state().number == 1  # once
    assert state.versions[(ref.model, ref.version)].promoted_by is not None
    promote_version(registry, ref, "again", WHO)
    assert registry.state().number == 2
    assert_invariants(registry)


def test_a_commit_refused_for_a_conflict_writes_nothing(tmp_path: Path) -> None:
    registry = Registry(open_storage(str(tmp_path / "registry")))
    v1, v2 = _published(registry, tmp_path)
    read_at = registry.state().number
    set_alias(registry, "staging", v1, "cli:bob", "qa")
    files = sorted(registry.storage.list_keys(""))
    with pytest.raises(ConflictError, match=r"staging changed to .* by cli:bob"):
        set_alias(registry, "staging", v2, WHO, "mine", based_on=read_at)
    assert sorted(registry.storage.list_keys("")) == files
    with pytest.raises(RegistryError):
        clear_alias(registry, CHAMPION, WHO, "no")


# The log's own rules: how a commit and a state are stored, and what becomes of unreadable ones.

T0 = "2026-01-01T00:00:00.000000Z"


def _pointer(version: str = "v1") -> ChampionPointer:
    return ChampionPointer.for_version(VersionSummary("dnn", version, {"accuracy": 0.9}), "uri", T0, "why")


def _gate(number: int, run_id: str = "r", **fields: Any) -> Commit:
    event = HistoryEvent("gate", "dnn", Verdict(False, "kept"), False, run_id=run_id, time=T0)
    return Commit(number, "gate", T0, "test", "kept", run_id=run_id, model="dnn", event=event, **fields)


def _appended(storage: Storage, count: int) -> list[RegistryState]:
    """`count` gate commits appended to the log alone; the state after each (index 0: empty)."""
    states = [RegistryState()]
    for i in range(count):
        states.append(commit_log.append(storage, states[-1], lambda s, i=i: _gate(0, f"r{i}"))[1])
    return states


def test_a_commit_and_a_state_are_stored_as_canonical_json() -> None:
    commit = Commit(1, "publish", T0, "test", "seed", versions=[VersionEntry("dnn", "v1", 0.9, 0.1)])
    data = commit_log.encode_commit(commit)
    assert (
        data == json.dumps({"format": 1, **commit.to_dict()}, sort_keys=True, separators=(",", ":")).encode()
    )
    assert commit_log.decode_commit(data, 1) == commit
    state = RegistryState()
    state.apply(commit)
    view = state.to_json()
    assert view == json.dumps(json.loads(view), sort_keys=True, separators=(",", ":")).encode()
    assert json.loads(view)["format"] == 2 and b'"versions":[{' in view


def test_a_commit_that_is_not_what_its_key_says_is_unreadable_naming_the_key() -> None:
    key = commit_key(3)
    cases = {
        b"{": "not valid JSON (",
        b'{"number": 3}': f"{key} lacks the field 'kind'",
        commit_log.encode_commit(_gate(7)): "holds commit number 7",
    }
    for data, why in cases.items():
        with pytest.raises(commit_log.UnreadableObject) as unreadable:
            commit_log.decode_commit(data, 3)
        assert unreadable.value.key == key and unreadable.value.why.startswith(why)
        assert str(unreadable.value) == f"{key}: {unreadable.value.why}"


def test_only_a_log_key_of_twenty_digits_names_a_commit() -> None:
    assert commit_log.commit_number(commit_key(12)) == 12
    assert commit_log.commit_number(commit_log.checkpoint_key(12), commit_log.CHECKPOINTS_PREFIX) == 12
    for key in (
        "x" * len(LOG_PREFIX) + "00000000000000000012.json",  # another folder, as long
        f"{LOG_PREFIX}12.json",
        f"{LOG_PREFIX}{'a' * 20}.json",
        f"{LOG_PREFIX}00000000000000000012.txt",
    ):
        assert commit_log.commit_number(key) is None, key


def test_an_unreadable_or_missing_commit_is_folded_as_nothing_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = open_storage(str(tmp_path / "registry"))
    full = _appended(storage, 4)[-1]
    storage.write_bytes(commit_key(2), b"{")
    why = f"{commit_key(2)}: not valid JSON"
    caplog.clear()  # only the records of the read below
    with caplog.at_level("WARNING", logger="mnist_pipeline.registry.log"):
        advanced, applied = commit_log.advance(storage, RegistryState())
    assert advanced.number == 4 and [commit.number for commit in applied] == [1, 3, 4]
    assert len(advanced.unreadable) == 1 and advanced.unreadable[0].startswith(why)
    assert advanced.decisions == {k: v for k, v in full.decisions.items() if v != 2}
    assert caplog.messages == [f"registry log: {advanced.unreadable[0]}; folding it as nothing"]
    storage.delete(commit_key(3))
    replayed = commit_log.replay(storage)
    assert replayed.number == 4 and replayed.unreadable[1:] == [f"{commit_key(3)}: missing from the log"]
    assert replayed.unreadable[0].startswith(why) and set(replayed.decisions.values()) == {1, 4}


def test_a_commit_gone_while_the_log_is_read_is_named_and_a_replay_can_start_from_a_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = RegistryState()
    with caplog.at_level("WARNING", logger="mnist_pipeline.registry.log"):
        problem = commit_log.fold_commit(state, 1, None)
    why = f"{commit_key(1)}: vanished while the log was read"
    assert isinstance(problem, commit_log.UnreadableObject) and str(problem) == why
    assert (state.number, state.unreadable) == (1, [why])
    assert caplog.messages == [f"registry log: {why}; folding it as nothing"]
    storage = open_storage(str(tmp_path / "registry"))
    states = _appended(storage, 3)
    storage.delete(commit_key(1))
    storage.delete(commit_key(2))  # a replay from the state of commit 2 never reads them
    assert commit_log.replay(storage, states[2]).to_json() == states[3].to_json()


def test_a_replay_starts_from_the_newest_readable_checkpoint_that_holds_its_own_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = open_storage(str(tmp_path / "registry"))
    states = _appended(storage, 6)
    for number, data in {
        2: states[2].to_json(),
        4: states[4].to_json(),
        5: states[4].to_json(),
        6: b"{",
    }.items():
        storage.write_bytes(commit_log.checkpoint_key(number), data)
    for number in range(1, 5):  # a replay from checkpoint 4 reads only commits 5 and 6
        storage.delete(commit_key(number))
    caplog.clear()  # only the records of the replay below
    with caplog.at_level("WARNING", logger="mnist_pipeline.registry.log"):
        replayed = commit_log.replay(storage)
    assert replayed.to_json() == states[6].to_json() and replayed.unreadable == []
    six, five = commit_log.checkpoint_key(6), commit_log.checkpoint_key(5)
    assert len(caplog.messages) == 2
    assert caplog.messages[0].startswith(f"registry checkpoint {six} is unreadable ({six} is not a readable")
    assert caplog.messages[0].endswith("): using an older one")
    assert caplog.messages[1] == f"registry checkpoint {five} holds the state of commit 4: using an older one"


def test_a_writer_that_always_loses_backs_off_doubling_to_half_a_second_then_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Losing(CountingStorage):
        def create_if_absent(self, key: str, data: bytes) -> bool:
            return False

    slept: list[float] = []
    monkeypatch.setattr(commit_log, "time", SimpleNamespace(sleep=slept.append))
    random.seed(5)
    storage = Losing(open_storage(str(tmp_path / "registry")))
    with pytest.raises(StorageError) as refused:
        commit_log.append(storage, RegistryState(), lambda s: _gate(0))
    assert str(refused.value) == (
        f"{storage.uri(LOG_PREFIX)}: lost the race for the next commit"
        f" {commit_log.COMMIT_ATTEMPTS} times; gave up"
    )
    assert len(slept) == commit_log.COMMIT_ATTEMPTS and slept[0] > 0
    assert all(0 <= pause <= min(0.5, 0.005 * 2**attempt) for attempt, pause in enumerate(slept))
    assert max(slept) > 0.4


def test_commit_times_follow_commit_numbers_even_after_a_clock_ahead(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "registry"))
    ahead = RegistryState(number=0, last_time="2999-01-01T00:00:00.000000Z")
    commit, state = commit_log.append(storage, ahead, lambda s: _gate(0))
    assert commit is not None and commit.time == commit.event.time == "2999-01-01T00:00:00.000001Z"
    assert state.last_time == commit.time


def _rich_state() -> RegistryState:
    cleared = Cleared("2026-01-02T00:00:00.000000Z", "retired", "cli:bob", _pointer("v0"))
    event = HistoryEvent("gate", "dnn", Verdict(True, "ok"), True, run_id="r", version="v1", time=T0)
    return RegistryState(
        number=5,
        last_time="2026-01-03T00:00:00.000000Z",
        aliases={"champion": AliasState(_pointer(), None, 2), "candidate": AliasState(None, cleared, 4)},
        versions={("dnn", "v1"): VersionEntry("dnn", "v1", 0.9, 0.1, T0, approval="approved")},
        decisions={"r\ndnn": 3},
        answers={"r\ndnn": 4},
        months={"202601": ["20260101T000000000000Z-000000000003-0"], "202512": ["20251231T0-000000000001-0"]},
        alias_events={"candidate": ["20260101T000000000000Z-000000000003-0"]},
        requests={"req-1": 5},
        recent=[IndexedEvent("20260101T000000000000Z-000000000003-0", event)],
        unreadable=[f"{commit_key(1)}: not valid JSON"],
    )


def test_every_field_of_a_state_survives_its_view_and_a_copy() -> None:
    state = _rich_state()
    assert RegistryState.from_json(state.to_json(), "the view") == state
    assert state.copy() == state and state.copy() is not state
    assert state.event_names() == ["20251231T0-000000000001-0", "20260101T000000000000Z-000000000003-0"]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"versions": [{"model": 1}]}, "(the view: versions: model must be a string, got 1)"),
        ({"recent": [{}]}, "(the view: recent lacks the field 'name')"),
        ({"aliases": {"x": {"moved_by": "1"}}}, "(the view: aliases.x: expected an alias state)"),
        (
            {"aliases": {"x": {"moved_by": 1, "pointer": {"model": 2}}}},
            "(the view: aliases.x: pointer: model",
        ),
        (
            {"aliases": {"x": {"moved_by": 1, "cleared": {"reason": "r"}}}},
            "(the view: aliases.x: cleared lacks the field 'cleared_at')",
        ),
        ({"answers": {"a": -1}}, "(-1 is not a commit number)"),
        ({"requests": {"a": True}}, "(True is not a commit number)"),
        ({"decisions": {"a": "3"}}, "('3' is not a commit number)"),
        ({"number": None}, "(None is not a commit number)"),
        ({"months": None}, "("),
    ],
)
def test_a_malformed_state_view_is_refused_naming_what_is_wrong(change: dict[str, Any], why: str) -> None:
    payload = json.loads(_rich_state().to_json()) | change
    with pytest.raises(RegistryError) as refused:
        RegistryState.from_json(json.dumps(payload).encode(), "the view")
    assert str(refused.value).startswith(f"the view is not a readable registry state {why}")


def test_a_view_of_another_format_or_no_state_at_all_is_refused() -> None:
    other_format = (
        r"^the view is not a readable registry state \(the view is not a registry state of format 2\)$"
    )
    for data in (b"[]", json.dumps(json.loads(_rich_state().to_json()) | {"format": 1}).encode()):
        with pytest.raises(RegistryError, match=other_format):
            RegistryState.from_json(data, "the view")
    with pytest.raises(RegistryError, match=r"^the view is not a readable registry state \(Expecting"):
        RegistryState.from_json(b"{", "the view")
    assert RegistryState.from_json(_rich_state().to_json(), "v").answers == {"r\ndnn": 4}  # 0 is a number too
    assert (
        RegistryState.from_json(json.dumps(json.loads(RegistryState().to_json())).encode(), "v").number == 0
    )


def test_folding_keeps_the_first_entry_of_a_version_and_counts_only_gates_as_decisions() -> None:
    state = RegistryState()
    first, again = VersionEntry("dnn", "v1", 0.9, 0.1), VersionEntry("dnn", "v1", 0.5, 0.5)
    state.apply(Commit(1, "publish", T0, "test", "seed", versions=[first]))
    state.apply(Commit(2, "publish", T0, "test", "again", versions=[again]))
    assert state.versions[("dnn", "v1")] is first
    state.apply(Commit(3, "promote", T0, "test", "by hand", run_id="r", model="dnn"))
    state.apply(Commit(4, "approval", T0, "test", "yes", run_id="q", model="dnn"))
    assert state.decisions == {} and state.answer_of("q", "dnn") == 4
    with pytest.raises(RegistryError, match=r"^commit 7 cannot follow commit 4$"):
        state.apply(_gate(7))


def test_a_decision_moving_the_candidate_is_in_the_candidates_history_under_its_own_name() -> None:
    state = RegistryState()
    state.apply(_gate(1, moves=[AliasMove(CANDIDATE, _pointer())]))
    assert state.alias_events == {CANDIDATE: ["20260101T000000000000Z-000000000001-0"]}
    assert state.decision_of("r", "dnn") == 1


def test_the_state_keeps_the_newest_events_and_where_each_versions_approval_stands() -> None:
    state = RegistryState()
    for number in range(1, 67):
        state.apply(_gate(number, f"r{number}"))
    assert len(state.recent) == 64 and state.recent[-1].name.endswith("-000000000066-0")
    assert state.recent[0].name.endswith("-000000000003-0")
    state.apply(Commit(67, "publish", T0, "test", "seed", versions=[VersionEntry("dnn", "v1", 0.9, 0.1)]))

    def event(number: int, approval: str | None, alias: str | None = None, version: str = "v1") -> Commit:
        happened = HistoryEvent(
            "gate",
            "dnn",
            Verdict(True, "ok"),
            False,
            version=version,
            time=T0,
            approval=approval,
            alias=alias,
        )
        return Commit(number, "approval", T0, "test", "ok", event=happened)

    state.apply(event(68, "pending"))
    state.apply(event(69, None))  # an event without an answer leaves it
    state.apply(event(70, "approved", alias="staging"))  # another alias's event too
    state.apply(event(71, "rejected", version="v2"))  # and a version never published
    assert state.versions[("dnn", "v1")].approval == "pending"
    state.apply(event(72, "approved"))
    assert state.versions[("dnn", "v1")].approval == "approved" and ("dnn", "v2") not in state.versions


def test_event_names_and_commit_numbers_are_strict() -> None:
    from mnist_pipeline.registry.state import _integer, compact_time, parse_event_name

    assert compact_time("2026-01-31T12:00:00.123456Z") == "20260131T120000123456Z"
    assert parse_event_name("20260131T120000123456Z-000000000042-3") == (42, 3)
    for name in ("a-1", "t-x-1", "t-1-x", "t-1-2-3"):
        with pytest.raises(
            RegistryError, match=r"names no history event \(expected <time>-<commit>-<index>\)$"
        ):
            parse_event_name(name)
    assert _integer(0) == 0
    for value in (-1, True, 1.0):
        with pytest.raises(ValueError, match=rf"^{value!r} is not a commit number$"):
            _integer(value)
