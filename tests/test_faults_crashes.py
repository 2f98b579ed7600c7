"""Fault injection, crashes and outages: a worker killed mid-training, GCS going away during a
promotion, a promotion killed between upload and its commits, two promotions racing from separate
processes. Each time the run completes (or a retry does), the champion is consistent, every view
agrees with the registry's commit log, and no object that existed before is lost (a commit above
all: the log is never rewritten).

Processes are really killed (SIGKILL) and the GCS server really stops: fake-gcs-server with a
filesystem backend, started again on the same port with the same data.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.history import list_events
from mnist_pipeline.registry.integrity import verify
from mnist_pipeline.registry.layout import CHAMPION_KEY, INDEX_PREFIX
from mnist_pipeline.registry.log import commit_key
from mnist_pipeline.registry.promotion import promote
from mnist_pipeline.registry.publication import version_name
from mnist_pipeline.registry.records import ChampionPointer
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.runs import run_key
from mnist_pipeline.steps import ingest
from mnist_pipeline.storage import open_storage, split_gs_uri
from mnist_pipeline.training.record import TrainingRecord
from tests.fault_fixtures import RestartableGcsServer, new_bucket_uri, storage_bytes
from tests.fault_report import FaultLedger

pytestmark = pytest.mark.slow

TRAIN_IMAGES, EPOCHS = 3000, 8


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mnist_pipeline.cli", *args]


def cli_env(**values: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **values}


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 180, process: Any = None) -> Any:
    """Poll `condition` until it returns something truthy; fail if `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process exited ({process.returncode}) before {what}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def assert_consistent_champion(registry_uri: str) -> ChampionPointer:
    """The champion names a published version, every file of it matches its recorded sha256, and
    every view (state, champion pointer, history shards) agrees with the log."""
    registry = Registry(open_storage(registry_uri))
    champion = registry.champion()
    assert champion is not None
    ref = VersionRef(champion.model, champion.version)
    assert ref in registry.versions()
    for name in registry.metadata(ref)["files_sha256"]:
        registry.verified_file(ref, name)
    report = verify(registry)
    assert report.ok, report.to_dict()
    return champion


def may_change(before: dict[str, bytes]) -> set[str]:
    """What a promotion rewrites: the views derived from the log (the champion pointer, the state
    and the history shards). Commits are only ever added."""
    return {CHAMPION_KEY} | {key for key in before if key.startswith(INDEX_PREFIX)}


def version_of(fault_runs: dict[str, Any], run_id: str) -> VersionRef:
    training = open_storage(fault_runs["artifacts"]).read_json(f"{run_key(run_id)}/dnn/training.json")
    return VersionRef("dnn", version_name(TrainingRecord.from_dict(training, "training.json")))


def epoch_accuracies(log: str) -> dict[int, float]:
    return {int(m[1]): float(m[2]) for m in re.finditer(r"epoch (\d+)/\d+ loss=\S+ accuracy=(\S+)", log)}


def test_a_worker_killed_mid_training_resumes_from_the_stored_checkpoint(
    fault_gcs: RestartableGcsServer, mnist_npz: Path, tmp_path: Path, fault_ledger: FaultLedger
) -> None:
    artifacts_uri = new_bucket_uri("artifacts")
    settings = PipelineSettings(
        source=str(mnist_npz), artifacts_uri=artifacts_uri, max_train_images=TRAIN_IMAGES
    )
    ingest(settings, "run-killed")
    artifacts, prefix = open_storage(artifacts_uri), f"{run_key('run-killed')}/dnn"
    snapshot_before = storage_bytes(f"{artifacts_uri}/datasets")
    command = cli("--run-id", "run-killed", "--max-train-images", str(TRAIN_IMAGES), "train", "dnn")
    command += ["--epochs", str(EPOCHS)]
    env = cli_env(MNIST_ARTIFACTS_URI=artifacts_uri, MNIST_SOURCE=str(mnist_npz))
    with open(tmp_path / "killed.log", "w") as log:
        worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        state = wait_for(
            lambda: _checkpoint_epoch(artifacts, prefix) >= 2, "a checkpoint of epoch 2", process=worker
        )
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert state and worker.returncode == -signal.SIGKILL
    stored_epoch = _checkpoint_epoch(artifacts, prefix)
    killed_log = (tmp_path / "killed.log").read_text()
    assert 2 <= stored_epoch < EPOCHS and f"epoch {EPOCHS}/{EPOCHS}" not in killed_log
    assert not artifacts.exists(f"{prefix}/training.json")

    retry = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert retry.returncode == 0, retry.stderr[-3000:]
    training = artifacts.read_json(f"{prefix}/training.json")
    assert training["resumed_from_epoch"] == stored_epoch and training["epochs_run"] == EPOCHS
    assert training["epochs_after_resume"] == EPOCHS - stored_epoch
    # The learning curves cover the epochs before the kill too.
    assert len(training["history"]["loss"]) == len(training["history"]["val_accuracy"]) == EPOCHS
    assert training["replicas"] >= 1 and training["devices"]  # trained under MirroredStrategy
    assert f"after epoch {stored_epoch}" in retry.stderr
    # The weights came back: the first resumed epoch trains far better than a fresh first epoch.
    resumed_accuracy = epoch_accuracies(retry.stderr)[stored_epoch + 1]
    assert resumed_accuracy > epoch_accuracies(killed_log)[1] + 0.1
    assert artifacts.list_keys(f"{prefix}/checkpoint/") == []  # deleted once the model was stored
    fault_ledger.compared(snapshot_before, storage_bytes(f"{artifacts_uri}/datasets"), may_change=set())
    fault_ledger.survived("worker SIGKILLed mid-training")


def _checkpoint_epoch(artifacts: Any, prefix: str) -> int:
    key = f"{prefix}/checkpoint/state.json"
    return artifacts.read_json(key)["epoch"] if artifacts.exists(key) else 0


class Outage(threading.Thread):
    """Stops the GCS server the moment `trigger` appears on its disk, starts it `seconds` later."""

    def __init__(self, server: RestartableGcsServer, trigger: Path, seconds: float) -> None:
        super().__init__(daemon=True)
        self.server, self.trigger, self.seconds = server, trigger, seconds
        self.down_at = self.up_at = 0.0

    def run(self) -> None:
        deadline = time.monotonic() + 180
        while not self.trigger.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        self.server.kill()
        self.down_at = time.monotonic()
        time.sleep(self.seconds)
        self.server.start()
        self.up_at = time.monotonic()


def test_a_restarted_server_forgets_an_upload_it_was_killed_in(fault_gcs: RestartableGcsServer) -> None:
    """What an outage test relies on: killed mid-upload, the server leaves a temporary file that
    would make it answer 404 for the whole bucket; restarted, it lists the bucket without it."""
    uri = new_bucket_uri()
    storage = open_storage(uri)
    storage.write_bytes("_log/00000000000000000001.json", b"{}")
    bucket, root = split_gs_uri(uri)
    fault_gcs.kill()
    leftover = fault_gcs.object_path(bucket, f"{root}/_log/.00000000000000000002.json2974174939")
    leftover.write_bytes(b"")
    fault_gcs.start()
    assert not leftover.exists()
    assert storage.list_keys("_log/") == ["_log/00000000000000000001.json"]


@pytest.mark.parametrize("moment", ["version upload", "publish commit", "pointer move"])
def test_a_storage_outage_during_promotion_is_retried_until_the_run_completes(
    moment: str,
    fault_gcs: RestartableGcsServer,
    registry_with_champion: str,
    fault_runs: dict[str, Any],
    fault_ledger: FaultLedger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = storage_bytes(registry_with_champion)
    head = Registry(open_storage(registry_with_champion)).state().number
    bucket, root = split_gs_uri(registry_with_champion)
    ref = version_of(fault_runs, "run-dnn-a")
    # The server goes down as soon as the trigger lands: while the version's files upload; once they
    # are all there (the publish commit, next, meets the outage); once the version is published
    # (the gate's commit, which moves the champion, meets it).
    trigger = {
        "version upload": f"{ref.prefix}/model.keras",
        "publish commit": f"{ref.prefix}/metadata.json",
        "pointer move": commit_key(head + 1),
    }[moment]
    outage = Outage(fault_gcs, fault_gcs.object_path(bucket, f"{root}/{trigger}"), seconds=3)
    outage.start()
    settings = PipelineSettings(
        artifacts_uri=fault_runs["artifacts"], registry_uri=registry_with_champion, storage_retry_deadline=40
    )
    outcome = promote([fault_runs["evaluations"]["run-dnn-a"]], settings, "run-dnn-a")
    finished_at = time.monotonic()
    outage.join(timeout=30)
    assert outage.down_at and outage.up_at and finished_at > outage.up_at  # it ran through the outage
    assert outcome.promoted and outcome.version == ref.version and not outcome.noop
    champion = assert_consistent_champion(registry_with_champion)
    assert champion.version == ref.version and champion.previous.run_id == "run-champion"
    registry = Registry(open_storage(registry_with_champion))
    assert [e.run_id for e in list_events(registry)][-1] == "run-dnn-a"
    # Exactly two commits, each written once through the outage: the publish, then the decision.
    assert [registry.read_commit(n).kind for n in (head + 1, head + 2)] == ["publish", "gate"]
    assert registry.state().number == head + 2 and registry.read_commit(head + 2).based_on == head
    fault_ledger.compared(before, storage_bytes(registry_with_champion), may_change=may_change(before))
    fault_ledger.survived(f"GCS outage during the {moment}")


def restart_after_session_start(
    server: RestartableGcsServer, times: int, monkeypatch: pytest.MonkeyPatch
) -> list[int]:
    """Restart `server` right after each of the next `times` resumable upload sessions starts, so
    the server forgets the session before its bytes arrive, as a restart mid-upload does."""
    from google.cloud.storage import Blob

    start_session = Blob._initiate_resumable_upload
    restarts: list[int] = []

    def start_then_restart(blob: Blob, *args: Any, **kwargs: Any) -> Any:
        session = start_session(blob, *args, **kwargs)
        if len(restarts) < times:
            server.kill()
            server.start()
            restarts.append(1)
        return session

    monkeypatch.setattr(Blob, "_initiate_resumable_upload", start_then_restart)
    return restarts


@pytest.mark.parametrize(("restarts", "stored"), [(1, True), (3, False)])
def test_a_large_upload_whose_session_a_server_restart_forgot_starts_over(
    restarts: int, stored: bool, fault_gcs: RestartableGcsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_pipeline.errors import StorageError

    storage = open_storage(new_bucket_uri("large"))
    data = os.urandom(9 * 1024 * 1024)  # over 8 MiB: google-cloud-storage uploads it resumably
    done = restart_after_session_start(fault_gcs, restarts, monkeypatch)
    if stored:
        storage.write_bytes("model.keras", data)
        assert storage.read_bytes("model.keras") == data
    else:  # a server that forgets every session: a clear error, not "bucket missing", nothing stored
        with pytest.raises(StorageError, match="upload session was lost 3 times"):
            storage.write_bytes("model.keras", data)
        assert not storage.exists("model.keras")
    assert len(done) == restarts


def test_a_promotion_killed_after_upload_never_exposes_its_half_version(
    fault_gcs: RestartableGcsServer,
    registry_with_champion: str,
    fault_runs: dict[str, Any],
    fault_ledger: FaultLedger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = storage_bytes(registry_with_champion)
    registry = Registry(open_storage(registry_with_champion))
    champion_before, head = registry.champion(), registry.state().number
    bucket, root = split_gs_uri(registry_with_champion)
    half = version_of(fault_runs, "run-dnn-a")
    env = cli_env(MNIST_ARTIFACTS_URI=fault_runs["artifacts"], MNIST_REGISTRY_URI=registry_with_champion)
    worker = subprocess.Popen(
        cli("--run-id", "run-dnn-a", "promote"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    model_file = fault_gcs.object_path(bucket, f"{root}/{half.prefix}/model.keras")
    wait_for(model_file.exists, "the version's upload to begin", process=worker)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert registry.storage.list_keys(half.prefix) and not registry.is_published(half)
    # Readers see the registry as it was: no commit, same champion, same versions, no history event.
    assert registry.state().number == head and registry.read_commit(head + 1) is None
    assert registry.champion() == champion_before and champion_before.run_id == "run-champion"
    assert half not in registry.versions() and len(list_events(registry)) == 1

    # The next run publishes another version and clears the dead upload away.
    settings = PipelineSettings(
        artifacts_uri=fault_runs["artifacts"], registry_uri=registry_with_champion, stale_upload_seconds=1e-9
    )
    assert promote([fault_runs["evaluations"]["run-dnn-b"]], settings, "run-dnn-b").promoted
    assert registry.storage.list_keys(half.prefix) == []
    assert assert_consistent_champion(registry_with_champion).run_id == "run-dnn-b"
    fault_ledger.compared(before, storage_bytes(registry_with_champion), may_change=may_change(before))
    fault_ledger.survived("promotion SIGKILLed between upload and pointer move")


def test_two_promotions_from_separate_processes_leave_one_champion_and_both_verdicts(
    fault_gcs: RestartableGcsServer,
    registry_with_champion: str,
    fault_runs: dict[str, Any],
    fault_ledger: FaultLedger,
) -> None:
    before = storage_bytes(registry_with_champion)
    env = cli_env(MNIST_ARTIFACTS_URI=fault_runs["artifacts"], MNIST_REGISTRY_URI=registry_with_champion)
    runs = ("run-dnn-a", "run-dnn-b")
    workers = [
        subprocess.Popen(
            cli("--run-id", run, "promote"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for run in runs
    ]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    # The first decision to commit wins. One judged against the champion that decision replaced is
    # refused, naming the run that moved it, and writes nothing; its retry (Airflow's) judges again.
    refused = []
    for index, (run, worker) in enumerate(zip(runs, workers, strict=True)):
        stderr = outputs[index][1].decode()
        if worker.returncode == 0:
            continue
        other = next(r for r in runs if r != run)
        assert worker.returncode == 2 and "champion changed to" in stderr, stderr[-3000:]
        assert f"by run {other}" in stderr and "Nothing was changed" in stderr, stderr[-3000:]
        refused.append(run)
        retry = subprocess.run(cli("--run-id", run, "promote"), capture_output=True, env=env, timeout=300)
        assert retry.returncode == 0, retry.stderr.decode()[-3000:]
        outputs[index] = (retry.stdout, retry.stderr)
    assert len(refused) <= 1
    outcomes = [json.loads(stdout) for stdout, _ in outputs]
    registry = Registry(open_storage(registry_with_champion))
    new_events = list_events(registry)[1:]  # the template's own event comes first
    assert sorted(event.run_id for event in new_events) == sorted(runs)
    state = registry.state()
    decisions = [registry.read_commit(state.decision_of(run, "dnn")) for run in runs]
    assert [(c.kind, c.run_id) for c in decisions] == [("gate", run) for run in runs]
    champion = assert_consistent_champion(registry_with_champion)
    promoted = {(o["model"], o["version"]) for o in outcomes if o["promoted"]}
    assert (champion.model, champion.version) in promoted
    for model, version in promoted:  # no promoted version lost
        assert VersionRef(model, version) in registry.versions()
    expected_previous = {"run-champion"} if len(promoted) == 1 else set(runs) - {champion.run_id}
    assert {champion.previous.run_id} == expected_previous
    fault_ledger.compared(before, storage_bytes(registry_with_champion), may_change=may_change(before))
    fault_ledger.survived("two promotions racing from separate processes")
