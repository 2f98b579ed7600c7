"""What Airflow costs: one `airflow dags test mnist_training` against the bare library trainings.

    MNIST_SOURCE=../shared/data/mnist.npz .venv/bin/python benchmarks/dag_overhead.py [--max-train-images N]

Runs each model's ingest + train + evaluate through the library in its own process (the "bare"
runs), then the whole DAG once with the same defaults, in a throw-away Airflow home on SQLite.
Prints wall times, the ratio DAG / sum of bare runs (target <= 1.15) and the peak RSS of each
process (target <= 2.5 GB per training), and writes benchmarks/results/dag_overhead.json.
`airflow dags test` runs every task in one process, so its peak RSS bounds each task's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import throwaway_airflow_env, write_result

BIN = Path(sys.executable).parent
BARE = (
    "import sys; from mnist_pipeline.config import PipelineSettings, TrainConfig; "
    "from mnist_pipeline.steps import ingest, train, evaluate; "
    "s = PipelineSettings.from_env(); snap = ingest(s, 'bare'); "
    "evaluate(train(sys.argv[1], snap, TrainConfig(), s, 'bare'), s)"
)


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one child process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:3])}... failed")
    return time.perf_counter() - started, usage.ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-train-images", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = throwaway_airflow_env(
            tmp, MNIST_MAX_TRAIN_IMAGES=str(args.max_train_images), TF_CPP_MIN_LOG_LEVEL="2"
        )
        bare = {model: timed([sys.executable, "-c", BARE, model], env) for model in ("linear", "dnn", "cnn")}
        subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
        conf = f'{{"max_train_images": {args.max_train_images}}}'
        dag = timed([str(BIN / "airflow"), "dags", "test", "mnist_training", "-c", conf], env)
    bare_total = sum(wall for wall, _ in bare.values())
    print(f"{'run':<22} {'wall s':>8} {'peak RSS GB':>12}")
    for model, (wall, rss) in bare.items():
        print(f"{'bare ' + model:<22} {wall:>8.1f} {rss:>12.2f}")
    print(f"{'airflow dags test':<22} {dag[0]:>8.1f} {dag[1]:>12.2f}")
    print(f"DAG / sum of bare runs: {dag[0] / bare_total:.2f} (target <= 1.15)")
    result = {
        "bare": {m: {"wall_s": w, "peak_rss_gb": r} for m, (w, r) in bare.items()},
        "dag": {"wall_s": dag[0], "peak_rss_gb": dag[1]},
        "ratio": dag[0] / bare_total,
    }
    print("wrote", write_result("dag_overhead", result))


if __name__ == "__main__":
    main()
