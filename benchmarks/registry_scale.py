"""Registry reads and commits against registry size: storage calls and seconds, on a local folder
and on fake-gcs-server.

    .venv/bin/python benchmarks/registry_scale.py [--sizes 10 100 1000] [--backends local fake-gcs]

For N = 10, 100 and 1,000 versions with N history events (10,000 with `--sizes 10000`: seeding
it takes long, see below), measures what the registry's readers cost: the registry page's overview
(`load_overview`) and one version's page (`load_version`), `mnist-pipeline registry history
--limit 50` (`render_history`), a page of history from the middle (`history_page(before=...)`),
and the promote step's idempotence check (the state, then the run's gate decision's commit, for a
run that decided and for one that did not). `list_events`, every event, is measured beside them.
Then one uncontended commit of each common kind is measured (a gate decision that keeps the
champion, one that moves it): its storage calls, its writes and the bytes they wrote, its seconds.
Goal: at every N, at most 10 storage calls for the overview and at most 3 for the check.

Storage calls are counted by a proxy `Storage` around the registry's (`CountingStorage`),
counting every call of the Storage interface's methods (read_bytes, write_bytes, exists,
list_keys, delete, read_versioned, write_if_generation, create_if_absent, modified_times, sizes,
copy); helpers built on them (read_json, write_json) count as the calls they make. A listing
counts as one call however many pages the client fetches. Writes are the calls of write_bytes,
write_if_generation and create_if_absent.

The registry is seeded through the library's own commits, one at a time as the pipeline makes
them: for each of N versions, its metadata.json (written beforehand, in parallel: the files of a
version are not what is measured), `Registry.publish` (whose upload finds the metadata there, as a
retried task's does, and which commits the version), then a gate decision promoting it
(`Registry.commit` of a `gate` commit moving the champion). The log's clock is stepped half an
hour per commit while seeding, so that the history spans months as a registry promoting hourly
would (the commits are otherwise exactly the library's). Every commit rewrites the state view,
which grows with N: seeding costs O(N^2) bytes, minutes at N=1,000 on fake-gcs-server.
Writes results to benchmarks/results/registry_scale.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' storage helpers

from _common import fake_gcs_server, write_result

from mnist_pipeline.cli.render import render_history
from mnist_pipeline.registry import log as commit_log
from mnist_pipeline.registry.client import Registry
from mnist_pipeline.registry.gate import SliceVerdict, Verdict
from mnist_pipeline.registry.history import list_events
from mnist_pipeline.registry.records import AliasMove, ChampionPointer, Commit, HistoryEvent, VersionSummary
from mnist_pipeline.registry.state import CHAMPION, RegistryState
from mnist_pipeline.registry.store import VersionRef
from mnist_pipeline.storage import GcsStorage, Storage, open_storage
from mnist_pipeline.web.app import load_overview, load_version
from tests.storage_helpers import CountingStorage

SIZES = (10, 100, 1_000)
BACKENDS = ("local", "fake-gcs")
GOALS = {"overview": 10, "idempotence check (decided)": 3, "idempotence check (not decided)": 3}
REPEATS = 3  # each reader runs this often; calls are the same every time, seconds are the median
WRITERS = 16  # metadata.json objects written at once while seeding
PAGE = 50
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_WRITES = ("write_bytes", "write_if_generation", "create_if_absent")


class MeteredStorage(CountingStorage):
    """`CountingStorage` that also adds up the bytes each write sends."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.bytes_written = 0

    def write_bytes(self, key: str, data: bytes) -> None:
        self.bytes_written += len(data)
        super().write_bytes(key, data)

    def write_if_generation(self, key: str, data: bytes, generation: str) -> bool:
        self.bytes_written += len(data)
        return super().write_if_generation(key, data, generation)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        self.bytes_written += len(data)
        return super().create_if_absent(key, data)


