"""The DNN's schedule: its defaults against its former ones (batch 128, 512x2, dropout 0.2, no
label smoothing, a 30-epoch cosine plan that early stopping ends), on full MNIST and on a small
slice's short run.

    MNIST_SOURCE=../shared/data/mnist.npz .venv/bin/python benchmarks/dnn_schedule.py [--repeats N]

Every trial trains in its own process, the two schedules alternating; prints test accuracy, training
seconds, epochs and the batch each used (medians over the repeats), and the ratio of training
seconds on full MNIST (target <= 0.5 at no loss of accuracy). The small slice (5,000 images, two
epochs) is the short run where a large batch leaves too few steps unless it shrinks. Writes
benchmarks/results/dnn_schedule.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import mnist_source, write_result

FORMER = {
    "epochs": 30,
    "batch_size": 128,
    "learning_rate": 1e-3,
    "min_steps_per_epoch": 0,
    "ema_horizon_steps": 0,
    "label_smoothing": 0.0,
    "hidden_units": (512, 512),
    "dropout": 0.2,
}
SCHEDULES = {"defaults": {}, "former": FORMER}
SLICES = {"full": (None, None), "5000 images, 2 epochs": (5000, 2)}


def train_trial(schedule: str, slice_name: str) -> dict:
    from mnist_pipeline.config import TrainConfig
    from mnist_pipeline.data.mnist import load_mnist, split_validation
    from mnist_pipeline.evaluation.metrics import evaluate_model
    from mnist_pipeline.training.trainer import train_model

    data = load_mnist(mnist_source())
    images, epochs = SLICES[slice_name]
    settings = SCHEDULES[schedule] | ({"epochs": epochs} if epochs else {})
    config = TrainConfig()
    x, y = data.x_train[:images], data.y_train[:images]
    train, val = split_validation(x, y, config.validation_fraction, config.seed)
    result = train_model("dnn", train, val, config, model_settings=settings)
    return {
        "test_accuracy": evaluate_model(result.model, data.x_test, data.y_test)["accuracy"],
        "train_seconds": round(result.train_seconds, 1),
        "epochs": result.epochs_run,
        "batch": result.model_config.batch_size,
    }


def run_worker(schedule: str, slice_name: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trial.json"
        command = [sys.executable, __file__, "--worker", schedule, slice_name, "--out", str(out)]
        subprocess.run(command, check=True, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"})
        return json.loads(out.read_text())


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        Path(args.out).write_text(json.dumps(train_trial(*args.worker)))
        return
    trials: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        order = list(SCHEDULES) if repeat % 2 == 0 else list(reversed(SCHEDULES))
        for slice_name in SLICES:
            for schedule in order:
                print(f"{schedule}, {slice_name}, trial {repeat + 1}", flush=True)
                trials.setdefault(f"{schedule} | {slice_name}", []).append(run_worker(schedule, slice_name))
    rows = {
        key: {field: median([t[field] for t in runs]) for field in runs[0]}
        for key, runs in trials.items()
    }
    print(f"{'schedule | data':<36} {'test acc':>8} {'train s':>8} {'epochs':>6} {'batch':>6}")
    for key, row in rows.items():
        print(
            f"{key:<36} {row['test_accuracy']:>8.2%} {row['train_seconds']:>8.1f}"
            f" {row['epochs']:>6} {row['batch']:>6}"
        )
    ratio = rows["defaults | full"]["train_seconds"] / rows["former | full"]["train_seconds"]
    print(f"training seconds on full MNIST, defaults / former: {ratio:.2f} (target <= 0.5)")
    print("wrote", write_result("dnn_schedule", {"rows": rows, "ratio": ratio, "trials": trials}))


if __name__ == "__main__":
    main()
