"""How long the incoming step takes over many tiny shards: 200 shards of 10 new digits each.

    .venv/bin/python benchmarks/incoming_shards.py [--shards 200] [--images 10] [--repeats 3] [--gcs]

Each repeat drops the shards into a fresh local store (and, with `--gcs`, a bucket on
fake-gcs-server) and times `process_incoming` over them against full base MNIST, with no
champion: one listing, one claim per shard, one duplicate lookup for every image of the batch
(against base MNIST's 70,000 images), each shard placed. Target: at most 3 s on 2 cores for 200
shards on the local store. Loading base MNIST, which the DAG task does first, is timed apart.
Prints a table and writes benchmarks/results/incoming_shards.json.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import fake_gcs_server, mnist_source, write_result

TARGET_SECONDS = 3.0


def shard_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, images=images, labels=labels)
    return buffer.getvalue()


def drop_shards(storage: Any, mnist: Any, shards: int, images: int) -> None:
    """`shards` shards of base training digits moved two pixels: new digits, never copies."""
    from mnist_pipeline.data.incoming import INCOMING

    for number in range(shards):
        start = number * images
        digits = np.roll(mnist.x_train[start : start + images], 2, axis=2)
        storage.write_bytes(
            f"{INCOMING}tiny-{number:04d}.npz", shard_bytes(digits, mnist.y_train[start : start + images])
        )


def one_run(uri: str, mnist: Any, args: argparse.Namespace, repeat: int) -> float:
    from mnist_pipeline.data.incoming import process_incoming
    from mnist_pipeline.storage import open_storage

    storage = open_storage(uri)
    drop_shards(storage, mnist, args.shards, args.images)
    started = time.perf_counter()
    report = process_incoming(storage, f"bench-{repeat}", mnist)
    seconds = time.perf_counter() - started
    if len(report.accepted) != args.shards:
        raise SystemExit(
            f"expected {args.shards} accepted shards, got {len(report.accepted)}: {report.rejected[:3]}"
        )
    return seconds


def backends(args: argparse.Namespace, tmp: str) -> list[tuple[str, Any]]:
    """(backend, a function of the repeat giving a fresh storage root)."""
    found: list[tuple[str, Any]] = [("local", lambda repeat: f"{tmp}/local-{repeat}")]
    if args.gcs:
        from mnist_pipeline.storage import GcsStorage

        def bucket(repeat: int) -> str:
            name = f"bench-incoming-{repeat}-{int(time.time() * 1000)}"
            GcsStorage(f"gs://{name}").client.create_bucket(name)
            return f"gs://{name}/work"

        found.append(("gcs (fake-gcs-server)", bucket))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gcs", action="store_true", help="also on fake-gcs-server")
    args = parser.parse_args()
    from mnist_pipeline.data.mnist import load_mnist

    started = time.perf_counter()
    mnist = load_mnist(mnist_source())
    load_seconds = time.perf_counter() - started
    rows = []
    with tempfile.TemporaryDirectory() as tmp, fake_gcs_server() if args.gcs else nullcontext():
        for backend, root in backends(args, tmp):
            times = [one_run(root(repeat), mnist, args, repeat) for repeat in range(args.repeats)]
            rows.append(
                {
                    "backend": backend,
                    "seconds": [round(t, 3) for t in times],
                    "median": statistics.median(times),
                }
            )
    tensorflow = "tensorflow" in sys.modules  # no champion: the ingest must never import it
    print(f"{args.shards} shards of {args.images} images; base MNIST loaded in {load_seconds:.2f} s")
    print(f"{'backend':<24} {'median s':>9}  runs")
    for row in rows:
        print(f"{row['backend']:<24} {row['median']:>9.2f}  {row['seconds']}")
    local = rows[0]["median"]
    print(f"local median {local:.2f} s (target <= {TARGET_SECONDS:g} s); TensorFlow imported: {tensorflow}")
    result = {
        "shards": args.shards,
        "images_per_shard": args.images,
        "load_mnist_seconds": round(load_seconds, 3),
        "runs": rows,
        "target_seconds": TARGET_SECONDS,
        "tensorflow_imported": tensorflow,
    }
    print("wrote", write_result("incoming_shards", result))


if __name__ == "__main__":
    main()
