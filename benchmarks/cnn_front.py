"""The CNN's accuracy against its training time on the AVX2 path: candidate architectures and
schedules, and the default chosen from them.

    MNIST_SOURCE=../shared/data/mnist.npz .venv/bin/python benchmarks/cnn_front.py
        [--only NAME ...]   # train these candidates again; the others keep their last result
        [--native]          # the machine's own CPU path instead (no ISA limit, precision auto)
        [--summary]         # only print the table of what earlier runs measured

Each candidate trains on the full training split (54,000 images; 6,000 held out for validation)
in its own process, one after the other, on the AVX2 path: oneDNN limited to AVX2
(`ONEDNN_MAX_CPU_ISA=AVX2`), float32. Test accuracy is probed after every epoch (timed apart
from training). The default is chosen on validation accuracy only: the best of the
candidates whose training fits the 10-minute demo (`CNN_BUDGET_SECONDS`). Keras'
`mnist_convnet` trains beside them for the time-to-accuracy ratios. Prints a table, writes
benchmarks/results/cnn_front.json (one entry per candidate, kept across runs) and cnn_front.png
(test accuracy against training time).
"steady s" is the epochs at the quiet pace `--pace` measured (else at the median epoch's): this
machine's speed swings from minute to minute, and it is what candidates are compared on.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import AVX2_PATH, RESULTS, cpu_model, machine, make_probe, mnist_source, ratio_of, seconds_to


@dataclass(frozen=True)
class Candidate:
    label: str
    settings: dict[str, Any]  # the CNN's config fields
    epochs: int
    env: dict[str, str] = field(default_factory=dict)  # on top of the path's


ONE_CONV = {"filters": (32, 64), "convs_per_block": 1}
FORMER = {"filters": (32, 64), "convs_per_block": 2}
NARROW = {"filters": (16, 32), "convs_per_block": 2}
MIDDLE = {"filters": (24, 48), "convs_per_block": 2}
THREE_BLOCKS = {"filters": (32, 64, 128), "convs_per_block": 1}
CANDIDATES: dict[str, Candidate] = {
    "former": Candidate("2x32, 2x64 full 3x3 convs, dense 128 (the former default)", FORMER, 15),
    "former-6": Candidate("the former net, 6 epochs", FORMER, 6),
    "former-10": Candidate("the former net, 10 epochs", FORMER, 10),
    "c32-c64-8": Candidate("one 3x3 conv per block, 32 and 64", ONE_CONV, 8),
    "c16x2-c32x2-8": Candidate("narrow: 2x16, 2x32", {"filters": (16, 32), "convs_per_block": 2}, 8),
    "c32-s64x2-8": Candidate(
        "32, then 2x64 depthwise-separable", {"filters": (32, 64), "convs_per_block": 2, "separable": True}, 8
    ),
    "c32-c64-c128-8": Candidate("three blocks: 32, 64, 128", THREE_BLOCKS, 8),
    "c16x2-c32x2-15": Candidate("narrow: 2x16, 2x32, 15 epochs", NARROW, 15),
    "c24x2-c48x2-12": Candidate("2x24, 2x48", MIDDLE, 12),
    "c24x2-c48x2-15": Candidate("2x24, 2x48, 15 epochs", MIDDLE, 15),
    "c32-c64-c128-15": Candidate("three blocks: 32, 64, 128, 15 epochs", THREE_BLOCKS, 15),
    "c32-c64-c128-15-eigen": Candidate(
        "the three blocks on TensorFlow's Eigen kernels (its default on AVX2-only CPUs)",
        THREE_BLOCKS,
        15,
        env={"TF_ENABLE_ONEDNN_OPTS": "0"},
    ),
    "c32-c64-5": Candidate("one conv per block, 5 epochs", ONE_CONV, 5),
    "c32-c64-12": Candidate("one conv per block, 12 epochs", ONE_CONV, 12),
}
# The CNN's epochs' share of a 10-minute `make demo` on the AVX2 path: the rest (Airflow, ingest,
# the linear model and the DNN, evaluation, promotion) takes about 125 s there, and the CNN's task
# about 65 s beyond its epochs (data, checkpoints, export: demo_time.py --avx2).
CNN_BUDGET_SECONDS = 405
TARGETS = (0.990, 0.995, 0.9965)
OUT = RESULTS / "cnn_front.json"
TRAIN_IMAGES = 54_000  # the training split every candidate trains on
PACE_IMAGES = 12_800


def train_candidate(name: str, precision: str) -> dict[str, Any]:
    from mnist_pipeline.config import TrainConfig
    from mnist_pipeline.data.mnist import load_mnist, split_validation
    from mnist_pipeline.evaluation.metrics import evaluate_model
    from mnist_pipeline.training.trainer import train_model

    candidate = CANDIDATES[name]
    data = load_mnist(mnist_source())
    config = TrainConfig(epochs=candidate.epochs, precision=precision)
    train, val = split_validation(data.x_train, data.y_train, config.validation_fraction, config.seed)
    probe = make_probe(data.x_test, data.y_test)
    result = train_model("cnn", train, val, config, [probe], model_settings=candidate.settings)
    # The epoch early stopping returned: the lowest validation loss from the plan's second half on.
    losses = result.history["val_loss"]
    best_epoch = min(range(candidate.epochs // 2, len(losses)), key=losses.__getitem__)
    return {
        "epochs": probe.rows,
        "val_accuracy": result.history["val_accuracy"][best_epoch],
        "test_accuracy": evaluate_model(result.model, data.x_test, data.y_test)["accuracy"],
        "train_seconds": probe.train_seconds,
        "images_per_second": len(train[1]) * len(probe.rows) / probe.train_seconds,
        "params": result.model.count_params(),
        "precision": result.precision,
    }


def measure_pace(name: str) -> dict[str, Any]:
    """The candidate's training pace in images/s: three short epochs over 12,800 images, the
    median of the last two (the first builds the graph)."""
    import keras

    from mnist_pipeline.config import TrainConfig
    from mnist_pipeline.data.mnist import load_mnist
    from mnist_pipeline.training.trainer import train_model

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.started = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.seconds.append(time.perf_counter() - self.started)

    data, timer = load_mnist(mnist_source()), EpochTimer()
    train = data.x_train[:PACE_IMAGES], data.y_train[:PACE_IMAGES]
    val = data.x_train[-1000:], data.y_train[-1000:]
    config = TrainConfig(epochs=3, precision="float32")
    train_model("cnn", train, val, config, [timer], model_settings=CANDIDATES[name].settings)
    return {"images_per_second": PACE_IMAGES / sorted(timer.seconds[1:])[0]}


def train_reference() -> dict[str, Any]:
    from time_to_accuracy import train_reference as keras_example

    trial = keras_example()
    rows = trial["epochs"]
    seconds = rows[-1]["train_seconds"]
    return {"epochs": rows, "test_accuracy": trial["returned_accuracy"], "train_seconds": seconds}


def seconds_to_at_pace(row: dict[str, Any], target: float) -> float | None:
    """`seconds_to`, at the quiet pace where `--pace` measured one."""
    if "quiet_images_per_second" not in row:
        return seconds_to(row["epochs"], target)
    epoch = next((r["epoch"] for r in row["epochs"] if r["test_accuracy"] >= target), None)
    return None if epoch is None else epoch * TRAIN_IMAGES / row["quiet_images_per_second"]


def measure_paces(
    results: dict[str, dict], paces: dict[str, float], only: list[str] | None = None, rounds: int = 2
) -> None:
    """Each architecture's quiet pace (under its candidate's environment), the best of `rounds`
    (alternating order), into every candidate that shares it; `only`: these candidates'."""
    by_settings: dict[str, list[str]] = {}
    for name, candidate in CANDIDATES.items():
        if only is None or name in only:
            key = json.dumps([candidate.settings, candidate.env], sort_keys=True)
            by_settings.setdefault(key, []).append(name)
    best: dict[str, float] = {}
    for round_index in range(rounds):
        groups = list(by_settings.values())
        for names in groups if round_index % 2 == 0 else groups[::-1]:
            pace = run_worker(f"pace:{names[0]}", native=False)["images_per_second"]
            best[names[0]] = max(best.get(names[0], 0.0), pace)
            print(f"  {names[0]}: {pace:.0f} images/s", flush=True)
    for names in by_settings.values():
        for name in names:
            paces[name] = best[names[0]]
            if name in results:
                results[name]["quiet_images_per_second"] = best[names[0]]


