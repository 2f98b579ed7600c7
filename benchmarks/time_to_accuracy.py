"""Time to accuracy: our CNN against the Keras `mnist_convnet` reference, on the same machine.

Each model trains in its own process, one after the other (alternating when repeated), on the same
real MNIST; test accuracy is recorded after every epoch with the cumulative training seconds.

    MNIST_SOURCE=../shared/data/mnist.npz .venv/bin/python benchmarks/time_to_accuracy.py [--repeats N]
        [--ours-epochs N]   # plan our CNN for N epochs instead of its default (a shorter cosine schedule)

Prints a table (seconds to 99.0%, 99.2% and 99.5%, test accuracy of the model training returned,
epochs run) and the issue's two ratios: our time to 99.0% over the reference's (target <= 0.2) and
our time to 99.5% over the reference's whole 15-epoch training (target <= 0.5); writes
benchmarks/results/time_to_accuracy.json.
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

from _common import make_probe, mnist_source, ratio_of, seconds_to, write_result

TARGETS = (0.990, 0.992, 0.995)


def train_reference() -> dict:
    """keras-io `mnist_convnet`: Conv32-pool-Conv64-pool-Dropout-Dense, Adam, batch 128, 15 epochs."""
    import keras
    import numpy as np

    from mnist_pipeline.evaluation.metrics import evaluate_model

    keras.utils.set_random_seed(42)
    data = np.load(mnist_source())
    to_input = lambda x: np.expand_dims(x.astype("float32") / 255, -1)  # noqa: E731
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    probe = make_probe(data["x_test"], data["y_test"], to_input)
    y = keras.utils.to_categorical(data["y_train"], 10)
    model.fit(
        to_input(data["x_train"]),
        y,
        batch_size=128,
        epochs=15,
        validation_split=0.1,
        verbose=0,
        callbacks=[probe],
    )
    returned = evaluate_model(model, to_input(data["x_test"]), data["y_test"])["accuracy"]
    return {"epochs": probe.rows, "returned_accuracy": returned}


def train_ours(epochs: int | None = None) -> dict:
    """The pipeline's CNN with its defaults (or `epochs` planned), through the library's own
    training function. Its returned model can be an earlier epoch's (early stopping restores the
    best), so its accuracy is measured apart from the last epoch's."""
    from mnist_pipeline.config import PipelineSettings, TrainConfig
    from mnist_pipeline.data.mnist import load_mnist, split_validation
    from mnist_pipeline.evaluation.metrics import evaluate_model
    from mnist_pipeline.training.trainer import train_model

    data = load_mnist(mnist_source())
    config = TrainConfig(epochs=epochs)
    onednn = PipelineSettings.from_env().onednn_env()  # the AVX2 path's limit, for precision "auto"
    train, val = split_validation(data.x_train, data.y_train, config.validation_fraction, config.seed)
    probe = make_probe(data.x_test, data.y_test)
    result = train_model("cnn", train, val, config, extra_callbacks=[probe], onednn_env=onednn)
    returned = evaluate_model(result.model, data.x_test, data.y_test)["accuracy"]
    return {"epochs": probe.rows, "returned_accuracy": returned}


def run_worker(kind: str, ours_epochs: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trial.json"
        env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}
        command = [sys.executable, __file__, "--worker", kind, "--out", str(out)]
        command += ["--ours-epochs", str(ours_epochs)] if ours_epochs else []
        subprocess.run(command, check=True, env=env)
        return json.loads(out.read_text())


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    summary = {}
    for kind, trials in runs.items():
        epochs = [trial["epochs"] for trial in trials]
        best = {f"seconds_to_{t}": _median([seconds_to(rows, t) for rows in epochs]) for t in TARGETS}
        summary[kind] = best | {
            "final_accuracy": _median([trial["returned_accuracy"] for trial in trials]),
            "epochs_run": _median([len(rows) for rows in epochs]),
            "total_seconds": _median([rows[-1]["train_seconds"] for rows in epochs]),
        }
    return summary


def _median(values: list) -> float | None:
    known = sorted(v for v in values if v is not None)
    return None if len(known) < len(values) else known[len(known) // 2]


def print_table(summary: dict[str, dict]) -> None:
    header = " ".join(f"{f's to {t:.1%}':>11}" for t in TARGETS)
    print(f"{'':<10} {header} {'final acc':>10} {'epochs':>6} {'total s':>8}")
    for kind, row in summary.items():
        cells = " ".join(f"{_seconds(row[f'seconds_to_{t}']):>11}" for t in TARGETS)
        final, epochs, total = row["final_accuracy"], row["epochs_run"], row["total_seconds"]
        print(f"{kind:<10} {cells} {final:>10.4f} {epochs:>6} {total:>8.1f}")
    for label, ratio, target in ratios(summary):
        print(f"{label}: {_ratio(ratio)} (target <= {target})")


def ratios(summary: dict[str, dict]) -> list[tuple[str, float | None, float]]:
    """The issue's ratios: ours to 99.0% / reference to 99.0%, ours to 99.5% / reference's whole run."""
    ours, ref = summary["ours"], summary["reference"]
    return [
        ("ours/reference, time to 99.0%", ratio_of(ours["seconds_to_0.99"], ref["seconds_to_0.99"]), 0.2),
        (
            "ours to 99.5% / reference's whole 15-epoch training",
            ratio_of(ours["seconds_to_0.995"], ref["total_seconds"]),
            0.5,
        ),
    ]


def _ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "never"


def _seconds(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "never"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", choices=["reference", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--ours-epochs", type=int, help="epochs planned for our CNN (default: its own)")
    args = parser.parse_args()
    if args.worker:
        trial = train_reference() if args.worker == "reference" else train_ours(args.ours_epochs)
        Path(args.out).write_text(json.dumps(trial))
        return
    runs: dict[str, list] = {"reference": [], "ours": []}
    for repeat in range(args.repeats):
        for kind in ("reference", "ours") if repeat % 2 == 0 else ("ours", "reference"):
            print(f"{kind}, trial {repeat + 1}:", flush=True)
            runs[kind].append(run_worker(kind, args.ours_epochs))
    summary = summarise(runs)
    print_table(summary)
    name = f"time_to_accuracy_{args.ours_epochs}_epochs" if args.ours_epochs else "time_to_accuracy"
    payload = {
        "ours_epochs": args.ours_epochs,
        "summary": summary,
        "ratios": {label: ratio for label, ratio, _ in ratios(summary)},
        "runs": runs,
    }
    print("wrote", write_result(name, payload))


if __name__ == "__main__":
    main()
