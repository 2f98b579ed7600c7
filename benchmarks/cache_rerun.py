"""A run with nothing new: how long `mnist_training` takes when the step cache reuses every model.

    MNIST_SOURCE=../shared/data/mnist.npz .venv/bin/python benchmarks/cache_rerun.py \
        [--max-train-images 1000] [--epochs 2]

Runs the DAG three times with `airflow dags test`, in a throw-away Airflow home, artifacts store
and registry: on a small slice (every model trains), on a larger slice (new data: every model
trains again), then once more on that same slice, with nothing new: every model's training and
evaluation is reused from the second run (`mnist_pipeline.cache`) and the gate keeps the
champion. Prints each run's wall time (the whole `airflow dags test` command: process start, DAG
parse, every task) with its tasks' seconds, whether each model was reused, and the target (the
third run within 60 s on 2 cores); writes benchmarks/results/cache_rerun.json.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import throwaway_airflow_env, write_result

BIN = Path(sys.executable).parent
TARGET_SECONDS = 60
MODELS = ("linear", "dnn", "cnn")


def dag_run(env: dict[str, str], conf: dict[str, Any]) -> float:
    """Wall seconds of one `airflow dags test` with `conf`."""
    command = [str(BIN / "airflow"), "dags", "test", "mnist_training", "-c", json.dumps(conf)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"airflow dags test failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def task_seconds(airflow_home: str) -> dict[str, dict[str, float]]:
    """Per DAG run id, each task's seconds (mapped instances summed)."""
    with sqlite3.connect(f"{airflow_home}/airflow.db") as db:
        rows = db.execute(
            "SELECT run_id, task_id, (julianday(end_date) - julianday(start_date)) * 86400 "
            "FROM task_instance WHERE dag_id = 'mnist_training' AND end_date IS NOT NULL"
        ).fetchall()
    runs: dict[str, dict[str, float]] = {}
    for run_id, task, seconds in rows:
        runs.setdefault(run_id, {})
        runs[run_id][task] = round(runs[run_id].get(task, 0.0) + seconds, 2)
    return runs


def reuse_of(artifacts: Path, run_id: str) -> dict[str, str | None]:
    """Per model, the run its training was reused from (None: trained in `run_id`)."""
    from mnist_pipeline.runs import model_key

    found: dict[str, str | None] = {}
    for model in MODELS:
        record = artifacts / model_key(run_id, model) / "training.json"
        if record.is_file():
            found[model] = (json.loads(record.read_text()).get("reused_from") or {}).get("run_id")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-train-images", type=int, default=1000)
    parser.add_argument(
        "--epochs", type=int, default=2, help="every model's epochs (small: the cache is timed)"
    )
    args = parser.parse_args()
    plan = [
        ("first slice", args.max_train_images),
        ("new data", args.max_train_images + 200),
        ("nothing new", args.max_train_images + 200),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        env = throwaway_airflow_env(tmp, TF_CPP_MIN_LOG_LEVEL="2")
        subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
        walls = [dag_run(env, {"max_train_images": n, "epochs": args.epochs}) for _, n in plan]
        tasks = task_seconds(env["AIRFLOW_HOME"])
        rows = []
        # `dags test` names each run by the time it started: in the order they ran.
        for (label, images), wall, run_id in zip(plan, walls, sorted(tasks), strict=True):
            rows.append(
                {
                    "run": label,
                    "run_id": run_id,
                    "train_images": images,
                    "wall_s": round(wall, 1),
                    "tasks_s": tasks.get(run_id, {}),
                    "reused_from": reuse_of(Path(env["MNIST_ARTIFACTS_URI"]), run_id),
                }
            )
    show(rows)
    cached = rows[-1]["wall_s"]
    result = {"epochs": args.epochs, "runs": rows, "cached_rerun_s": cached, "target_s": TARGET_SECONDS}
    print("wrote", write_result("cache_rerun", result))


def show(rows: list[dict[str, Any]]) -> None:
    print(f"{'run':<12} {'images':>6} {'wall s':>7} {'train s (sum)':>13}  reused")
    for row in rows:
        train = sum(seconds for task, seconds in row["tasks_s"].items() if task.endswith(".train"))
        reused = ", ".join(
            f"{model} {'reused' if origin else 'trained'}" for model, origin in row["reused_from"].items()
        )
        print(f"{row['run']:<12} {row['train_images']:>6} {row['wall_s']:>7.1f} {train:>13.1f}  {reused}")
    verdict = "within" if rows[-1]["wall_s"] <= TARGET_SECONDS else "OVER"
    print(f"nothing new: {rows[-1]['wall_s']:.1f} s, {verdict} the {TARGET_SECONDS} s target")


if __name__ == "__main__":
    main()
