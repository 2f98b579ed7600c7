"""Where `make demo`'s time goes: its commands timed, then every task of the DAG run it made.

    MNIST_SOURCE=../shared/data/mnist.npz .venv/bin/python benchmarks/demo_time.py [--avx2] [--name NAME]

`--avx2` runs it on the AVX2 path (oneDNN limited to AVX2; precision "auto" then chooses
float32, as on a CPU without bfloat16 units): what a 2-core AVX2-only machine gets.

Runs what `make demo` runs (`airflow db migrate`, `airflow dags test mnist_training` and
`mnist_serving_export`, `mnist-pipeline summary`) in a throw-away Airflow home and registry,
with the venv installed and full data, then reads each task's start and end from that home's
metadata database. Prints the wall time of each command and of the whole (target <= 600 s), a
table of the tasks by start time with their seconds, the test accuracy and training precision of
each model, and writes benchmarks/results/NAME.json (default demo_time.json, demo_time_avx2.json
with `--avx2`): a name per CPU keeps one machine's result from replacing another's.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import AVX2_PATH, throwaway_airflow_env, write_result

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET_SECONDS = 600


def demo_env(tmp: str, avx2: bool) -> dict[str, str]:
    """`make demo`'s settings, with its Airflow home, registry and artifacts under `tmp`."""
    return throwaway_airflow_env(
        tmp,
        AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO / "plugins"),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **(AVX2_PATH if avx2 else {}),
    )


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def task_times(airflow_home: str) -> list[dict[str, Any]]:
    """Every task instance of the home's one run: id (with its map index), state, start, seconds."""
    with sqlite3.connect(f"{airflow_home}/airflow.db") as db:
        rows = db.execute(
            "SELECT task_id, map_index, state, start_date, end_date FROM task_instance "
            "WHERE dag_id = 'mnist_training' ORDER BY start_date"
        ).fetchall()
    tasks = []
    for task_id, map_index, state, start, end in rows:
        name = task_id if map_index < 0 else f"{task_id}[{map_index}]"
        seconds = _seconds_between(start, end) if start and end else 0.0
        tasks.append({"task": name, "state": state, "start": start, "seconds": round(seconds, 1)})
    return tasks


def _seconds_between(start: str, end: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def run_records(tmp: str, file: str, field: str) -> dict[str, Any]:
    """`field` of each model's record `file` in the run (metrics.json, training.json)."""
    found = {}
    for path in Path(tmp, "artifacts").glob(f"runs/*/*/{file}"):
        found[path.parent.name] = json.loads(path.read_text()).get(field)
    return found


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--avx2", action="store_true", help="oneDNN limited to AVX2, as on an AVX2-only CPU")
    parser.add_argument("--name", help="result file name in benchmarks/results/, without .json")
    return parser.parse_args()


def main() -> None:
    options = parse_args()
    avx2 = options.avx2
    if avx2:
        os.environ.update(AVX2_PATH)  # so that the result's machine block records the path
    with tempfile.TemporaryDirectory() as tmp:
        env = demo_env(tmp, avx2)
        commands = {
            "airflow db migrate": [str(BIN / "airflow"), "db", "migrate"],
            "airflow dags test mnist_training": [str(BIN / "airflow"), "dags", "test", "mnist_training"],
            "airflow dags test mnist_serving_export": [
                str(BIN / "airflow"),
                "dags",
                "test",
                "mnist_serving_export",
            ],
            "mnist-pipeline summary": [str(BIN / "mnist-pipeline"), "summary"],
        }
        walls = {name: timed(command, env) for name, command in commands.items()}
        tasks = task_times(env["AIRFLOW_HOME"])
        accuracy = run_records(tmp, "metrics.json", "accuracy")
        precision = run_records(tmp, "training.json", "precision")
    total = sum(walls.values())
    for name, wall in walls.items():
        print(f"{name:<36} {wall:>7.1f} s")
    print(f"{'make demo (venv installed)':<36} {total:>7.1f} s (target <= {TARGET_SECONDS})\n")
    print(f"{'task':<24} {'state':<9} {'s':>7}")
    for task in tasks:
        print(f"{task['task']:<24} {task['state'] or '-':<9} {task['seconds']:>7.1f}")
    print(f"{'sum of tasks':<34} {sum(t['seconds'] for t in tasks):>7.1f}")
    print("test accuracy:", ", ".join(f"{m} {a:.4f}" for m, a in sorted(accuracy.items())))
    print("precision:", ", ".join(f"{m} {p}" for m, p in sorted(precision.items())))
    payload = {
        "commands": walls,
        "total_s": total,
        "tasks": tasks,
        "test_accuracy": accuracy,
        "precision": precision,
    }
    name = options.name or ("demo_time_avx2" if avx2 else "demo_time")
    print("wrote", write_result(name, payload))


if __name__ == "__main__":
    main()
