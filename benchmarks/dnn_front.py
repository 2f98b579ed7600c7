"""The DNN's candidates on the AVX2 path (float32): epochs, width and input-pipeline shifts against
validation and test accuracy and training time, on all 54,000 training images.

    MNIST_SOURCE=../shared/data/mnist.npz .venv/bin/python benchmarks/dnn_front.py [--only NAME ...]
        [--repeats N] [--native]

Every trial trains in its own process through the pipeline's trainer, with the seed the pipeline
uses (`--repeats` adds seeds 43, 44 ...). The default is the candidate with the best validation
accuracy among those within the training budget (`--budget`, seconds); the test set is reported and
never chosen on. Writes benchmarks/results/dnn_front.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import AVX2_PATH, cpu_model, machine, mnist_source, write_result

# Settings of the DNN's config on top of its defaults.
CANDIDATES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "8-epochs": {"epochs": 8},
    "10-epochs": {"epochs": 10},
    "shift-1px-8": {"epochs": 8, "max_shift": 0.04},
    "shift-2px-10": {"epochs": 10, "max_shift": 0.08},
    "2048x2-8": {"epochs": 8, "hidden_units": (2048, 2048)},
}


def train_trial(name: str, seed: int) -> dict[str, Any]:
    from mnist_pipeline.config import TrainConfig
    from mnist_pipeline.data.mnist import load_mnist, split_validation
    from mnist_pipeline.evaluation.metrics import evaluate_model
    from mnist_pipeline.training.trainer import train_model

    data = load_mnist(mnist_source())
    config = TrainConfig(seed=seed)
    train, val = split_validation(data.x_train, data.y_train, config.validation_fraction, config.seed)
    result = train_model("dnn", train, val, config, model_settings=CANDIDATES[name])
    return {
        "validation_accuracy": evaluate_model(result.model, *val)["accuracy"],
        "test_accuracy": evaluate_model(result.model, data.x_test, data.y_test)["accuracy"],
        "train_seconds": round(result.train_seconds, 1),
        "epochs": result.epochs_run,
        "precision": result.precision,
    }


def run_worker(name: str, seed: int, native: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trial.json"
        env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"} | ({} if native else AVX2_PATH)
        command = [sys.executable, __file__, "--worker", name, str(seed), "--out", str(out)]
        subprocess.run(command, check=True, env=env)
        return json.loads(out.read_text())


def mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(row[key] for row in rows) / len(rows)


def summarise(trials: dict[str, list[dict[str, Any]]], budget: float) -> tuple[dict[str, Any], str]:
    rows = {
        name: {key: mean(runs, key) for key in ("validation_accuracy", "test_accuracy", "train_seconds")}
        | {"epochs": runs[0]["epochs"], "runs": len(runs)}
        for name, runs in trials.items()
    }
    within = [name for name, row in rows.items() if row["train_seconds"] <= budget]
    chosen = max(within or rows, key=lambda name: rows[name]["validation_accuracy"])
    print(f"{'candidate':<12} {'epochs':>6} {'train s':>8} {'validation':>10} {'test':>8} {'runs':>4}")
    for name, row in rows.items():
        mark = "  <- best validation within budget" if name == chosen else ""
        print(
            f"{name:<12} {row['epochs']:>6} {row['train_seconds']:>8.1f} {row['validation_accuracy']:>10.2%}"
            f" {row['test_accuracy']:>8.2%} {row['runs']:>4}{mark}"
        )
    return rows, chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--budget", type=float, default=120.0, help="training seconds a default may take")
    parser.add_argument("--native", action="store_true", help="the CPU's own path instead of AVX2")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        Path(args.out).write_text(json.dumps(train_trial(args.worker[0], int(args.worker[1]))))
        return
    trials: dict[str, list[dict[str, Any]]] = {}
    for repeat in range(args.repeats):
        for name in args.only:
            print(f"{name}, seed {42 + repeat}", flush=True)
            trials.setdefault(name, []).append(run_worker(name, 42 + repeat, args.native))
    rows, chosen = summarise(trials, args.budget)
    path = {} if args.native else AVX2_PATH | {"precision": "float32"}
    payload = {"cpu_model": cpu_model(), "machine": machine(), "path": path or "native"}
    payload["budget"] = args.budget
    name = "dnn_front_native" if args.native else "dnn_front"
    print("wrote", write_result(name, payload | {"rows": rows, "chosen": chosen, "trials": trials}))


if __name__ == "__main__":
    main()
