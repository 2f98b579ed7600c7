"""Retraining on new data at full size: digits from another pen arrive, and a warm-started retrain
is promoted by the new_data slice. The same scenario as tests/test_retraining.py, on all of MNIST.

    MNIST_SOURCE=../shared/data/mnist.npz .venv/bin/python benchmarks/retraining_scenario.py [--shards 5]

1. The champion: the CNN with its defaults, trained on the first 55,000 training images.
2. New data: the last 5,000 training images (never seen by the champion), re-drawn with a broader
   pen and light noise, sent as shards of 1,000; the incoming step checks and accepts them.
3. The data-triggered retrain: warm-started from the champion (its short schedule), gated on
   mnist_test and new_data and promoted when it wins.
4. For comparison, a cold retrain with the full schedule on the same snapshot, gated as a dry run.

Prints the verdict and a table (accuracies on both slices, training seconds, wall seconds) and
writes benchmarks/results/retraining_scenario.json. Works in a fresh folder under .local/.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import mnist_source, write_result

BASE_IMAGES = 55_000
SHARD_IMAGES = 1_000
WORK = Path(__file__).resolve().parents[1] / ".local" / "retraining-scenario"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=5, help="shards of 1,000 re-drawn digits (at least 3)")
    args = parser.parse_args()
    from mnist_pipeline.config import PipelineSettings

    shutil.rmtree(WORK, ignore_errors=True)
    settings = PipelineSettings(
        source=mnist_source(),
        artifacts_uri=str(WORK / "artifacts"),
        registry_uri=str(WORK / "registry"),
        max_train_images=BASE_IMAGES,
    )
    rows = [run_step(settings, "champion", warm_start=False, dry_run=False)]
    started = time.perf_counter()
    incoming = send_and_accept(settings, args.shards)
    incoming["seconds"] = round(time.perf_counter() - started, 1)
    rows.append(run_step(settings, "warm retrain", warm_start=True, dry_run=False))
    rows.append(run_step(settings, "cold retrain", warm_start=False, dry_run=True))
    print_table(rows, incoming)
    path = write_result("retraining_scenario", {"incoming": incoming, "runs": rows})
    print(f"\nwrote {path}")


def send_and_accept(settings: Any, shards: int) -> dict[str, Any]:
    import numpy as np

    from mnist_pipeline.data.incoming import INCOMING, announce_pending, process_incoming
    from mnist_pipeline.data.mnist import load_mnist
    from mnist_pipeline.data.shifts import redrawn_with_another_pen
    from mnist_pipeline.storage import open_storage

    mnist = load_mnist(settings.source)
    artifacts = open_storage(settings.artifacts_uri)
    for number in range(shards):
        start = BASE_IMAGES + number * SHARD_IMAGES
        buffer = io.BytesIO()
        images = redrawn_with_another_pen(mnist.x_train[start : start + SHARD_IMAGES], seed=number)
        np.savez(buffer, images=images, labels=mnist.y_train[start : start + SHARD_IMAGES])
        artifacts.write_bytes(f"{INCOMING}pen-{number}.npz", buffer.getvalue())
    report = process_incoming(artifacts, "scenario-incoming", mnist)
    announcement = announce_pending(artifacts, threshold=1000)
    return {"accepted": len(report.accepted), "rejected": report.rejected, "announced": announcement}


def run_step(settings: Any, name: str, warm_start: bool, dry_run: bool) -> dict[str, Any]:
    from mnist_pipeline.config import TrainConfig
    from mnist_pipeline.registry.promotion import PromotionOptions
    from mnist_pipeline.steps import evaluate, ingest, promote, train

    run_id = f"scenario-{name.replace(' ', '-')}"
    started = time.perf_counter()
    snapshot = ingest(settings, run_id)
    training = train("cnn", snapshot, TrainConfig(), settings, run_id, warm_start=warm_start)
    evaluation = evaluate(training, settings)
    trigger = "scheduled" if name == "champion" else "asset_triggered"
    outcome = promote([evaluation], settings, run_id, PromotionOptions(dry_run=dry_run, trigger=trigger))
    new_data = outcome.verdict.slice("new_data")
    row = {
        "run": name,
        "initialization": training.initialization,
        "epochs": training.epochs_run,
        "train_seconds": training.train_seconds,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "mnist_test": evaluation.accuracy,
        "new_data": evaluation.new_data_accuracy,
        "champion_new_data": new_data.champion_accuracy if new_data else None,
        "promoted": outcome.promoted,
        "verdict": outcome.verdict.to_dict(),
    }
    print(f"{name}: {'PROMOTED' if outcome.promoted else 'kept'}: {outcome.verdict.reason}", flush=True)
    return row


def print_table(rows: list[dict[str, Any]], incoming: dict[str, Any]) -> None:
    print(f"\nincoming: {incoming['accepted']} shards accepted in {incoming['seconds']} s")
    header = ("run", "epochs", "train s", "wall s", "mnist_test", "new_data", "promoted")
    print(f"{header[0]:<13} " + " ".join(f"{word:>{len(word) + 2}}" for word in header[1:]))
    for row in rows:
        new_data = f"{row['new_data']:.4f}" if row["new_data"] is not None else "-"
        print(
            f"{row['run']:<13} {row['epochs']:>6} {row['train_seconds']:>8.1f} {row['wall_seconds']:>7.1f}"
            f" {row['mnist_test']:>10.4f} {new_data:>9} {row['promoted']!s:>9}"
        )
    champion_new = rows[1]["champion_new_data"]
    if champion_new is not None:
        print(f"the champion on the new_data slice: {champion_new:.4f}")


if __name__ == "__main__":
    main()
