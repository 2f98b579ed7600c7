"""DAG-like promotes, run after run, for tests/test_registry_log.py to SIGKILL at random moments.

`python -m tests.registry_promoter REGISTRY FOLDERS` imports what a promote needs once, prints
"ready", then for each first run number read from stdin forks a promoter, which prints
"started PID" and then each run it finished; once that promoter is gone (killed), "exited". Forked
from one warm process, each of the test's 50 promoters starts in milliseconds, not in the third
of a second that importing the registry costs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import Verdict
from mnist_pipeline.registry.promotion import _commit_decision
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent, VersionSummary
from mnist_pipeline.registry.state import CHAMPION
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.storage import open_storage
from tests.registry_helpers import publish_version


def promote_like_the_dag(registry: Registry, folders: Path, i: int) -> None:
    """Run i's promote as the DAG's task does it after judging: publish (idempotent), then its one
    gate decision (a retry finds it), then the artifacts' promotion record."""
    run_id = f"manual__{i}"
    state = registry.state()
    if state.decision_of(run_id, "dnn") is None:
        ref = VersionRef("dnn", f"20260101T{i:06d}Z-{i:08x}")
        if not state.is_published(ref.model, ref.version):
            ref = publish_version(registry, folders / f"try-{os.getpid()}", i)
        verdict = Verdict(promote=True, reason=f"run {i} beats the champion", forced=True)
        event = HistoryEvent(
            kind="gate",
            model="dnn",
            verdict=verdict,
            promoted=True,
            run_id=run_id,
            version=ref.version,
            forced=True,
        )
        pointer = ChampionPointer.for_version(
            VersionSummary("dnn", ref.version, {}),
            registry.uri(ref),
            "2026-12-01T03:00:00Z",
            verdict.reason,
            forced=True,
            run_id=run_id,
        )
        ctx = SimpleNamespace(
            registry=registry,
            run_id=run_id,
            challenger=SimpleNamespace(model="dnn"),
            options=SimpleNamespace(attempt=1),
        )
        _commit_decision(ctx, state.number, event, (CHAMPION, pointer))  # type: ignore[arg-type]
    registry.storage.write_json(f"runs/{i}/promotion.json", {"run_id": run_id})


def promote_runs(root: str, folders: str, first: int) -> None:
    registry = Registry(open_storage(root))
    print("started", os.getpid(), flush=True)
    for i in range(first, first + 1000):
        promote_like_the_dag(registry, Path(folders), i)
        print(i, flush=True)


def serve(root: str, folders: str) -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                promote_runs(root, folders, int(line))
            finally:
                os._exit(0)
        os.waitpid(pid, 0)  # every line the promoter printed is in the pipe before this one
        print("exited", flush=True)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
