"""Registry reads against registry size: storage calls and seconds on fake-gcs-server.

    .venv/bin/python benchmarks/registry_scale.py [--max-n 1000]

For N = 10, 100, 1,000 and 10,000 versions with N history events, measures what the registry's
readers cost: the registry page's overview (`load_overview`) and one version's page
(`load_version`), `mnist-pipeline registry history --limit 50` (`render_history`), and the promote
step's idempotence check (`find_promotion`, for a run that promoted and for one that did not).
`list_events`, the full scan every one of these readers made before the registry had an index, is
measured beside them, and so is appending one event (`record_event`, with its index updates).
Goal: at every N, at most 10 storage calls for the overview and at most 3 for the check.

Storage calls are counted by a proxy `Storage` around the registry's, counting every call of the
Storage interface's methods (read_bytes, write_bytes, exists, list_keys, delete, read_versioned,
write_if_generation, modified_times, sizes, copy); helpers built on them (read_json, write_json)
count as the calls they make. A listing counts as one call however many pages the client fetches.

The registry is written fast but as the library leaves it: N committed versions (a metadata.json
each) and N gate events, each promoting its version, one an hour ending now (so that the history
spans months, as a registry promoting hourly would), written as objects under the keys
`record_event` gives them, then indexed once by `rebuild_index`. The champion is the newest version.
Writes results to benchmarks/results/registry_scale.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fake_gcs_server, write_result

from mnist_pipeline.cli.render import render_history
from mnist_pipeline.registry.gate import SliceVerdict, Verdict
from mnist_pipeline.registry.history import event_key, find_promotion, list_events, record_event
from mnist_pipeline.registry.index import rebuild_index
from mnist_pipeline.registry.records import ChampionPointer, HistoryEvent, VersionSummary
from mnist_pipeline.registry.store import ModelRegistry, VersionRef
from mnist_pipeline.storage import CountingStorage, GcsStorage, Storage
from mnist_pipeline.web.app import load_overview, load_version

SIZES = (10, 100, 1_000, 10_000)
GOALS = {"overview": 10, "find_promotion (promoted)": 3, "find_promotion (not promoted)": 3}
REPEATS = 3  # each reader runs this often; calls are the same every time, seconds are the median
WRITERS = 16  # objects written at once while filling the registry


def event_at(moment: datetime, index: int, previous: str | None) -> HistoryEvent:
    """The gate decision that promoted version `index`: figures and one slice, as the gate writes."""
    accuracy = 0.95 + (index % 400) / 10_000
    mnist_test = SliceVerdict("mnist_test", 10_000, accuracy, accuracy - 0.002, 40, 60, 0.03, 0.03, 0.001)
    verdict = Verdict(
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
    return HistoryEvent(
        kind="gate",
        model="dnn",
        run_id=f"scheduled__{moment.isoformat()}",
        trigger="scheduled",
        version=version_at(moment, index),
        metrics={"accuracy": accuracy, "loss": 0.15},
        verdict=verdict,
        promoted=True,
        previous_champion=VersionSummary("dnn", previous, {"accuracy": accuracy - 0.002})
        if previous
        else None,
        time=moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    )


def version_at(moment: datetime, index: int) -> str:
    return f"{moment.strftime('%Y%m%dT%H%M%SZ')}-{index:08x}"


def fill_registry(storage: Storage, n: int) -> tuple[VersionRef, str]:
    """N versions and the N events that promoted them, indexed; returns the champion and a run id."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    moments = [now - timedelta(hours=n - i) for i in range(n)]
    versions = [version_at(moment, i) for i, moment in enumerate(moments)]

    def write(i: int) -> None:
        moment = moments[i]
        metadata = {
            "model": "dnn",
            "version": versions[i],
            "metrics": {"accuracy": 0.95 + (i % 400) / 10_000, "loss": 0.15, "test_hash": "t" * 64},
            "trained_at": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "data_hash": "d" * 64,
            "airflow_run_id": f"scheduled__{moment.isoformat()}",
            "files_sha256": {},
        }
        storage.write_json(f"mnist/models/dnn/{versions[i]}/metadata.json", metadata)
        event = event_at(moment, i, versions[i - 1] if i else None)
        storage.write_json(event_key(event), event.to_dict())

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        list(pool.map(write, range(n)))
    rebuild_index(storage)
    champion = VersionRef("dnn", versions[-1])
    pointer = ChampionPointer.for_version(
        VersionSummary("dnn", champion.version, {"accuracy": 0.99, "loss": 0.15}),
        storage.uri(champion.prefix),
        now.isoformat(),
        "better on mnist_test",
        run_id=f"scheduled__{moments[-1].isoformat()}",
    )
    ModelRegistry(storage).move_champion(lambda current: (pointer, None))
    return champion, f"scheduled__{moments[n // 2].isoformat()}"