def verdict_at(accuracy: float) -> Verdict:
    """The gate's verdict promoting a version: figures and one slice, as the gate records them."""
    mnist_test = SliceVerdict("mnist_test", 10_000, accuracy, accuracy - 0.002, 40, 60, 0.03, 0.03, 0.001)
    return Verdict(
        True,
        "better on mnist_test",
        challenger_accuracy=accuracy,
        champion_accuracy=accuracy - 0.002,
        b=40,
        c=60,
        p_value=0.03,
        rule="better",
        slices=[mnist_test],
    )


def accuracy_of(index: int) -> float:
    return 0.95 + (index % 400) / 10_000


def version_at(moment: datetime, index: int) -> str:
    return f"{moment.strftime('%Y%m%dT%H%M%SZ')}-{index:08x}"


def run_at(moment: datetime) -> str:
    return f"scheduled__{moment.isoformat()}"


def gate_draft(registry: Registry, ref: VersionRef, run_id: str, index: int, promote: bool) -> Any:
    """What a gate decision on `ref` commits (as `promotion._commit_decision` drafts it): the
    event, and the champion moved to `ref` when it promotes."""
    accuracy = accuracy_of(index)

    def draft(state: RegistryState) -> Commit:
        champion = state.champion
        verdict = verdict_at(accuracy) if promote else Verdict(False, "not better on mnist_test")
        event = HistoryEvent(
            kind="gate",
            model=ref.model,
            run_id=run_id,
            trigger="scheduled",
            version=ref.version if promote else None,
            metrics={"accuracy": accuracy, "loss": 0.15},
            verdict=verdict,
            promoted=promote,
            previous_champion=champion.summary() if champion else None,
        )
        moves = []
        if promote:
            pointer = ChampionPointer.for_version(
                VersionSummary(ref.model, ref.version, {"accuracy": accuracy, "loss": 0.15}),
                registry.uri(ref),
                state.last_time or datetime.now(UTC).strftime(_TIME_FORMAT),
                verdict.reason,
                run_id=run_id,
                test_hash="t" * 64,
                data_hash="d" * 64,
            )
            moves = [AliasMove(CHAMPION, pointer.succeeding(state.alias(CHAMPION).last_target))]
        return Commit(
            0,
            "gate",
            "",
            f"run {run_id}",
            verdict.reason,
            based_on=state.number,
            run_id=run_id,
            model=ref.model,
            event=event,
            moves=moves,
        )

    return draft


@contextmanager
def stepped_clock(start: datetime, step: timedelta) -> Iterator[None]:
    """The log's clock, while seeding: commit k is stamped `start + k * step` (never before the
    commit ahead of it)."""
    real, ticks = commit_log.next_time, iter(range(1 << 62))  # restored after seeding

    def next_time(after: str) -> str:
        at = (start + next(ticks) * step).strftime(_TIME_FORMAT)
        if not after or at > after:
            return at
        floor = datetime.strptime(after, _TIME_FORMAT).replace(tzinfo=UTC) + timedelta(microseconds=1)
        return floor.strftime(_TIME_FORMAT)

    commit_log.next_time = next_time
    try:
        yield
    finally:
        commit_log.next_time = real