def run_worker(name: str, native: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trial.json"
        env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"} | ({} if native else AVX2_PATH)
        env |= CANDIDATES[name.removeprefix("pace:")].env if name.removeprefix("pace:") in CANDIDATES else {}
        command = [sys.executable, __file__, "--worker", name, "--out", str(out)]
        subprocess.run(command + (["--native"] if native else []), check=True, env=env)
        return json.loads(out.read_text())


def steady_seconds(row: dict[str, Any]) -> float:
    """Training seconds at the quiet pace `--pace` measured, else at the median epoch's: the
    machine's speed swings from minute to minute, and a slow stretch must not decide."""
    if "quiet_images_per_second" in row:
        return len(row["epochs"]) * TRAIN_IMAGES / row["quiet_images_per_second"]
    ends = [0.0] + [r["train_seconds"] for r in row["epochs"]]
    epochs = sorted(b - a for a, b in itertools.pairwise(ends))
    return epochs[len(epochs) // 2] * len(epochs)


def choose_default(results: dict[str, dict]) -> tuple[str, str]:
    """On validation accuracy only: the best of the candidates whose training fits the demo's
    budget (the faster of a tie); and why."""
    ours = {name: row for name, row in results.items() if name in CANDIDATES}
    fitting = {name: row for name, row in ours.items() if steady_seconds(row) <= CNN_BUDGET_SECONDS}
    chosen = max(fitting, key=lambda name: (fitting[name]["val_accuracy"], -steady_seconds(fitting[name])))
    row = fitting[chosen]
    reason = (
        f"the best validation accuracy of the {len(fitting)} candidates that train within the demo's "
        f"{CNN_BUDGET_SECONDS} s: {row['val_accuracy']:.2%} in {steady_seconds(row):.0f} s"
    )
    return chosen, reason


def ratios(results: dict[str, dict], chosen: str) -> dict[str, float | None]:
    ref, ours = results.get("reference"), results[chosen]
    if ref is None:
        return {}
    to_99 = seconds_to_at_pace(ours, 0.99), seconds_to(ref["epochs"], 0.99)
    to_995 = seconds_to_at_pace(ours, 0.995)
    return {
        "time to 99.0%, ours / reference's time to 99.0%": ratio_of(to_99[0], to_99[1]),
        "time to 99.0%, ours / reference's whole run (target <= 0.2)": ratio_of(
            to_99[0], ref["train_seconds"]
        ),
        "time to 99.5%, ours / reference's whole run (target <= 0.5)": ratio_of(to_995, ref["train_seconds"]),
    }


def print_table(results: dict[str, dict]) -> None:
    targets = " ".join(f"{f's>{t:.2%}':>9}" for t in TARGETS)
    columns = f"{'epochs':>6} {'img/s':>6} {'train s':>8} {'steady s':>8} {'val acc':>8} {'test acc':>8}"
    print(f"{'candidate':<15} {columns} {targets}")
    for name, row in results.items():
        reached = " ".join(f"{_cell(seconds_to_at_pace(row, t)):>9}" for t in TARGETS)
        val = f"{row['val_accuracy']:.2%}" if "val_accuracy" in row else "-"
        rate = f"{row['images_per_second']:.0f}" if "images_per_second" in row else "-"
        print(
            f"{name:<15} {len(row['epochs']):>6} {rate:>6} {row['train_seconds']:>8.1f} "
            f"{steady_seconds(row):>8.1f} {val:>8} "
            f"{row['test_accuracy']:>8.2%} {reached}"
        )


def _cell(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.0f}"


def plot(results: dict[str, dict], chosen: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    colours = plt.cm.tab20.colors
    for index, (name, row) in enumerate(results.items()):
        pace = row.get("quiet_images_per_second")
        seconds = [r["epoch"] * TRAIN_IMAGES / pace if pace else r["train_seconds"] for r in row["epochs"]]
        accuracy = [100 * r["test_accuracy"] for r in row["epochs"]]
        width = 2.5 if name == chosen else 1
        axes.plot(
            seconds,
            accuracy,
            marker="o",
            markersize=3,
            label=name,
            linewidth=width,
            color=colours[index % 20],
        )
    axes.axhline(99.65, color="grey", linestyle=":", linewidth=1)
    axes.set(
        xlabel="training seconds (AVX2 path, 2 cores; at the quiet pace where measured)",
        ylabel="test accuracy after each epoch (%)",
    )
    axes.set_ylim(98.5, 99.8)
    axes.legend(fontsize=8)
    axes.set_title(f"CNN candidates on {cpu_model()}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=[*CANDIDATES, "reference"])
    parser.add_argument("--native", action="store_true")
    parser.add_argument("--summary", action="store_true", help="only print what earlier runs measured")
    parser.add_argument("--pace", action="store_true", help="measure each architecture's quiet pace")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        precision = "auto" if args.native else "float32"
        if args.worker.startswith("pace:"):
            row = measure_pace(args.worker.removeprefix("pace:"))
        elif args.worker == "reference":
            row = train_reference()
        else:
            row = train_candidate(args.worker, precision)
        Path(args.out).write_text(json.dumps(row))
        return
    out = OUT.with_name("cnn_front_native.json") if args.native else OUT
    previous = json.loads(out.read_text()) if out.exists() else {}
    results, paces = dict(previous.get("candidates", {})), dict(previous.get("paces", {}))
    for name in [] if args.summary or args.pace else args.only or [*CANDIDATES, "reference"]:
        print(f"{name}:", flush=True)
        results[name] = run_worker(name, args.native) | {"machine": machine()}
        _write(out, results, paces)
    if args.pace:
        measure_paces(results, paces, args.only)
    print_table(results)
    for name, pace in paces.items():
        print(f"quiet pace of {name}: {pace:.0f} images/s")
    chosen, reason = choose_default(results)
    print(f"default: {chosen}: {reason}")
    for label, value in ratios(results, chosen).items():
        print(f"{label}: {'never' if value is None else f'{value:.2f}'}")
    _write(out, results, paces, chosen, reason)
    plot(results, chosen, out.with_suffix(".png"))
    print("wrote", out, "and", out.with_suffix(".png"))


def _write(
    path: Path,
    results: dict[str, dict],
    paces: dict[str, float],
    chosen: str | None = None,
    reason: str | None = None,
) -> None:
    RESULTS.mkdir(exist_ok=True)
    path_env = "native" if path.name.endswith("_native.json") else AVX2_PATH | {"precision": "float32"}
    payload = {
        "machine": machine(),
        "path": path_env,
        "default": chosen,
        "reason": reason,
        "paces": paces,
        "candidates": results,
    }
    path.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