def measure(storage: Storage, read: Callable[[ModelRegistry], Any]) -> dict[str, Any]:
    """Calls and median seconds of `read` over a registry seen through a counting proxy."""
    seconds, counted = [], CountingStorage(storage)
    for _ in range(REPEATS):
        counted.calls.clear()
        started = time.perf_counter()
        read(ModelRegistry(counted))
        seconds.append(time.perf_counter() - started)
    return {
        "calls": sum(counted.calls.values()),
        "by_method": dict(counted.calls),
        "seconds": statistics.median(seconds),
    }


def readers(champion: VersionRef, promoted_run: str, n: int) -> dict[str, Callable[[ModelRegistry], Any]]:
    """Each reader, checking what it read: a wrong answer must not pass for a fast one."""

    def overview(registry: ModelRegistry) -> None:
        shown = load_overview(registry, lambda ref: f"/versions/{ref}")
        assert len(shown["versions"]) == n and len(shown["history"]) == min(n, 50), "overview"
        assert shown["versions"][0]["version"] == champion.version and shown["versions"][0]["is_champion"]

    def version(registry: ModelRegistry) -> None:
        shown = load_version(registry, champion, lambda name: name)
        assert shown["is_champion"] and shown["verdict"] == "better on mnist_test" and shown["slices"]

    def history(registry: ModelRegistry) -> None:
        lines = render_history(registry, limit=50).splitlines()
        assert len([line for line in lines if "PROMOTED" in line]) == min(n, 50), "history"

    def promoted(registry: ModelRegistry) -> None:
        found = find_promotion(registry.storage, promoted_run, "dnn")
        assert found is not None and found.run_id == promoted_run

    def not_promoted(registry: ModelRegistry) -> None:
        assert find_promotion(registry.storage, "manual__never-promoted", "dnn") is None

    def full_scan(registry: ModelRegistry) -> None:
        assert len(list_events(registry.storage)) == n

    return {
        "overview": overview,
        "version page": version,
        "registry history --limit 50": history,
        "find_promotion (promoted)": promoted,
        "find_promotion (not promoted)": not_promoted,
        "list_events (pre-index full scan)": full_scan,
    }


def append_one(storage: Storage, n: int) -> dict[str, Any]:
    """One more gate event through the library, index updates included (mutates the registry)."""
    counted = CountingStorage(storage)
    event = HistoryEvent(kind="gate", model="dnn", verdict=Verdict(False, "not better"), promoted=False)
    started = time.perf_counter()
    record_event(counted, event)
    elapsed = time.perf_counter() - started
    return {"calls": sum(counted.calls.values()), "by_method": dict(counted.calls), "seconds": elapsed}


def run_size(n: int) -> dict[str, Any]:
    bucket = f"registry-scale-{n}-{uuid.uuid4().hex[:8]}"
    GcsStorage(f"gs://{bucket}").client.create_bucket(bucket)
    storage = GcsStorage(f"gs://{bucket}/registry")
    started = time.perf_counter()
    champion, promoted_run = fill_registry(storage, n)
    setup = time.perf_counter() - started
    print(f"N={n}: registry written and indexed in {setup:.1f} s", flush=True)
    results = {name: measure(storage, read) for name, read in readers(champion, promoted_run, n).items()}
    results["record_event (one more event)"] = append_one(storage, n)
    return {"n": n, "setup_seconds": round(setup, 1), "readers": results}


def print_table(rows: list[dict[str, Any]]) -> None:
    names = list(rows[0]["readers"])
    header = f"{'reader':<36}" + "".join(f"{'N=' + format(row['n'], ','):>22}" for row in rows)
    print(f"\nstorage calls (median wall seconds)\n{header}")
    for name in names:
        cells = "".join(
            f"{row['readers'][name]['calls']:>10} ({row['readers'][name]['seconds']:8.3f} s)" for row in rows
        )
        print(f"{name:<36}{cells}")


def goals_met(rows: list[dict[str, Any]]) -> bool:
    misses = [
        f"N={row['n']} {name}: {row['readers'][name]['calls']} calls > {most}"
        for row in rows
        for name, most in GOALS.items()
        if row["readers"][name]["calls"] > most
    ]
    print("\ngoals (overview <= 10 calls, idempotence check <= 3):", "; ".join(misses) or "met at every N")
    return not misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-n", type=int, default=SIZES[-1], help="largest N to run (default 10000)")
    args = parser.parse_args()
    with fake_gcs_server():
        rows = [run_size(n) for n in SIZES if n <= args.max_n]
    print_table(rows)
    met = goals_met(rows)
    path = write_result(
        "registry_scale",
        {
            "counting": "Storage method calls through a counting proxy",
            "goals": GOALS,
            "goals_met": met,
            "sizes": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