def seed_registry(storage: Storage, n: int) -> tuple[VersionRef, str, str]:
    """N versions, each published then promoted by a gate decision, one an hour ending an hour
    ago; returns the champion, a run that decided, and the name of the middle event."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    moments = [now - timedelta(hours=n - i) for i in range(n)]
    refs = [VersionRef("dnn", version_at(moment, i)) for i, moment in enumerate(moments)]
    metadata = [
        {
            "metrics": {"accuracy": accuracy_of(i), "loss": 0.15, "test_hash": "t" * 64},
            "trained_at": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "data_hash": "d" * 64,
            "airflow_run_id": run_at(moment),
            "model": "dnn",
            "version": refs[i].version,
            "files_sha256": {},
        }
        for i, moment in enumerate(moments)
    ]

    def write(i: int) -> None:
        storage.write_json(f"{refs[i].prefix}/metadata.json", metadata[i])

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        list(pool.map(write, range(n)))
    registry = Registry(storage)
    with tempfile.TemporaryDirectory() as empty, stepped_clock(moments[0], timedelta(minutes=30)):
        for i, ref in enumerate(refs):
            registry.publish(ref, Path(empty), metadata[i], actor=f"run {run_at(moments[i])}")
            commit, _ = registry.commit(gate_draft(registry, ref, run_at(moments[i]), i, promote=True))
            assert commit is not None
    state = registry.state()
    assert state.number == 2 * n and state.champion is not None and state.champion.version == refs[-1].version
    return refs[-1], run_at(moments[n // 2]), state.event_names()[n // 2]


def measure(storage: Storage, read: Callable[[Registry], Any]) -> dict[str, Any]:
    """Calls and median seconds of `read` over a registry seen through a counting proxy."""
    seconds, counted = [], CountingStorage(storage)
    for _ in range(REPEATS):
        counted.calls.clear()
        started = time.perf_counter()
        read(Registry(counted))
        seconds.append(time.perf_counter() - started)
    return {
        "calls": sum(counted.calls.values()),
        "by_method": dict(counted.calls),
        "seconds": statistics.median(seconds),
    }


def readers(
    champion: VersionRef, decided_run: str, middle: str, n: int
) -> dict[str, Callable[[Registry], Any]]:
    """Each reader, checking what it read: a wrong answer must not pass for a fast one."""

    def overview(registry: Registry) -> None:
        shown = load_overview(registry, lambda ref: f"/versions/{ref}")
        assert len(shown["versions"]) == n and len(shown["history"]) == min(n, PAGE), "overview"
        assert shown["versions"][0]["version"] == champion.version and shown["versions"][0]["is_champion"]
        assert shown["versions"][0]["verdict"] == "better on mnist_test", "overview"

    def version(registry: Registry) -> None:
        shown = load_version(registry, champion, lambda name: name)
        assert shown["is_champion"] and shown["verdict"] == "better on mnist_test" and shown["slices"]

    def history(registry: Registry) -> None:
        lines = render_history(registry, limit=PAGE).splitlines()
        assert len([line for line in lines if "PROMOTED" in line]) == min(n, PAGE), "history"

    def middle_page(registry: Registry) -> None:
        page = registry.history_page(PAGE, before=middle)
        assert len(page.events) == min(n // 2, PAGE) and all(name < middle for name in page.names)
        assert all(event.promoted for event in page.events), "history page"

    def decided(registry: Registry) -> None:
        state = registry.state()
        number = state.decision_of(decided_run, "dnn")
        commit = registry.read_commit(number) if number is not None else None
        assert commit is not None and commit.event is not None and commit.event.run_id == decided_run

    def not_decided(registry: Registry) -> None:
        assert registry.state().decision_of("manual__never-promoted", "dnn") is None

    def every_event(registry: Registry) -> None:
        assert len(list_events(registry)) == n

    return {
        "overview": overview,
        "version page": version,
        f"registry history --limit {PAGE}": history,
        "history page from the middle": middle_page,
        "idempotence check (decided)": decided,
        "idempotence check (not decided)": not_decided,
        "list_events (every event)": every_event,
    }


def commit_one(storage: Storage, champion: VersionRef, promote: bool) -> dict[str, Any]:
    """One more gate decision through `Registry.commit`, nobody racing it (mutates the registry):
    promoting the champion's version again moves the champion, as a new version's would."""
    metered = MeteredStorage(storage)
    registry = Registry(metered)
    run_id = f"manual__{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    commit, _ = registry.commit(gate_draft(registry, champion, run_id, 0, promote))
    elapsed = time.perf_counter() - started
    assert commit is not None and commit.run_id == run_id and bool(commit.moves) == promote
    return {
        "calls": metered.total,
        "writes": sum(metered.calls[name] for name in _WRITES),
        "bytes_written": metered.bytes_written,
        "by_method": dict(metered.calls),
        "seconds": elapsed,
        "commit": commit.number,
    }


def new_storage(backend: str, n: int, folder: Path) -> Storage:
    if backend == "local":
        return open_storage(str(folder / f"registry-{n}"))
    bucket = f"registry-scale-{n}-{uuid.uuid4().hex[:8]}"
    GcsStorage(f"gs://{bucket}").client.create_bucket(bucket)
    return GcsStorage(f"gs://{bucket}/registry")


def run_size(backend: str, n: int, folder: Path) -> dict[str, Any]:
    storage = new_storage(backend, n, folder)
    started = time.perf_counter()
    champion, decided_run, middle = seed_registry(storage, n)
    setup = time.perf_counter() - started
    print(f"{backend} N={n}: registry seeded with {2 * n} commits in {setup:.1f} s", flush=True)
    results = {
        name: measure(storage, read) for name, read in readers(champion, decided_run, middle, n).items()
    }
    commits = {
        "commit: gate decision, champion kept": commit_one(storage, champion, promote=False),
        "commit: gate decision, champion moved": commit_one(storage, champion, promote=True),
    }
    return {
        "backend": backend,
        "n": n,
        "setup_seconds": round(setup, 1),
        "readers": results,
        "commits": commits,
    }


def print_tables(rows: list[dict[str, Any]]) -> None:
    for backend in dict.fromkeys(row["backend"] for row in rows):
        mine = [row for row in rows if row["backend"] == backend]
        header = "".join(f"{'N=' + format(row['n'], ','):>22}" for row in mine)
        print(f"\n{backend}: storage calls (median wall seconds)\n{'reader':<36}{header}")
        for name in mine[0]["readers"]:
            cells = "".join(
                f"{row['readers'][name]['calls']:>10} ({row['readers'][name]['seconds']:8.3f} s)"
                for row in mine
            )
            print(f"{name:<36}{cells}")
        print(f"\n{backend}: one uncontended commit: calls / writes / KiB written (wall seconds)")
        print(f"{'commit':<40}" + "".join(f"{'N=' + format(row['n'], ','):>30}" for row in mine))
        for name in mine[0]["commits"]:
            cells = "".join(
                f"{c['calls']:>6} /{c['writes']:>3} /{c['bytes_written'] / 1024:>7.1f}"
                f" ({c['seconds']:6.3f} s)"
                for c in (row["commits"][name] for row in mine)
            )
            print(f"{name:<40}{cells}")


def goals_met(rows: list[dict[str, Any]]) -> bool:
    misses = [
        f"{row['backend']} N={row['n']} {name}: {row['readers'][name]['calls']} calls > {most}"
        for row in rows
        for name, most in GOALS.items()
        if row["readers"][name]["calls"] > most
    ]
    print("\ngoals (overview <= 10 calls, idempotence check <= 3):", "; ".join(misses) or "met at every N")
    return not misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="N to run (default 10 100 1000)"
    )
    parser.add_argument("--max-n", type=int, default=None, help="skip sizes above this")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    args = parser.parse_args()
    sizes = sorted(n for n in set(args.sizes) if n >= 2 and (args.max_n is None or n <= args.max_n))
    if not sizes:
        parser.error("no size left to run (each N must be at least 2)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="registry-scale-") as tmp:
        for backend in args.backends:
            with fake_gcs_server() if backend == "fake-gcs" else nullcontext():
                rows += [run_size(backend, n, Path(tmp)) for n in sizes]
    print_tables(rows)
    met = goals_met(rows)
    path = write_result(
        "registry_scale",
        {
            "counting": "Storage method calls through a counting proxy; writes: write_bytes, "
            "write_if_generation and create_if_absent calls, with the bytes they sent",
            "seeding": "real commits (Registry.publish, then a gate commit moving the champion), "
            "the log's clock stepped 30 minutes per commit",
            "goals": GOALS,
            "goals_met": met,
            "sizes": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
